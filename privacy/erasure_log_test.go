package privacy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

func logVersion(id, customer, status string, at time.Time) Erasure {
	return Erasure{ID: id, CustomerID: customer, Kind: KindErasure, RequestedBy: "test", RequestedAt: at, NotBefore: at,
		Status: status, Removed: map[string]uint64{}, Pseudonymised: map[string]uint64{}, Pseudonym: PseudonymPrefix + id, UpdatedAt: at}
}

// TestErasureLogReadsWhatItWrote, skips a last line a crash cut short,
// and refuses any other damage by line number.
func TestErasureLogReadsWhatItWrote(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "erasures.jsonl")
	l, err := OpenErasureLog(path)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
	want := []Erasure{logVersion("er_00000000000000000001", "cus-1", StatusPending, at),
		logVersion("er_00000000000000000001", "cus-1", StatusDone, at.Add(time.Second))}
	want[1].APIKeyIDs = []string{"k1", "k2"}
	for _, e := range want {
		if err := l.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("log file: %v %v", info, err)
	}
	got, err := ReadErasureLog(path, nil)
	if err != nil || len(got) != 2 || got[1].Status != StatusDone || strings.Join(got[1].APIKeyIDs, ",") != "k1,k2" || !got[0].UpdatedAt.Equal(at) {
		t.Fatalf("read %+v, %v", got, err)
	}
	good, _ := os.ReadFile(path)
	// A torn last line is skipped.
	if err := os.WriteFile(path, append(append([]byte{}, good...), good[:30]...), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadErasureLog(path, testenv.Log()); err != nil || len(got) != 2 {
		t.Fatalf("torn last line: %d versions, %v", len(got), err)
	}
	lines := strings.SplitAfter(string(good), "\n")
	for name, c := range map[string]struct{ body, want string }{
		"garbage":     {lines[0] + "garbage\n", "line 2: not an erasure record"},
		"bad id":      {strings.Replace(lines[0], "er_0000", "er_../", 1), "is not an erasure id"},
		"bad status":  {strings.Replace(lines[0], `"pending"`, `"erased"`, 1), `status "erased" is unknown`},
		"bad kind":    {strings.Replace(lines[0], `"kind":"erasure"`, `"kind":"x"`, 1), `kind "x" is unknown`},
		"empty cust":  {strings.Replace(lines[0], `"cus-1"`, `""`, 1), "customer_id: empty"},
		"extra field": {strings.Replace(lines[0], "{", `{"sql":"DROP",`, 1), "unknown field"},
		"long line":   {lines[0] + strings.Repeat("x", MaxErasureLogLine+1) + "\n", "line 2 is longer than"},
	} {
		if err := os.WriteFile(path, []byte(c.body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadErasureLog(path, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	if got, err := ReadErasureLog(filepath.Join(t.TempDir(), "none"), nil); err != nil || got != nil {
		t.Fatalf("missing log: %v %v", got, err)
	}
}

// TestErasureLoggedBeforeRecorded: every version an erasure saves is in
// the log, and an erasure whose log cannot be written is refused before
// anything is recorded.
func TestErasureLoggedBeforeRecorded(t *testing.T) {
	db := engine.Require(t)
	ctx := ctxT(t)
	path := filepath.Join(t.TempDir(), "erasures.jsonl")
	l, _ := OpenErasureLog(path)
	svc := NewService(fastConfig(), db, nil, testenv.Log())
	svc.SetErasureLog(l)
	c := testenv.Unique("logged")
	insertEvents(t, db, c, c+"-k", 10, time.Now().UTC().Add(-time.Hour), time.Second)
	e, err := svc.Request(ctx, Request{CustomerID: c, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Execute(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	logged, err := ReadErasureLog(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var statuses []string
	for _, v := range logged {
		statuses = append(statuses, v.Status)
	}
	if len(logged) < 3 || statuses[0] != StatusPending || statuses[len(statuses)-1] != StatusDone {
		t.Fatalf("logged statuses %v", statuses)
	}
	// The table is a ReplacingMergeTree: a background merge may fold its
	// versions at any time, so it holds between one and every logged
	// version, and its latest is the log's last.
	if n := count(t, db, "SELECT count() FROM privacy_erasures WHERE id = {id:String}", store.P("id", e.ID)); n < 1 || n > uint64(len(logged)) {
		t.Fatalf("table holds %d versions, the log %d", n, len(logged))
	}
	if n := count(t, db, "SELECT count() FROM privacy_erasures FINAL WHERE id = {id:String} AND status = {status:String}",
		store.P("id", e.ID), store.P("status", statuses[len(statuses)-1])); n != 1 {
		t.Fatalf("the table's latest version is not the log's last (%s): %d rows match", statuses[len(statuses)-1], n)
	}

	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bad, _ := OpenErasureLog(filepath.Join(blocker, "erasures.jsonl"))
	svc.SetErasureLog(bad)
	c2 := testenv.Unique("unlogged")
	if _, err := svc.Request(ctx, Request{CustomerID: c2, RequestedBy: "test"}); err == nil || !strings.Contains(err.Error(), "erasure log") {
		t.Fatalf("request with an unwritable log: %v", err)
	}
	if n := count(t, db, "SELECT count() FROM privacy_erasures WHERE customer_id = {c:String}", store.P("c", c2)); n != 0 {
		t.Fatalf("an erasure whose log failed was recorded (%d rows)", n)
	}
}

// TestReapplyAfterRestore plays a restore of a backup taken before an
// erasure: the table lacks the erasure and the customer's rows are back;
// Reapply records it from the log and erases them again, leaving the
// other customer alone.
func TestReapplyAfterRestore(t *testing.T) {
	db := engine.Require(t)
	ctx := ctxT(t)
	path := filepath.Join(t.TempDir(), "erasures.jsonl")
	l, _ := OpenErasureLog(path)
	svc := NewService(fastConfig(), db, nil, testenv.Log())
	svc.SetErasureLog(l)
	gone, keep := testenv.Unique("gone"), testenv.Unique("keep")
	start := time.Now().UTC().Add(-time.Hour)
	for _, c := range []string{gone, keep} {
		insertEvents(t, db, c, c+"-k", 30, start, time.Second)
		insertAccounting(t, db, c)
	}
	keepBefore := snapshot(t, db, keep)
	e, err := svc.Request(ctx, Request{CustomerID: gone, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Execute(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	// The "restore": the erasure's records gone, the rows back, and rows
	// stored without a customer under the erased key (which the erasure
	// recorded).
	if err := db.Exec(ctx, "ALTER TABLE privacy_erasures DELETE WHERE id = {id:String} SETTINGS mutations_sync = 2", store.P("id", e.ID)); err != nil {
		t.Fatal(err)
	}
	insertEvents(t, db, gone, gone+"-k", 30, start, time.Second)
	insertEvents(t, db, "", gone+"-k", 5, start.Add(time.Minute), time.Second)
	insertAccounting(t, db, gone)
	logged, err := ReadErasureLog(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Reapply(ctx, db, logged, "restore-test", testenv.Log())
	if err != nil {
		t.Fatal(err)
	}
	if res.Recorded != len(logged) || res.Removed["events"] < 35 || res.Pseudonymised["billing_ledger"] == 0 {
		t.Fatalf("reapply: %+v (log %d versions)", res, len(logged))
	}
	if n := count(t, db, "SELECT count() FROM events WHERE customer_id = {c:String} OR api_key_id = {k:String}", store.P("c", gone), store.P("k", gone+"-k")); n != 0 {
		t.Fatalf("%d events of the erased customer after reapply", n)
	}
	if n := count(t, db, "SELECT count() FROM billing_ledger WHERE customer_id = {c:String}", store.P("c", gone)); n != 0 {
		t.Fatalf("%d ledger rows still name the erased customer", n)
	}
	erased, err := ErasedCustomers(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := erased[gone]; !ok {
		t.Fatal("the blocklist lacks the erased customer after reapply")
	}
	if got := snapshot(t, db, keep); !equalSnapshots(got, keepBefore) {
		t.Fatalf("the other customer changed: %v, was %v", got, keepBefore)
	}
	// A second run finds nothing to record and nothing left.
	res, err = Reapply(ctx, db, logged, "restore-test", testenv.Log())
	if err != nil || res.Recorded != 0 || res.Removed["events"] != 0 {
		t.Fatalf("second reapply: %+v, %v", res, err)
	}
}

func equalSnapshots(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
