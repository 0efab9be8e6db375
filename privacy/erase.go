package privacy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/store"
)

// Erasure kinds.
const (
	KindErasure         = "erasure"
	KindAccountDeletion = "account_deletion"
)

// Erasure statuses. A request is scheduled (an account deletion waiting for
// its grace period) or pending (due), then running, then done or failed; a
// failed one is retried by the next run. Only a scheduled one can be
// cancelled.
const (
	StatusScheduled = "scheduled"
	StatusPending   = "pending"
	StatusRunning   = "running"
	StatusDone      = "done"
	StatusFailed    = "failed"
	StatusCancelled = "cancelled"
)

// PseudonymPrefix starts the pseudonym ("erased:" + erasure id) that
// replaces an erased customer's id in the billing records.
const PseudonymPrefix = "erased:"

// ErrNotFound is returned for an unknown erasure id.
var ErrNotFound = errors.New("no such erasure")

// ErrNotCancellable is returned when cancelling a request that is no longer
// scheduled.
var ErrNotCancellable = errors.New("only a scheduled erasure can be cancelled")

// Erasure is the state of one erasure request.
type Erasure struct {
	ID         string `json:"id"`
	CustomerID string `json:"customer_id"`
	// APIKeyIDs are the customer's API keys, recorded when the erasure
	// runs: those of its catalogue entry and every key its stored rows
	// carried. Rows stored without a customer under these keys are erased
	// too, and sinks drop the keys' events from then on.
	APIKeyIDs     []string          `json:"api_key_ids,omitempty"`
	Kind          string            `json:"kind"`
	RequestedBy   string            `json:"requested_by"`
	Reason        string            `json:"reason,omitempty"`
	RequestedAt   time.Time         `json:"requested_at"`
	NotBefore     time.Time         `json:"not_before"`
	Status        string            `json:"status"`
	StartedAt     *time.Time        `json:"started_at,omitempty"`
	FinishedAt    *time.Time        `json:"finished_at,omitempty"`
	Removed       map[string]uint64 `json:"removed"`
	Pseudonymised map[string]uint64 `json:"pseudonymised"`
	Pseudonym     string            `json:"pseudonym"`
	Error         string            `json:"error,omitempty"`
	UpdatedAt     time.Time         `json:"updated_at"`
}

// Request asks for an erasure.
type Request struct {
	CustomerID  string
	RequestedBy string
	Reason      string
	// Delay schedules the erasure that long after now (account deletion);
	// zero makes it due at once.
	Delay time.Duration
}

// MaxReasonBytes bounds a request's reason.
const MaxReasonBytes = 1000

// Validate checks a request; the message names the field.
func (r Request) Validate() error {
	var errs []error
	if r.CustomerID == "" {
		errs = append(errs, errors.New("customer_id: required"))
	}
	errs = append(errs, CheckID("customer_id", r.CustomerID), CheckID("requested_by", r.RequestedBy))
	if len(r.Reason) > MaxReasonBytes {
		errs = append(errs, fmt.Errorf("reason: longer than %d bytes", MaxReasonBytes))
	}
	if r.Delay < 0 {
		errs = append(errs, errors.New("delay: negative"))
	}
	return errors.Join(errs...)
}

// Service records, runs and reports erasures, and writes the audit trail.
// Erasures run one at a time per Service.
type Service struct {
	db  store.Conn
	cfg Config
	log *slog.Logger
	now func() time.Time

	run  sync.Mutex // one erasure at a time
	wake chan struct{}

	catalogueKeys func(customerID string) []string // nil: no catalogue
	keyOwners     func(apiKeyID string) []string   // nil: no catalogue

	erasures *prometheus.CounterVec
	deleted  *prometheus.CounterVec

	erasureLog *ErasureLog // nil: no copy outside the database
}

// NewService returns a Service. reg may be nil.
func NewService(cfg Config, db store.Conn, reg prometheus.Registerer, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{db: db, cfg: cfg.WithDefaults(), log: log, now: time.Now, wake: make(chan struct{}, 1),
		erasures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_privacy_erasures_total",
			Help: "Erasure runs by outcome (done, failed).",
		}, []string{"outcome"}),
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_privacy_rows_erased_total",
			Help: "Rows deleted or pseudonymised by erasures, by table and action.",
		}, []string{"table", "action"}),
	}
	if reg != nil {
		reg.MustRegister(s.erasures, s.deleted)
	}
	return s
}

// erasureIDRe is the form of the ids newID makes.
var erasureIDRe = regexp.MustCompile(`^er_[0-9a-f]{20}$`)

func newID() string {
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "er_" + hex.EncodeToString(b)
}

// epoch stands for "not yet" in the DateTime64 columns.
var epoch = time.Unix(0, 0).UTC()

func orEpoch(t *time.Time) time.Time {
	if t == nil || t.IsZero() {
		return epoch
	}
	return *t
}

func jsonCounts(m map[string]uint64) string {
	if m == nil {
		return "{}"
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// save appends a version of e.
func (s *Service) save(ctx context.Context, e *Erasure) error {
	now := s.now().UTC().Truncate(time.Millisecond)
	if !now.After(e.UpdatedAt) {
		now = e.UpdatedAt.Add(time.Millisecond)
	}
	e.UpdatedAt = now
	if s.erasureLog != nil {
		// The log first: whatever the table (or a backup of it) holds,
		// the log holds too.
		if err := s.erasureLog.Append(*e); err != nil {
			return fmt.Errorf("privacy: recording erasure %s: %w", e.ID, err)
		}
	}
	return s.insertVersion(ctx, e)
}

// Audit appends one entry to the audit trail. detail is encoded as JSON.
func (s *Service) Audit(ctx context.Context, actor, action, customerID, apiKeyID, erasureID string, detail any) error {
	d, err := json.Marshal(detail)
	if err != nil {
		return err
	}
	err = s.db.Exec(ctx, auditSQL,
		store.P("at", s.now().UTC()), store.P("actor", actor), store.P("action", action), store.P("customer_id", customerID),
		store.P("api_key_id", apiKeyID), store.P("erasure_id", erasureID), store.P("detail", string(d)))
	if err != nil {
		return fmt.Errorf("privacy: writing the audit trail: %w", err)
	}
	return nil
}

// Request records an erasure request: pending at once, or scheduled after
// r.Delay. Pending requests run at the next Run cycle (Wake starts one).
func (s *Service) Request(ctx context.Context, r Request) (Erasure, error) {
	if err := r.Validate(); err != nil {
		return Erasure{}, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	e := Erasure{ID: newID(), CustomerID: r.CustomerID, Kind: KindErasure, RequestedBy: r.RequestedBy, Reason: r.Reason,
		RequestedAt: now, NotBefore: now, Status: StatusPending, Removed: map[string]uint64{}, Pseudonymised: map[string]uint64{}}
	if r.Delay > 0 {
		e.Kind, e.Status, e.NotBefore = KindAccountDeletion, StatusScheduled, now.Add(r.Delay)
	}
	e.Pseudonym = PseudonymPrefix + e.ID
	if err := s.save(ctx, &e); err != nil {
		return Erasure{}, err
	}
	if err := s.Audit(ctx, r.RequestedBy, "erasure_requested", e.CustomerID, "", e.ID,
		map[string]any{"kind": e.Kind, "not_before": e.NotBefore, "reason": e.Reason}); err != nil {
		return e, err
	}
	s.log.Info("erasure requested", "erasure", e.ID, "customer", e.CustomerID, "kind", e.Kind, "not_before", e.NotBefore, "by", e.RequestedBy)
	return e, nil
}

func scanErasure(rows store.Rows) (Erasure, error) {
	var e Erasure
	var started, finished time.Time
	var removed, pseudo string
	if err := rows.Scan(&e.ID, &e.CustomerID, &e.APIKeyIDs, &e.Kind, &e.RequestedBy, &e.Reason, &e.RequestedAt, &e.NotBefore,
		&e.Status, &started, &finished, &removed, &pseudo, &e.Pseudonym, &e.Error, &e.UpdatedAt); err != nil {
		return e, err
	}
	e.Removed, e.Pseudonymised = map[string]uint64{}, map[string]uint64{}
	if err := json.Unmarshal([]byte(removed), &e.Removed); err != nil {
		return e, err
	}
	if err := json.Unmarshal([]byte(pseudo), &e.Pseudonymised); err != nil {
		return e, err
	}
	for _, p := range []struct {
		t   time.Time
		dst **time.Time
	}{{started, &e.StartedAt}, {finished, &e.FinishedAt}} {
		if p.t.After(epoch) {
			t := p.t.UTC()
			*p.dst = &t
		}
	}
	e.RequestedAt, e.NotBefore, e.UpdatedAt = e.RequestedAt.UTC(), e.NotBefore.UTC(), e.UpdatedAt.UTC()
	return e, nil
}

func (s *Service) query(ctx context.Context, filter string, params ...store.Param) ([]Erasure, error) {
	rows, err := s.db.Query(ctx, selectErasuresSQL+filter+
		" ORDER BY requested_at DESC, id LIMIT 1000", params...)
	if err != nil {
		return nil, fmt.Errorf("privacy: reading erasures: %w", err)
	}
	defer rows.Close()
	var out []Erasure
	for rows.Next() {
		e, err := scanErasure(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// Get returns one erasure, or ErrNotFound.
func (s *Service) Get(ctx context.Context, id string) (Erasure, error) {
	es, err := s.query(ctx, "id = {id:String}", store.P("id", id))
	if err != nil {
		return Erasure{}, err
	}
	if len(es) == 0 {
		return Erasure{}, ErrNotFound
	}
	return es[0], nil
}

// List returns the newest 1000 erasures, of one customer when customerID
// is not empty.
func (s *Service) List(ctx context.Context, customerID string) ([]Erasure, error) {
	return s.query(ctx, "({c:String} = '' OR customer_id = {c:String})", store.P("c", customerID))
}

// Cancel cancels a scheduled erasure (an account deletion whose customer
// came back within the grace period).
func (s *Service) Cancel(ctx context.Context, id, actor string) (Erasure, error) {
	s.run.Lock()
	defer s.run.Unlock()
	e, err := s.Get(ctx, id)
	if err != nil {
		return e, err
	}
	if e.Status != StatusScheduled {
		return e, fmt.Errorf("%w: %s is %s", ErrNotCancellable, id, e.Status)
	}
	now := s.now().UTC()
	e.Status, e.FinishedAt = StatusCancelled, &now
	if err := s.save(ctx, &e); err != nil {
		return e, err
	}
	return e, s.Audit(ctx, actor, "erasure_cancelled", e.CustomerID, "", e.ID, map[string]any{})
}

// Wake makes Run look for due erasures now.
func (s *Service) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run carries out due erasures at start, every cfg.ErasureCheckInterval
// and after each Wake, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.ErasureCheckInterval)
	defer t.Stop()
	for {
		if n, err := s.RunDue(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Error("erasures failed; retried at the next check", "err", err, "done", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.wake:
		}
	}
}

// RunDue executes every erasure that is due: pending ones, scheduled ones
// past their not_before, and running or failed ones (interrupted or failed
// before). It returns how many completed.
func (s *Service) RunDue(ctx context.Context) (int, error) {
	due, err := s.query(ctx, `status IN ('pending', 'running', 'failed')
  OR (status = 'scheduled' AND not_before <= {now:DateTime64(3, 'UTC')})`, store.P("now", s.now().UTC()))
	if err != nil {
		return 0, err
	}
	sort.Slice(due, func(i, j int) bool { return due[i].RequestedAt.Before(due[j].RequestedAt) })
	var errs []error
	n := 0
	for _, e := range due {
		if _, err := s.Execute(ctx, e.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// Execute carries out one erasure now, whatever its not_before (an operator
// may run an account deletion early), and returns its final state. It is
// idempotent: running a done erasure again finds nothing left and records
// nothing new.
//
// Steps: the request becomes running, from when sinks drop the customer's
// events (they reload the list every cfg.ErasedRefresh); every table of
// class Delete loses the customer's rows and every Pseudonymise table gets
// the pseudonym, each as a ClickHouse mutation waited for (mutations_sync =
// 2); once sinks have seen the running state (2 × ErasedRefresh after the
// start) the tables are checked again and cleared of anything a sink or an
// aggregator wrote meanwhile; the counts per table are recorded with the
// done state and in the audit trail.
func (s *Service) Execute(ctx context.Context, id string) (Erasure, error) {
	s.run.Lock()
	defer s.run.Unlock()
	e, err := s.Get(ctx, id)
	if err != nil {
		return e, err
	}
	switch e.Status {
	case StatusDone:
		return e, nil
	case StatusCancelled:
		return e, fmt.Errorf("privacy: erasure %s was cancelled", id)
	}
	start := s.now().UTC()
	if e.StartedAt == nil {
		e.StartedAt = &start
	}
	// The keys are recorded with the running state, before anything is
	// deleted: the rows that tell which keys were the customer's are gone
	// afterwards, and the sinks block the keys from this save on.
	if err := s.collectKeys(ctx, &e); err != nil {
		return e, err
	}
	e.Status, e.Error = StatusRunning, ""
	if err := s.save(ctx, &e); err != nil {
		return e, err
	}
	if err := s.Audit(ctx, e.RequestedBy, "erasure_started", e.CustomerID, "", e.ID, map[string]any{}); err != nil {
		return e, err
	}
	s.log.Info("erasure started", "erasure", e.ID, "customer", e.CustomerID)
	err = s.erase(ctx, &e, start)
	now := s.now().UTC()
	e.FinishedAt = &now
	if err != nil {
		s.erasures.WithLabelValues("failed").Inc()
		e.Status, e.Error = StatusFailed, err.Error()
		s.log.Error("erasure failed", "erasure", e.ID, "customer", e.CustomerID, "err", err)
		// Record the failure even when ctx ended: a later run retries.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if serr := s.save(rctx, &e); serr != nil {
			return e, errors.Join(err, serr)
		}
		_ = s.Audit(rctx, e.RequestedBy, "erasure_failed", e.CustomerID, "", e.ID, map[string]any{"error": e.Error,
			"removed": e.Removed, "pseudonymised": e.Pseudonymised})
		return e, err
	}
	s.erasures.WithLabelValues("done").Inc()
	e.Status = StatusDone
	if err := s.save(ctx, &e); err != nil {
		return e, err
	}
	s.log.Info("erasure done", "erasure", e.ID, "customer", e.CustomerID, "removed", e.Removed, "pseudonymised", e.Pseudonymised)
	return e, s.Audit(ctx, e.RequestedBy, "erasure_done", e.CustomerID, "", e.ID,
		map[string]any{"removed": e.Removed, "pseudonymised": e.Pseudonymised})
}

// erase runs the deletion passes; counts accumulate into e.
func (s *Service) erase(ctx context.Context, e *Erasure, start time.Time) error {
	if e.Removed == nil {
		e.Removed = map[string]uint64{}
	}
	if e.Pseudonymised == nil {
		e.Pseudonymised = map[string]uint64{}
	}
	settleAt := start.Add(2 * s.cfg.ErasedRefresh)
	for pass := 1; ; pass++ {
		tables, err := Tables(ctx, s.db)
		if err != nil {
			return err
		}
		// Rows written since the last pass may carry a key not seen yet.
		if added, err := s.tableKeys(ctx, tables, e); err != nil {
			return err
		} else if added {
			if err := s.save(ctx, e); err != nil {
				return err
			}
		}
		found := uint64(0)
		for _, t := range tables {
			if t.Class == Keep {
				continue
			}
			n, err := s.eraseTable(ctx, t, e)
			if err != nil {
				return err
			}
			found += n
		}
		// After the sinks have seen the erasure, one pass that finds
		// nothing ends it; passes before that may race with a write.
		wait := settleAt.Sub(s.now())
		if wait <= 0 && found == 0 {
			return nil
		}
		if pass >= 5 {
			return fmt.Errorf("rows of customer %q keep appearing after %d passes: is a sink running without the erased-customer list?", e.CustomerID, pass)
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
	}
}

// eraseTable deletes or pseudonymises the customer's rows of t and returns
// how many it found.
func (s *Service) eraseTable(ctx context.Context, t Table, e *Erasure) (uint64, error) {
	where, params := customerFilter(t, e.CustomerID, e.APIKeyIDs)
	n, err := countQuery(ctx, s.db, t, "SELECT count() FROM "+t.ident+" WHERE "+where, params...)
	if err != nil || n == 0 {
		return 0, err
	}
	action := "deleted"
	if t.Class == Pseudonymise {
		action = "pseudonymised"
		err = s.db.Exec(ctx, "ALTER TABLE "+t.ident+" UPDATE customer_id = {pseudonym:String} WHERE "+where+" SETTINGS mutations_sync = 2",
			append(params, store.P("pseudonym", e.Pseudonym))...)
	} else {
		err = s.db.Exec(ctx, "ALTER TABLE "+t.ident+" DELETE WHERE "+where+" SETTINGS mutations_sync = 2", params...)
	}
	if err != nil {
		return n, fmt.Errorf("%s: %w", t.Name, err)
	}
	if t.Class == Pseudonymise {
		e.Pseudonymised[t.Name] += n
	} else {
		e.Removed[t.Name] += n
	}
	s.deleted.WithLabelValues(t.Name, action).Add(float64(n))
	// Record progress: a process killed later in the erasure is followed by
	// one that resumes with these counts, so the final report still says
	// what this pass removed.
	if err := s.save(ctx, e); err != nil {
		return n, err
	}
	s.log.Info("erasure: table done", "erasure", e.ID, "table", t.Name, "class", t.Class, "rows", n)
	return n, nil
}

// countPhysical counts stored rows of a customer, duplicates and replaced
// versions included: every copy is personal data to remove.
func countPhysical(ctx context.Context, db store.Conn, t Table, customerID string) (uint64, error) {
	return countQuery(ctx, db, t, "SELECT count() FROM "+t.ident+" WHERE customer_id = {customer_id:String}",
		store.P("customer_id", customerID))
}

// Remaining counts, per table of class Delete, the rows a customer still
// has: all zero after an erasure.
func Remaining(ctx context.Context, db store.Conn, customerID string) (map[string]uint64, error) {
	tables, err := Tables(ctx, db)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, t := range tables {
		if t.Class != Delete {
			continue
		}
		if out[t.Name], err = countPhysical(ctx, db, t, customerID); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ErasedCustomers returns the customers with an erasure running, done or
// failed: the sink drops their events.
func ErasedCustomers(ctx context.Context, db store.Conn) (map[string]struct{}, error) {
	rows, err := db.Query(ctx, erasedCustomersSQL)
	if err != nil {
		return nil, fmt.Errorf("privacy: reading erased customers: %w", err)
	}
	defer rows.Close()
	out := map[string]struct{}{}
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, err
		}
		out[c] = struct{}{}
	}
	return out, rows.Err()
}

// CatalogueKeys gives the service the catalogue's keys of a customer: an
// erasure records them (with the keys the customer's rows carry) before it
// deletes anything. Call before Run or Execute.
func (s *Service) CatalogueKeys(keys func(customerID string) []string) { s.catalogueKeys = keys }

// KeyOwners gives the service the customers the catalogue gives a key to,
// at any time (key periods included). A key that another customer holds
// or held is not recorded with an erasure: recording it would drop that
// customer's unassigned rows and events of the key. The erased customer's
// own rows of such a key are still erased by its customer_id. Call before
// Run or Execute.
func (s *Service) KeyOwners(owners func(apiKeyID string) []string) { s.keyOwners = owners }

// exclusiveKeys returns the keys no other customer holds in the catalogue.
func (s *Service) exclusiveKeys(customerID string, keys []string) []string {
	if s.keyOwners == nil {
		return keys
	}
	out := keys[:0:0]
	for _, k := range keys {
		shared := false
		for _, c := range s.keyOwners(k) {
			if c != customerID {
				shared = true
			}
		}
		if !shared {
			out = append(out, k)
		}
	}
	return out
}

// collectKeys adds to e the customer's keys from the catalogue and from
// its stored rows.
func (s *Service) collectKeys(ctx context.Context, e *Erasure) error {
	if s.catalogueKeys != nil {
		e.APIKeyIDs = addKeys(e.APIKeyIDs, s.exclusiveKeys(e.CustomerID, s.catalogueKeys(e.CustomerID)))
	}
	tables, err := Tables(ctx, s.db)
	if err != nil {
		return err
	}
	_, err = s.tableKeys(ctx, tables, e)
	return err
}

// tableKeys adds to e every key the customer's rows carry in tables, and
// reports whether one was new.
func (s *Service) tableKeys(ctx context.Context, tables []Table, e *Erasure) (bool, error) {
	before := len(e.APIKeyIDs)
	for _, t := range tables {
		if !t.HasAPIKey || t.Class == Keep {
			continue
		}
		rows, err := s.db.Query(ctx, keysOfCustomerSQL(t), store.P("customer_id", e.CustomerID))
		if err != nil {
			return false, fmt.Errorf("privacy: keys of %s in %s: %w", e.CustomerID, t.Name, err)
		}
		var found []string
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				rows.Close()
				return false, err
			}
			found = append(found, k)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return false, err
		}
		e.APIKeyIDs = addKeys(e.APIKeyIDs, s.exclusiveKeys(e.CustomerID, found))
	}
	return len(e.APIKeyIDs) > before, nil
}

// addKeys returns have with the keys of add it lacks, sorted.
func addKeys(have, add []string) []string {
	seen := make(map[string]bool, len(have))
	for _, k := range have {
		seen[k] = true
	}
	for _, k := range add {
		if k != "" && !seen[k] {
			seen[k] = true
			have = append(have, k)
		}
	}
	sort.Strings(have)
	return have
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// ErasedKeys returns the API keys of the customers ErasedCustomers lists:
// the sink drops their events, with or without a customer_id.
func ErasedKeys(ctx context.Context, db store.Conn) (map[string]struct{}, error) {
	rows, err := db.Query(ctx, erasedKeysSQL)
	if err != nil {
		return nil, fmt.Errorf("privacy: reading erased keys: %w", err)
	}
	defer rows.Close()
	out := map[string]struct{}{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		out[k] = struct{}{}
	}
	return out, rows.Err()
}
