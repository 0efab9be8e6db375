// Meterline web interface: the usage pages' charts and live mode (every
// page loads this file; it does nothing where there is no chart).
//
// Each .chart[data-kind] reads its rows from its CSV URL (the page's
// usage.csv: the same rows, columns and writer as GET /v1/usage with
// Accept: text/csv) and draws them with uPlot. In live mode
// (data-live) the status chart, the totals and the plan gauge are redrawn
// from the page's live.json, which carries GET /v1/usage's answer for the
// same query and GET /v1/limits' for the plan. Every chart also lists its
// numbers in a table under it ("Chart data"), the accessible form of the
// drawing.
"use strict";
(function () {
  // Okabe-Ito: told apart with the common colour-vision deficiencies.
  var OI = { orange: "#E69F00", sky: "#56B4E9", green: "#009E73", blue: "#0072B2",
    vermillion: "#D55E00", purple: "#CC79A7", black: "#000000" };
  var CLASS_COLOUR = { "1xx": OI.purple, "2xx": OI.green, "3xx": OI.sky, "4xx": OI.orange, "5xx": OI.vermillion };
  var BASE_CLASSES = ["2xx", "3xx", "4xx", "5xx"];
  var WINDOW_S = { minute: 60, hour: 3600, day: 86400, month: 28 * 86400 };
  var INTEGER_INCRS = [];
  for (var m = 1; m <= 1e12; m *= 10) { INTEGER_INCRS.push(m, 2 * m, 5 * m); }

  // parseCSV reads RFC 4180 CSV (quoted fields, doubled quotes).
  function parseCSV(text) {
    var rows = [], row = [], field = "", q = false, i = 0;
    for (; i < text.length; i++) {
      var c = text[i];
      if (q) {
        if (c === '"') {
          if (text[i + 1] === '"') { field += '"'; i++; } else { q = false; }
        } else { field += c; }
      } else if (c === '"') { q = true; }
      else if (c === ",") { row.push(field); field = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") { i++; }
        row.push(field); rows.push(row); row = []; field = "";
      } else { field += c; }
    }
    if (field !== "" || row.length > 0) { row.push(field); rows.push(row); }
    var head = rows.shift() || [];
    return rows.filter(function (r) { return r.length === head.length; }).map(function (r) {
      var o = {};
      head.forEach(function (h, j) { o[h] = r[j]; });
      return o;
    });
  }

  function getText(url) {
    return fetch(url, { credentials: "same-origin", redirect: "manual" }).then(function (r) {
      if (r.type === "opaqueredirect") { throw new Error("the session ended; reload the page to sign in again"); }
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    });
  }

  function secs(iso) { return Date.parse(iso) / 1000; }
  function isoOf(s) { return new Date(s * 1000).toISOString().replace(/\.\d+Z$/, "Z"); }
  function num(s) { return s === "" || s == null ? null : Number(s); }
  function text(v) { return v == null ? "–" : String(v); }

  function message(el, cls, msg, testid) {
    el.textContent = "";
    var p = document.createElement("p");
    p.className = cls;
    p.textContent = msg;
    if (testid) { p.dataset.testid = testid; }
    if (cls === "error") { p.setAttribute("role", "alert"); }
    el.appendChild(p);
  }

  // dataTable writes the numbers a chart draws into a table under it.
  function dataTable(el, id, head, rows) {
    var box = el.parentNode.querySelector('details[data-for="' + id + '"]');
    if (!box) {
      box = document.createElement("details");
      box.className = "chart-data";
      box.dataset.for = id;
      var s = document.createElement("summary");
      s.textContent = "Chart data";
      box.appendChild(s);
      el.insertAdjacentElement("afterend", box);
    }
    var old = box.querySelector("table");
    if (old) { old.remove(); }
    if (rows.length === 0) { return; }
    var t = document.createElement("table");
    t.dataset.testid = id;
    var tr = document.createElement("tr");
    head.forEach(function (h) {
      var th = document.createElement("th");
      th.scope = "col";
      th.textContent = h;
      tr.appendChild(th);
    });
    var thead = document.createElement("thead");
    thead.appendChild(tr);
    t.appendChild(thead);
    var tb = document.createElement("tbody");
    rows.forEach(function (r) {
      var row = document.createElement("tr");
      r.forEach(function (v) {
        var td = document.createElement("td");
        td.textContent = v;
        row.appendChild(td);
      });
      tb.appendChild(row);
    });
    t.appendChild(tb);
    box.appendChild(t);
  }

  function tzDate(el) {
    var tz = el.dataset.tz || "Etc/UTC";
    return function (ts) { return uPlot.tzDate(new Date(ts * 1000), tz); };
  }

  function size(el) {
    return { width: Math.max(280, el.clientWidth), height: window.innerWidth < 600 ? 220 : 260 };
  }

  // Every window of the range for minute and hour windows (fixed lengths
  // in every zone), so that windows without requests show as zero.
  function fill(ts, lo, hi, win) {
    var step = win === "minute" ? 60 : win === "hour" ? 3600 : 0;
    if (!step || !(hi > lo) || (hi - lo) / step > 2000) { return ts; }
    var seen = {};
    ts.forEach(function (t) { seen[t] = true; });
    for (var t = Math.ceil(lo / step) * step; t < hi; t += step) { seen[t] = true; }
    return Object.keys(seen).map(Number).sort(function (a, b) { return a - b; });
  }

  // statusChart draws requests per window stacked by status class, and
  // units as a line on their own axis. items: {t, cls, requests, units}.
  function statusChart(el) {
    var u = null, classes = null, st = { y0: [], y1: [], top: 1 }, lo = secs(el.dataset.from), hi = secs(el.dataset.to);
    var win = el.dataset.window;

    // restack computes each class's bar bottom and top: the classes shown
    // are stacked in legend order, 1xx or 2xx at the bottom.
    function restack(data) {
      var n = data[0].length, acc = new Array(n).fill(0);
      classes.forEach(function (c, k) {
        var si = k + 1;
        st.y0[si] = acc.slice();
        if (!u || u.series[si].show) {
          for (var i = 0; i < n; i++) { acc[i] += data[si][i] || 0; }
        }
        st.y1[si] = acc.slice();
      });
      st.top = Math.max(1, Math.max.apply(null, acc.concat([0])));
    }

    function build(data) {
      var w = WINDOW_S[win] || 3600;
      var bars = uPlot.paths.bars({
        size: [0.8, Infinity, 1],
        disp: {
          x0: { unit: 1, values: function (uu) { return uu.data[0].map(function (t) { return t + 0.1 * w; }); } },
          size: { unit: 1, values: function () { return [0.8 * w]; } },
          y0: { unit: 1, values: function (uu, si) { return st.y0[si]; } },
          y1: { unit: 1, values: function (uu, si) { return st.y1[si]; } }
        }
      });
      var series = [{}];
      classes.forEach(function (c) {
        series.push({ label: c, stroke: CLASS_COLOUR[c], fill: CLASS_COLOUR[c], width: 0, paths: bars, points: { show: false },
          value: function (uu, v) { return text(v); } });
      });
      series.push({ label: "units", stroke: OI.black, width: 2, dash: [6, 4], scale: "units", points: { show: true, size: 5 },
        value: function (uu, v) { return text(v); } });
      var xr = function () { return [lo, hi]; };
      var opts = Object.assign(size(el), {
        tzDate: tzDate(el),
        cursor: { points: { show: false } },
        scales: {
          x: { time: true, range: xr },
          y: { range: function () { return [0, st.top * 1.1]; } },
          units: { range: function (uu, mn, mx) { return [0, mx > 0 ? mx * 1.1 : 1]; } }
        },
        series: series,
        axes: [{}, { label: "requests", incrs: INTEGER_INCRS }, { side: 1, scale: "units", label: "units", grid: { show: false } }],
        hooks: {
          setSeries: [function (uu) { restack(uu.data); uu.setData(uu.data); }]
        }
      });
      restack(data); // every series shown
      u = new uPlot(opts, data, el);
    }

    return {
      update: function (items, from, to) {
        if (from && to && to > from) { lo = from; hi = to; }
        var byT = {}, present = {};
        items.forEach(function (it) {
          var r = byT[it.t] || (byT[it.t] = { req: {}, units: 0 });
          r.req[it.cls] = (r.req[it.cls] || 0) + it.requests;
          r.units += it.units;
          present[it.cls] = true;
        });
        var cls = (present["1xx"] ? ["1xx"] : []).concat(BASE_CLASSES);
        Object.keys(present).sort().forEach(function (c) { if (cls.indexOf(c) < 0) { cls.push(c); } });
        var dataTs = Object.keys(byT).map(Number).sort(function (a, b) { return a - b; });
        dataTable(el, "status-data", ["window"].concat(cls, ["units"]), dataTs.map(function (t) {
          return [isoOf(t)].concat(cls.map(function (c) { return String(byT[t].req[c] || 0); }), [String(byT[t].units)]);
        }));
        if (dataTs.length === 0) {
          if (u) { u.destroy(); u = null; }
          message(el, "empty", "No requests in this range.", "status-empty");
          return;
        }
        var ts = fill(dataTs, lo, hi, win);
        var data = [ts];
        cls.forEach(function (c) { data.push(ts.map(function (t) { return byT[t] ? (byT[t].req[c] || 0) : 0; })); });
        data.push(ts.map(function (t) { return byT[t] ? byT[t].units : 0; }));
        if (u && classes && classes.join() === cls.join()) {
          restack(data);
          u.setData(data);
          return;
        }
        if (u) { u.destroy(); u = null; }
        el.textContent = "";
        classes = cls;
        build(data);
      },
      resize: function () { if (u) { u.setSize(size(el)); } }
    };
  }

  // latencyChart draws p50, p95 and p99 per window in milliseconds.
  function latencyChart(el) {
    var u = null, lo = secs(el.dataset.from), hi = secs(el.dataset.to);
    return {
      update: function (recs) {
        var rows = recs.map(function (r) {
          return { t: secs(r.window_start), p50: r.latency_p50_ms, p95: r.latency_p95_ms, p99: r.latency_p99_ms };
        }).sort(function (a, b) { return a.t - b.t; });
        dataTable(el, "latency-data", ["window", "p50 ms", "p95 ms", "p99 ms"], rows.map(function (r) {
          return [isoOf(r.t), r.p50 === "" ? "–" : r.p50, r.p95 === "" ? "–" : r.p95, r.p99 === "" ? "–" : r.p99];
        }));
        var withLatency = rows.filter(function (r) { return r.p50 !== ""; });
        if (u) { u.destroy(); u = null; }
        if (rows.length === 0) { message(el, "empty", "No requests in this range.", "latency-empty"); return; }
        if (withLatency.length === 0) { message(el, "empty", "No request in this range carried a latency.", "latency-empty"); return; }
        el.textContent = "";
        var data = [rows.map(function (r) { return r.t; }),
          rows.map(function (r) { return num(r.p50); }), rows.map(function (r) { return num(r.p95); }), rows.map(function (r) { return num(r.p99); })];
        var line = function (label, colour, dash) {
          return { label: label, stroke: colour, width: 2, dash: dash, points: { show: true, size: 6 }, value: function (uu, v) { return text(v); } };
        };
        u = new uPlot(Object.assign(size(el), {
          tzDate: tzDate(el),
          scales: { x: { time: true, range: function () { return [lo, hi]; } },
            y: { range: function (uu, mn, mx) { return [0, mx > 0 ? mx * 1.1 : 1]; } } },
          series: [{}, line("p50", OI.blue), line("p95", OI.orange, [8, 4]), line("p99", OI.purple, [2, 3])],
          axes: [{}, { label: "ms" }]
        }), data, el);
      },
      resize: function () { if (u) { u.setSize(size(el)); } }
    };
  }

  function setText(id, v) {
    var el = document.querySelector('[data-testid="' + id + '"]');
    if (el) { el.textContent = v; }
  }

  // live polls the page's live.json while the tab is visible and redraws
  // the status chart, the totals and the plan gauge with its answer.
  function live(el, chart) {
    var url = el.dataset.live, every = Number(el.dataset.liveMs) || 2000, timer = null, busy = false;
    var state = document.querySelector('[data-testid="live-state"]');
    function show(msg, bad) {
      if (!state) { return; }
      state.textContent = msg;
      state.classList.toggle("error", !!bad);
    }
    function schedule(ms) {
      clearTimeout(timer);
      timer = null;
      if (document.hidden) { show("Live: paused while this tab is hidden."); return; }
      timer = setTimeout(poll, ms);
    }
    function apply(a) {
      var us = a.usage;
      chart.update((us.rows || []).map(function (r) {
        return { t: secs(r.window_start), cls: (r.group || {}).status_class, requests: r.requests, units: Number(r.units) };
      }), secs(us.from), secs(us.to));
      setText("freshness", "From " + isoOf(secs(us.from)) + " to " + isoOf(secs(us.to)) + ", by " + us.window +
        ". Rollups complete up to " + (Date.parse(us.rollups_fresh_until) > 0 ? isoOf(secs(us.rollups_fresh_until)) : "never") + ".");
      var t = a.totals;
      setText("total-requests", String(t.requests));
      setText("total-units", String(t.units));
      setText("total-client-errors", String(t.client_errors));
      setText("total-server-errors", String(t.server_errors));
      setText("error-rate", t.error_rate);
      if (a.limit) {
        setText("plan-used", String(a.limit.used));
        setText("plan-included", String(a.limit.included));
        var m = document.querySelector('[data-testid="plan-meter"]');
        if (m) { m.max = a.limit.included; m.value = a.limit.used; }
      }
      return a.limit ? "" : " Plan: " + (a.limit_error || "unavailable") + ".";
    }
    function poll() {
      timer = null;
      if (document.hidden) { show("Live: paused while this tab is hidden."); return; }
      busy = true;
      fetch(url, { credentials: "same-origin", redirect: "manual", headers: { Accept: "application/json" } }).then(function (r) {
        if (r.type === "opaqueredirect") {
          var e = new Error("the session ended; reload the page to sign in again");
          e.stop = true;
          throw e;
        }
        if (!r.ok) {
          var err = new Error("HTTP " + r.status);
          err.retry = Number(r.headers.get("Retry-After")) * 1000 || 0;
          return r.text().then(function (body) {
            try { err.message += ": " + JSON.parse(body).error; } catch (x) { /* an HTML error page: the status says it */ }
            throw err;
          });
        }
        return r.json();
      }).then(function (a) {
        busy = false;
        var note = apply(a);
        show("Live: updated at " + new Date(a.at).toISOString().slice(11, 19) + " UTC." + note, note !== "");
        schedule(every);
      }).catch(function (e) {
        busy = false;
        show("Live: the last update failed (" + e.message + ")" + (e.stop ? "." : "; trying again."), true);
        if (!e.stop) { schedule(Math.max(every, e.retry || 0)); }
      });
    }
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) {
        clearTimeout(timer);
        timer = null;
        show("Live: paused while this tab is hidden.");
      } else if (!busy && timer === null) {
        poll();
      }
    });
    poll();
  }

  // load reads a chart's CSV and draws it; errors show in the chart.
  function load(el, chart) {
    var kind = el.dataset.kind;
    return getText(el.dataset.csv).then(function (body) {
      var recs = parseCSV(body);
      if (kind === "status") {
        chart.update(recs.map(function (r) {
          return { t: secs(r.window_start), cls: r.status_class, requests: Number(r.requests), units: Number(r.units) };
        }));
      } else {
        chart.update(recs);
      }
    }).catch(function (e) {
      message(el, "error", "The chart's data could not be loaded: " + e.message, kind + "-error");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (typeof uPlot === "undefined") { return; }
    // The charts load one after the other, then live mode starts: a page
    // holds at most one of its principal's concurrent reads
    // (api.token_concurrency), so another page or tab is not refused.
    var charts = [], chain = Promise.resolve(), liveEl = null, liveChart = null;
    document.querySelectorAll(".chart[data-kind][data-csv]").forEach(function (el) {
      var chart = el.dataset.kind === "status" ? statusChart(el) : latencyChart(el);
      charts.push(chart);
      chain = chain.then(function () { return load(el, chart); });
      if (el.dataset.kind === "status" && el.dataset.live) { liveEl = el; liveChart = chart; }
    });
    chain.then(function () { if (liveEl) { live(liveEl, liveChart); } });
    var pending = false;
    window.addEventListener("resize", function () {
      if (pending) { return; }
      pending = true;
      requestAnimationFrame(function () {
        pending = false;
        charts.forEach(function (c) { c.resize(); });
      });
    });
  });
})();
