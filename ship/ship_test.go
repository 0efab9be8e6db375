package ship

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRoutes(t *testing.T) {
	r, err := ParseRoutes([]string{"/v1/pets/{id}", "/v1/pets/{id}/toys", "/v1/files/{path...}", "/v1/upload", "/"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{"/v1/pets/7", "/v1/pets/{id}"},
		{"/v1/pets/7/toys", "/v1/pets/{id}/toys"},
		{"/v1/pets/", ""},
		{"/v1/pets", ""},
		{"/v1/pets/7/8", ""},
		{"/v1/files/a", "/v1/files/{path...}"},
		{"/v1/files/a/b/c", "/v1/files/{path...}"},
		{"/v1/files/", ""},
		{"/v1/upload", "/v1/upload"},
		{"/", "/"},
		{"v1/upload", ""},
	} {
		got, _ := r.Match(c.path)
		if got != c.want {
			t.Errorf("Match(%q) = %q, want %q", c.path, got, c.want)
		}
	}
	for _, bad := range []string{"v1/x", "/v1/{id", "/v1/x{id}", "/v1/{a...}/b", "/v1/\x01", "/v1/é", "/" + strings.Repeat("a", 1100)} {
		if _, err := ParseRoutes([]string{bad}); err == nil {
			t.Errorf("ParseRoutes(%q) accepted", bad)
		}
	}
}

const caddyLine = `{"level":"info","ts":1796661201.617893,"logger":"http.log.access.log0","msg":"handled request","request":{"remote_ip":"203.0.113.9","remote_port":"59682","proto":"HTTP/1.1","method":"GET","host":"h","uri":"/v1/pets/7?x=1","headers":{"User-Agent":["curl/7.88.1"],"X-Api-Key-Id":["key_1"],"X-Customer-Id":["acme"],"Content-Length":["12"]}},"user_id":"","duration":0.459418516,"size":2,"status":200,"resp_headers":{"X-Request-Id":["5ea6ce9d-e58b-4257-b56a-c43f87544e09"],"X-Units":["2.5"]}}`

func testMapper(t *testing.T) *Mapper {
	t.Helper()
	m, err := NewMapper(CaddyConfig{KeyHeader: "x-api-key-id", CustomerHeader: "X-Customer-Id", IDHeader: "X-Request-Id", UnitsHeader: "X-Units", Gateway: "edge", Routes: []string{"/v1/pets/{id}"}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMapCaddyLine(t *testing.T) {
	ev, err := testMapper(t).Map([]byte(caddyLine))
	if err != nil {
		t.Fatal(err)
	}
	end := time.Unix(1796661201, 617893000)
	switch {
	case ev.ID != "5ea6ce9d-e58b-4257-b56a-c43f87544e09" || ev.APIKeyID != "key_1" || ev.CustomerID != "acme" || ev.Gateway != "edge":
		t.Errorf("identity: %+v", ev)
	case ev.Method != "GET" || ev.Route != "/v1/pets/{id}" || ev.Status != 200 || ev.Units != 2.5:
		t.Errorf("request: %+v", ev)
	case ev.LatencyMS != 459.418 || ev.Time.UnixMilli() != end.Add(-459418516*time.Nanosecond).UnixMilli():
		t.Errorf("latency %v time %v", ev.LatencyMS, ev.Time)
	case ev.RequestBytes != 12 || ev.ResponseBytes != 2 || ev.ClientIP != "203.0.113.9" || ev.UserAgent != "curl/7.88.1" || ev.Absent != 0:
		t.Errorf("measures: %+v", ev)
	}
	// Without the id header: a hash of the line, the same for the same line.
	line := strings.Replace(caddyLine, `"X-Request-Id":["5ea6ce9d-e58b-4257-b56a-c43f87544e09"],`, "", 1)
	a, _ := testMapper(t).Map([]byte(line))
	b, _ := testMapper(t).Map([]byte(line))
	c, _ := testMapper(t).Map([]byte(strings.Replace(line, "59682", "59683", 1)))
	if !strings.HasPrefix(a.ID, "caddy-") || len(a.ID) != 38 || a.ID != b.ID || a.ID == c.ID {
		t.Errorf("ids from the line: %q %q %q", a.ID, b.ID, c.ID)
	}
	// An unmatched path is sent cleaned, without its query.
	d, _ := testMapper(t).Map([]byte(strings.Replace(caddyLine, `/v1/pets/7?x=1`, `/v1/other/caf\u00e9\n?q`, 1)))
	if d.Route != "/v1/other/caf%C3%A9%0A" {
		t.Errorf("unmatched route %q", d.Route)
	}
}

func TestMapCaddySkips(t *testing.T) {
	m := testMapper(t)
	for _, c := range []struct{ line, reason string }{
		{"", SkipMalformed},
		{"plain text", SkipMalformed},
		{`{"ts":`, SkipMalformed},
		{`{"request":"no"}`, SkipMalformed},
		{`{"msg":"server running"}`, SkipNotAccess},
		{strings.Replace(caddyLine, `"X-Api-Key-Id":["key_1"],`, "", 1), SkipUnmetered},
		{strings.Replace(caddyLine, `"status":200`, `"status":0`, 1), SkipInvalid},
		{strings.Replace(caddyLine, `"status":200`, `"status":"200"`, 1), SkipInvalid},
		{strings.Replace(caddyLine, `"duration":0.459418516`, `"duration":-1`, 1), SkipInvalid},
		{strings.Replace(caddyLine, `"duration":0.459418516`, `"duration":"fast"`, 1), SkipInvalid},
		{strings.Replace(caddyLine, `"ts":1796661201.617893`, `"ts":"yesterday"`, 1), SkipInvalid},
		{strings.Replace(caddyLine, `"2.5"`, `"NaN"`, 1), SkipInvalid},
		{strings.Replace(caddyLine, `"2.5"`, `"-1"`, 1), SkipInvalid},
		{strings.Replace(caddyLine, `"key_1"`, `"\udcff"`, 1), ""}, // JSON decodes it to U+FFFD: valid UTF-8
	} {
		_, err := m.Map([]byte(c.line))
		var got string
		if se, ok := err.(*SkipError); ok {
			got = se.Reason
		} else if err != nil {
			got = "other: " + err.Error()
		}
		if got != c.reason {
			t.Errorf("%.60q: skipped as %q (%v), want %q", c.line, got, err, c.reason)
		}
		if err != nil && strings.Contains(err.Error(), "key_1") {
			t.Errorf("the error quotes the line: %v", err)
		}
	}
	// Caddy's other time and duration formats.
	ev, err := m.Map([]byte(strings.Replace(strings.Replace(caddyLine, `"ts":1796661201.617893`, `"ts":"2026-12-07T16:33:21.617Z"`, 1), `"duration":0.459418516`, `"duration":"1.5ms"`, 1)))
	if err != nil || ev.LatencyMS != 1.5 || ev.Time.UnixMilli() != time.Date(2026, 12, 7, 16, 33, 21, 615500000, time.UTC).UnixMilli() {
		t.Errorf("rfc3339 ts and string duration: %v %+v", err, ev)
	}
}

func TestCaddyConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	env := func(string) string { return "" }
	_, err := LoadCaddyConfig(write("endpoint: ftp://x\nfile: a\nlisten: b\nkey_header: 'a b'\nbatch_size: 0\nroutes: [\"x\"]\nflush_interval: 0s\n"), env)
	for _, want := range []string{"endpoint", "file and listen", "listen: \"b\"", "key_header", "routes[0]"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
	if _, err := LoadCaddyConfig(write("endpoint: http://h:1\nfile: a\nkey_header: K\nbogus: 1\n"), env); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown key: %v", err)
	}
	if _, err := LoadCaddyConfig(write(strings.Repeat("#", 2<<20)), env); err == nil || !strings.Contains(err.Error(), "1 MiB") {
		t.Errorf("oversized file: %v", err)
	}
	c, err := LoadCaddyConfig(write("endpoint: http://h:1\nfile: /var/log/a.log\nkey_header: X-Api-Key-Id\n"), func(string) string { return "tok" })
	if err != nil || c.Token != "tok" || c.PositionFile != "/var/log/a.log.meterline-pos" || c.BatchSize != 500 || c.FlushInterval != time.Second {
		t.Errorf("defaults: %v %+v", err, c)
	}
}

func TestPositionFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pos")
	if _, found, err := loadPosition(p); err != nil || found {
		t.Fatalf("missing file: %v %v", found, err)
	}
	want := position{File: "a.log", Inode: 42, Offset: 1234}
	if err := want.save(p); err != nil {
		t.Fatal(err)
	}
	got, found, err := loadPosition(p)
	if err != nil || !found || got != want {
		t.Fatalf("got %+v %v %v", got, found, err)
	}
	for _, bad := range []string{"", "{", `{"offset":-1}`, `{"offset":"x"}`, `{"extra":1}`, "\x00\xff"} {
		os.WriteFile(p, []byte(bad), 0o600)
		if _, _, err := loadPosition(p); err == nil || !strings.Contains(err.Error(), "remove it") {
			t.Errorf("position %q: %v", bad, err)
		}
	}
}

func TestFollowerLinesRotationAndLimits(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.log")
	if err := os.WriteFile(path, []byte("one\n"+strings.Repeat("x", 5000)+"\ntwo\npart"), 0o600); err != nil {
		t.Fatal(err)
	}
	fw, _, err := openFollower(path, position{}, false, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer fw.f.Close()
	var got []string
	for {
		l, over, ok, err := fw.next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if over {
			got = append(got, "<oversized>")
		} else {
			got = append(got, string(l))
		}
	}
	if strings.Join(got, ",") != "one,<oversized>,two" || fw.off != int64(4+5001+4) {
		t.Fatalf("lines %v, offset %d", got, fw.off)
	}
	// The partial line completes; then the file is rotated.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("ial\n")
	f.Close()
	if l, _, ok, _ := fw.next(); !ok || string(l) != "partial" {
		t.Fatalf("completed line %q %v", l, ok)
	}
	os.Rename(path, path+".1")
	os.WriteFile(path, []byte("new\n"), 0o600)
	if rot, err := fw.rotated(); !rot || err != nil {
		t.Fatalf("rotation not seen: %v %v", rot, err)
	}
	if err := fw.reopen(); err != nil {
		t.Fatal(err)
	}
	if l, _, ok, _ := fw.next(); !ok || string(l) != "new" || fw.off != 4 {
		t.Fatalf("after rotation: %q %v offset %d", l, ok, fw.off)
	}
	// Reopened on a saved position: a replaced file starts over, a shorter
	// one too.
	pos := fw.position()
	fw2, note, err := openFollower(path, pos, true, 1024)
	if err != nil || note != "" || fw2.off != 4 {
		t.Fatalf("same file: %v %q %d", err, note, fw2.off)
	}
	fw2.f.Close()
	pos.Offset = 400
	fw3, note, _ := openFollower(path, pos, true, 1024)
	if fw3.off != 0 || !strings.Contains(note, "shorter") {
		t.Fatalf("truncated: %q %d", note, fw3.off)
	}
	fw3.f.Close()
	pos.Inode++
	fw4, note, _ := openFollower(path, pos, true, 1024)
	if fw4.off != 0 || !strings.Contains(note, "replaced") {
		t.Fatalf("replaced: %q %d", note, fw4.off)
	}
	fw4.f.Close()
}

func TestReadConnFramesLines(t *testing.T) {
	s, err := NewCaddyShipper(CaddyConfig{Endpoint: "http://127.0.0.1:1", Listen: "127.0.0.1:0", KeyHeader: "K", MaxLineBytes: 1024}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	client, server := net.Pipe()
	lines := make(chan tcpLine, 10)
	done := make(chan struct{})
	go func() { s.readConn(context.Background(), server, lines); close(done) }()
	client.Write([]byte("a\n" + strings.Repeat("x", 100<<10) + "\nb\n" + strings.Repeat("y", 1024) + "\npartial"))
	client.Close()
	<-done
	close(lines)
	var got []string
	for l := range lines {
		if l.oversized {
			got = append(got, "<oversized>")
		} else {
			got = append(got, fmt.Sprintf("%.5s/%d", l.data, len(l.data)))
		}
	}
	if strings.Join(got, ",") != "a/1,<oversized>,b/1,yyyyy/1024" {
		t.Errorf("lines %v", got)
	}
	if v := testutil.ToFloat64(s.m.skipped.WithLabelValues(SkipMalformed)); v != 1 {
		t.Errorf("partial last line counted %v times as malformed, want 1", v)
	}
}

// FuzzMapCaddyLine: no line makes the mapping panic, and an event it
// returns has a non-empty id of at most 128 bytes and a status in range.
func FuzzMapCaddyLine(f *testing.F) {
	f.Add([]byte(caddyLine))
	f.Add([]byte(`{"request":{"headers":{"X-Api-Key-Id":["k"]}},"status":200,"ts":"2026-01-01T00:00:00Z","duration":"1ms"}`))
	f.Add([]byte(`{"request":null,"status":null}`))
	f.Add([]byte("\x00{"))
	m, err := NewMapper(CaddyConfig{KeyHeader: "X-Api-Key-Id", IDHeader: "X-Request-Id", UnitsHeader: "X-Units", Routes: []string{"/v1/pets/{id}", "/f/{p...}"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		ev, err := m.Map(line)
		if err != nil {
			return
		}
		if ev.ID == "" || len(ev.ID) > 128 || ev.Status < 100 || ev.Status > 599 || ev.APIKeyID == "" || len(ev.Route) > 1024 {
			t.Fatalf("event %+v from %q", ev, line)
		}
	})
}
