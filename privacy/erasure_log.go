package privacy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/meterline/meterline/store"
)

// ErasureLog is the copy of privacy_erasures that survives the loss of the
// database: an append-only file, one JSON object per line, each a version
// of an erasure request exactly as it is saved to the table. A version is
// appended and fsynced before it is saved to the table, so every erasure
// the table (or a backup of it) knows is in the log, and a restore of an
// older backup re-applies the erasures recorded since (Reapply). The file
// holds what privacy_erasures holds: the customer id, its API key ids,
// the request's reason and counts; no usage data.
type ErasureLog struct {
	path string
	mu   sync.Mutex
}

// MaxErasureLogLine bounds one line of the log (an erasure with thousands
// of keys fits).
const MaxErasureLogLine = 4 << 20

// OpenErasureLog returns the log at path; the file and its directory are
// created on the first append.
func OpenErasureLog(path string) (*ErasureLog, error) {
	if path == "" {
		return nil, errors.New("privacy: erasure log: no path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("privacy: erasure log: %w", err)
	}
	return &ErasureLog{path: abs}, nil
}

// Path returns the log's file.
func (l *ErasureLog) Path() string { return l.path }

// Append writes one version durably (write, fsync, and the directory's
// fsync when the file is new).
func (l *ErasureLog) Append(e Erasure) error {
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if len(line) >= MaxErasureLogLine {
		return fmt.Errorf("privacy: erasure log: erasure %s is larger than %d bytes", e.ID, MaxErasureLogLine)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, statErr := os.Stat(l.path)
	if err := os.MkdirAll(filepath.Dir(l.path), 0o750); err != nil {
		return fmt.Errorf("privacy: erasure log: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("privacy: erasure log: %w", err)
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("privacy: erasure log %s: %w", l.path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("privacy: erasure log %s: %w", l.path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("privacy: erasure log %s: %w", l.path, err)
	}
	if statErr != nil {
		if d, err := os.Open(filepath.Dir(l.path)); err == nil {
			_ = d.Sync()
			d.Close()
		}
	}
	return nil
}

// ReadErasureLog reads every version in the log at path (none when the
// file does not exist). A last line without its newline is a write that a
// crash cut short (its erasure was never saved to the table nor
// acknowledged) and is skipped with a warning; any other line that is not
// a valid version is an error naming the line, because a restore must
// not go on without knowing every erasure.
func ReadErasureLog(path string, log *slog.Logger) ([]Erasure, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("privacy: erasure log: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	var out []Erasure
	for n := 1; ; n++ {
		line, err := readLine(r)
		if errors.Is(err, errTornLine) {
			log.Warn("erasure log: skipping an incomplete last line (a write cut short)", "path", path, "line", n)
			break
		}
		if err != nil {
			if errors.Is(err, errLongLine) {
				return nil, fmt.Errorf("privacy: erasure log %s: line %d is longer than %d bytes", path, n, MaxErasureLogLine)
			}
			return nil, fmt.Errorf("privacy: erasure log %s: %w", path, err)
		}
		if line == nil {
			break
		}
		e, err := parseLogLine(line)
		if err != nil {
			return nil, fmt.Errorf("privacy: erasure log %s: line %d: %w", path, n, err)
		}
		out = append(out, e)
	}
	return out, nil
}

var (
	errTornLine = errors.New("torn line")
	errLongLine = errors.New("line too long")
)

// readLine returns the next line without its newline, nil at the end.
func readLine(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > MaxErasureLogLine {
			return nil, errLongLine
		}
		switch {
		case err == nil:
			return buf[:len(buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err.Error() == "EOF":
			if len(buf) == 0 {
				return nil, nil
			}
			return nil, errTornLine
		default:
			return nil, err
		}
	}
}

func parseLogLine(line []byte) (Erasure, error) {
	var e Erasure
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return e, fmt.Errorf("not an erasure record: %v", err)
	}
	var errs []error
	if !erasureIDRe.MatchString(e.ID) {
		errs = append(errs, fmt.Errorf("id %q is not an erasure id", e.ID))
	}
	if e.CustomerID == "" {
		errs = append(errs, errors.New("customer_id: empty"))
	}
	errs = append(errs, CheckID("customer_id", e.CustomerID), CheckID("requested_by", e.RequestedBy))
	for _, k := range e.APIKeyIDs {
		errs = append(errs, CheckID("api_key_ids", k))
	}
	switch e.Status {
	case StatusScheduled, StatusPending, StatusRunning, StatusDone, StatusFailed, StatusCancelled:
	default:
		errs = append(errs, fmt.Errorf("status %q is unknown", e.Status))
	}
	if e.Kind != KindErasure && e.Kind != KindAccountDeletion {
		errs = append(errs, fmt.Errorf("kind %q is unknown", e.Kind))
	}
	if e.UpdatedAt.IsZero() {
		errs = append(errs, errors.New("updated_at: missing"))
	}
	if len(e.Reason) > MaxReasonBytes {
		errs = append(errs, fmt.Errorf("reason: longer than %d bytes", MaxReasonBytes))
	}
	return e, errors.Join(errs...)
}

// SetErasureLog makes the service append every version of an erasure to
// l before saving it to the table; a failed append fails the request.
func (s *Service) SetErasureLog(l *ErasureLog) { s.erasureLog = l }

// ReapplyResult says what Reapply did.
type ReapplyResult struct {
	// Recorded counts the log's versions that the table lacked and that
	// were saved to it.
	Recorded int
	// Erasures counts the erasures (running, done or failed) re-applied.
	Erasures int
	// Removed and Pseudonymised count, per table, the rows found again.
	Removed, Pseudonymised map[string]uint64
	// Customers lists the customers whose rows were found again.
	Customers []string
}

// Reapply brings a database restored from a backup up to the erasures
// recorded since: it saves to privacy_erasures every version of the log
// that is newer than the table's, then, for every erasure that is running,
// done or failed, deletes the customer's rows (and pseudonymises its
// billing records) again in every table, as Execute does, and notes it in
// the audit trail. Erasures that were only pending or scheduled are left
// to the erasure runner of `meterline serve`. Run it before anything
// reads the restored data (no sink may run on it meanwhile).
func Reapply(ctx context.Context, db store.Conn, logged []Erasure, actor string, log *slog.Logger) (ReapplyResult, error) {
	s := NewService(Config{}, db, nil, log)
	res := ReapplyResult{Removed: map[string]uint64{}, Pseudonymised: map[string]uint64{}}
	have := map[string]time.Time{}
	rows, err := db.Query(ctx, "SELECT id, max(updated_at) FROM privacy_erasures GROUP BY id")
	if err != nil {
		return res, fmt.Errorf("privacy: reapply: %w", err)
	}
	for rows.Next() {
		var id string
		var at time.Time
		if err := rows.Scan(&id, &at); err != nil {
			rows.Close()
			return res, err
		}
		have[id] = at
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, err
	}
	sort.SliceStable(logged, func(i, j int) bool { return logged[i].UpdatedAt.Before(logged[j].UpdatedAt) })
	for _, e := range logged {
		if at, ok := have[e.ID]; ok && !e.UpdatedAt.After(at) {
			continue
		}
		if err := s.insertVersion(ctx, &e); err != nil {
			return res, err
		}
		have[e.ID] = e.UpdatedAt
		res.Recorded++
	}
	erased, err := s.query(ctx, "status IN ('running', 'done', 'failed')")
	if err != nil {
		return res, err
	}
	tables, err := Tables(ctx, db)
	if err != nil {
		return res, err
	}
	for _, e := range erased {
		found := uint64(0)
		counts := map[string]uint64{}
		for _, t := range tables {
			if t.Class == Keep {
				continue
			}
			where, params := customerFilter(t, e.CustomerID, e.APIKeyIDs)
			n, err := countQuery(ctx, db, t, "SELECT count() FROM "+t.ident+" WHERE "+where, params...)
			if err != nil {
				return res, err
			}
			if n == 0 {
				continue
			}
			if t.Class == Pseudonymise {
				err = db.Exec(ctx, "ALTER TABLE "+t.ident+" UPDATE customer_id = {pseudonym:String} WHERE "+where+" SETTINGS mutations_sync = 2",
					append(params, store.P("pseudonym", e.Pseudonym))...)
				res.Pseudonymised[t.Name] += n
			} else {
				err = db.Exec(ctx, "ALTER TABLE "+t.ident+" DELETE WHERE "+where+" SETTINGS mutations_sync = 2", params...)
				res.Removed[t.Name] += n
			}
			if err != nil {
				return res, fmt.Errorf("privacy: reapply erasure %s: %s: %w", e.ID, t.Name, err)
			}
			counts[t.Name] = n
			found += n
		}
		res.Erasures++
		if found > 0 {
			res.Customers = append(res.Customers, e.CustomerID)
		}
		if err := s.Audit(ctx, actor, "erasure_reapplied", e.CustomerID, "", e.ID, map[string]any{"rows": counts}); err != nil {
			return res, err
		}
		s.log.Info("erasure re-applied after a restore", "erasure", e.ID, "customer", e.CustomerID, "rows", counts)
	}
	return res, nil
}

// insertVersion saves e as it is, without a new version time.
func (s *Service) insertVersion(ctx context.Context, e *Erasure) error {
	err := s.db.Exec(ctx, saveErasureSQL,
		store.P("id", e.ID), store.P("customer_id", e.CustomerID), store.P("api_key_ids", nonNil(e.APIKeyIDs)), store.P("kind", e.Kind),
		store.P("requested_by", e.RequestedBy), store.P("reason", e.Reason),
		store.P("requested_at", e.RequestedAt), store.P("not_before", e.NotBefore), store.P("status", e.Status),
		store.P("started_at", orEpoch(e.StartedAt)), store.P("finished_at", orEpoch(e.FinishedAt)),
		store.P("removed", jsonCounts(e.Removed)), store.P("pseudonymised", jsonCounts(e.Pseudonymised)),
		store.P("pseudonym", e.Pseudonym), store.P("error", e.Error), store.P("updated_at", e.UpdatedAt))
	if err != nil {
		return fmt.Errorf("privacy: recording erasure %s: %w", e.ID, err)
	}
	return nil
}
