// Meterline web interface: draws each .chart from its CSV URL (the same
// rows as GET /v1/usage) with uPlot, when the library was installed.
"use strict";
(function () {
  function parseCSV(text) {
    var lines = text.trim().split("\n");
    var head = lines.shift().split(",");
    return { head: head, rows: lines.map(function (l) { return l.split(","); }) };
  }
  function draw(el) {
    if (typeof uPlot === "undefined") { return; }
    fetch(el.dataset.csv, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    }).then(function (text) {
      var t = parseCSV(text);
      var iw = t.head.indexOf("window_start"), ir = t.head.indexOf("requests"), iu = t.head.indexOf("units");
      if (t.head.length > 0 && t.head[1] !== "requests") {
        el.textContent = "Grouped rows: see the table below.";
        return;
      }
      var xs = [], reqs = [], units = [];
      t.rows.forEach(function (row) {
        xs.push(Date.parse(row[iw]) / 1000);
        reqs.push(Number(row[ir]));
        units.push(Number(row[iu]));
      });
      if (xs.length === 0) { el.textContent = "No usage in this range."; return; }
      el.textContent = "";
      // The x axis spans the range the page states, not just the windows
      // that had usage (a single window would otherwise get an axis of
      // years around it).
      var lo = Date.parse(el.dataset.from) / 1000, hi = Date.parse(el.dataset.to) / 1000;
      var xscale = { time: true };
      if (isFinite(lo) && isFinite(hi) && hi > lo) {
        xscale.range = function () { return [lo, hi]; };
      }
      new uPlot({
        width: Math.max(300, el.clientWidth), height: 260,
        scales: { x: xscale },
        series: [{},
          { label: "requests", stroke: "#0969da", width: 2, points: { show: true, size: 7 } },
          { label: "units", stroke: "#b35900", width: 2, dash: [6, 4], scale: "units", points: { show: true, size: 5 } }],
        axes: [{}, { label: "requests" }, { side: 1, scale: "units", label: "units", grid: { show: false } }]
      }, [xs, reqs, units], el);
    }).catch(function (e) { el.textContent = "The chart's data could not be loaded: " + e.message; });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".chart[data-csv]:not([data-kind])").forEach(draw); // charts.js draws the others
  });
})();
