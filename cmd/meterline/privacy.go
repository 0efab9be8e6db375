package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/internal/term"
	"github.com/meterline/meterline/privacy"
	"github.com/meterline/meterline/store"
)

const privacyUsage = `Usage: meterline privacy <command> [flags]

Commands:
  retention   each table's retention, row count and oldest row
  export      write everything held about a customer or an API key (NDJSON or zip of CSVs)
  erase       erase a customer's data now, or schedule it (--account-deleted)
  erasures    list erasure requests, or show one (--id)
  cancel      cancel a scheduled account deletion
  run-due     carry out the erasures that are due (what serve does daily)
  reapply     re-apply every erasure of the erasure log (privacy.erasure_log)
              to the database, after it was restored by other means than
              'meterline backup restore' (which does it itself)

export, erase, erasures and cancel open the ClickHouse engine directly, or go
through a running server's API with --url (needed while 'meterline serve'
holds the embedded engine). Run 'meterline privacy <command> -h' for flags.
`

func runPrivacy(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stderr, privacyUsage)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	sub := map[string]func([]string, io.Writer, io.Writer) error{
		"retention": runPrivacyRetention,
		"export":    runPrivacyExport,
		"erase":     runPrivacyErase,
		"erasures":  runPrivacyErasures,
		"cancel":    runPrivacyCancel,
		"run-due":   runPrivacyRunDue,
		"reapply":   runPrivacyReapply,
	}
	f, ok := sub[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "meterline privacy: unknown command %q\n\n%s", args[0], privacyUsage)
		return errUsage
	}
	return f(args[1:], stdout, stderr)
}

func runPrivacyRetention(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("privacy retention", "privacy retention [--config FILE]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cfg, db, _, err := openForCommand(ctx, &cf, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	rules := retentionRules(cfg)
	st, err := store.Retention(ctx, db, rules)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TABLE\tRETENTION\tCONFIGURED\tBY COLUMN\tROWS\tOLDEST ROW")
	for i, t := range st {
		oldest := "-"
		if t.Rows > 0 {
			oldest = t.Oldest.UTC().Format(time.RFC3339)
		}
		have := "none"
		if t.Months > 0 {
			have = fmt.Sprintf("%d months", t.Months)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d months\t%s\t%d\t%s\n", t.Table, have, rules[i].Months, t.Column, t.Rows, oldest)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "Rows older than the retention are deleted when their part merges; `meterline migrate` applies a changed setting at once.")
	return nil
}

// remoteFlags select the HTTP API instead of opening the engine.
type remoteFlags struct {
	url, token string
}

func (r *remoteFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.url, "url", os.Getenv("METERLINE_URL"), "go through the API of the server at this `base URL` (env METERLINE_URL) instead of opening the engine")
	fs.StringVar(&r.token, "token", "", "admin API `token` for --url (env METERLINE_TOKEN)")
}

func (r *remoteFlags) enabled() bool { return r.url != "" }

// do sends one request to the API and fails on a non-2xx answer with the
// server's error message.
func (r *remoteFlags) do(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	tok := r.token
	if tok == "" {
		tok = os.Getenv("METERLINE_TOKEN")
	}
	if tok == "" {
		return nil, errors.New("--url needs --token or METERLINE_TOKEN (an admin token)")
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(r.url, "/")+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("is meterline serving at %s? %w", r.url, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var eb struct{ Error string }
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
			return nil, fmt.Errorf("%s: %s", resp.Status, eb.Error)
		}
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return resp, nil
}

// cliActor names the person running a command in the audit trail.
func cliActor(by string) string {
	if by != "" {
		return by
	}
	if u, err := user.Current(); err == nil && u.Username != "" {
		return "cli:" + u.Username
	}
	return "cli"
}

// openPrivacy opens the engine and the privacy service for a command.
func openPrivacy(ctx context.Context, cf *commonFlags, stderr io.Writer) (*Config, store.Conn, *privacy.Service, error) {
	cfg, db, log, err := openForCommand(ctx, cf, stderr)
	if err != nil {
		return nil, nil, nil, err
	}
	if _, err := store.Migrate(ctx, db, migrateOptions(cfg), log); err != nil {
		db.Close()
		return nil, nil, nil, err
	}
	svc := privacy.NewService(cfg.Privacy.Config, db, nil, log)
	elog, err := privacy.OpenErasureLog(cfg.erasureLogPath())
	if err != nil {
		db.Close()
		return nil, nil, nil, err
	}
	svc.SetErasureLog(elog)
	if cfg.Limits.CatalogueFile != "" {
		cat, err := limits.LoadRegistry(cfg.Limits.CatalogueFile)
		if err != nil {
			db.Close()
			return nil, nil, nil, fmt.Errorf("limits.catalogue_file: %w", err)
		}
		reg := limits.NewRegistry(cat)
		svc.CatalogueKeys(catalogueKeys(reg))
		svc.KeyOwners(keyOwners(reg))
	}
	return cfg, db, svc, nil
}

// catalogueKeys returns the keys the catalogue lists for a customer: an
// erasure records them and erases what was stored under them without a
// customer_id.
// catalogueKeys gives an erasure the customer's keys in the catalogue
// (plain keys and key periods).
func catalogueKeys(registry *limits.Registry) func(string) []string {
	return func(customerID string) []string {
		if c, ok := registry.Customer(customerID); ok {
			return c.AllKeys()
		}
		return nil
	}
}

// keyOwners gives an erasure the customers that hold or held a key in the
// catalogue.
func keyOwners(registry *limits.Registry) func(string) []string {
	return func(apiKeyID string) []string {
		var out []string
		for _, o := range registry.Ownerships() {
			if o.APIKeyID == apiKeyID {
				out = append(out, o.CustomerID)
			}
		}
		return out
	}
}

func runPrivacyExport(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("privacy export", "privacy export --customer ID [--api-key ID] [--format ndjson|zip] [--out FILE] [flags]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	var rf remoteFlags
	rf.register(fs)
	customer := fs.String("customer", "", "customer `id` whose data to export")
	key := fs.String("api-key", "", "API key `id`: only that key's data (with --customer: that customer's key)")
	format := fs.String("format", "", "ndjson or zip (zip of CSV files); default zip when --out ends in .zip, else ndjson")
	out := fs.String("out", "-", "output `file`; - is standard output")
	by := fs.String("by", "", "who asks, for the audit trail (default cli:<OS user>)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := parse(fs, args); err != nil {
		return err
	}
	s := privacy.Subject{CustomerID: *customer, APIKeyID: *key}
	if err := s.Validate(); err != nil {
		fmt.Fprintf(stderr, "meterline privacy export: %v (--customer, --api-key)\n", err)
		return errUsage
	}
	if *format == "" {
		*format = "ndjson"
		if strings.HasSuffix(*out, ".zip") {
			*format = "zip"
		}
	}
	f, err := privacy.ParseFormat(*format)
	if err != nil {
		fmt.Fprintf(stderr, "meterline privacy export: --%v\n", err)
		return errUsage
	}
	var w io.Writer = stdout
	var file *os.File
	if *out != "-" {
		if file, err = os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			return fmt.Errorf("--out: %w (an existing file is never overwritten)", err)
		}
		w = file
	} else if f == privacy.ZipCSV && term.IsTerminal(stdout) {
		fmt.Fprintln(stderr, "meterline privacy export: a zip is binary; give --out FILE.zip or redirect standard output")
		return errUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var res privacy.Result
	if rf.enabled() {
		res, err = remoteExport(ctx, &rf, s, f, w, term.NewProgress(stderr, *quiet))
	} else {
		res, err = localExport(ctx, &cf, s, f, w, cliActor(*by), term.NewProgress(stderr, *quiet), stderr)
	}
	if file != nil {
		if cerr := file.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(*out)
		}
	}
	if err != nil {
		return err
	}
	if res.Rows == nil {
		// A zip read through the API: its rows are counted in its
		// summary.json, not here.
		fmt.Fprintf(stderr, "received %d bytes of zip (the row counts are in its summary.json)\n", res.Total)
	} else {
		printCounts(stderr, "ROWS", res.Rows)
	}
	if *out != "-" {
		fmt.Fprintf(stderr, "wrote %s (%s)\n", *out, f)
	}
	return nil
}

func localExport(ctx context.Context, cf *commonFlags, s privacy.Subject, f privacy.Format, w io.Writer, actor string, p *term.Progress, stderr io.Writer) (privacy.Result, error) {
	cfg, db, svc, err := openPrivacy(ctx, cf, stderr)
	if err != nil {
		return privacy.Result{}, err
	}
	defer db.Close()
	ex, err := privacy.Plan(ctx, db, s, 0)
	if err != nil {
		return privacy.Result{}, err
	}
	var registry *limits.Registry
	if cfg.Limits.CatalogueFile != "" {
		cat, err := limits.LoadRegistry(cfg.Limits.CatalogueFile)
		if err != nil {
			return privacy.Result{}, fmt.Errorf("limits.catalogue_file: %w", err)
		}
		registry = limits.NewRegistry(cat)
	}
	ex.Records = privacyRecords(registry, nil)(s)
	p.Start(ex.Rows)
	res, err := ex.Write(ctx, w, f, func(pr privacy.Progress) { p.Set(pr.Rows, pr.Table) })
	p.Finish()
	detail := map[string]any{"format": f, "rows": res.Rows, "total": res.Total}
	if err != nil {
		detail["error"] = err.Error()
	}
	if aerr := svc.Audit(context.WithoutCancel(ctx), actor, "export", s.CustomerID, s.APIKeyID, "", detail); aerr != nil && err == nil {
		err = aerr
	}
	return res, err
}

func remoteExport(ctx context.Context, rf *remoteFlags, s privacy.Subject, f privacy.Format, w io.Writer, p *term.Progress) (privacy.Result, error) {
	q := url.Values{"format": {string(f)}}
	if s.CustomerID != "" {
		q.Set("customer_id", s.CustomerID)
	}
	if s.APIKeyID != "" {
		q.Set("api_key_id", s.APIKeyID)
	}
	resp, err := rf.do(ctx, http.MethodGet, "/v1/privacy/export?"+q.Encode(), nil)
	if err != nil {
		return privacy.Result{}, err
	}
	defer resp.Body.Close()
	planned, _ := strconv.ParseUint(resp.Header.Get("Meterline-Export-Rows"), 10, 64)
	res := privacy.Result{Rows: map[string]uint64{}}
	if f == privacy.ZipCSV {
		// Rows cannot be counted in a compressed stream: show bytes.
		p.StartBytes()
		n, err := io.Copy(w, io.TeeReader(resp.Body, p.Writer()))
		p.Finish()
		res.Rows, res.Total = nil, uint64(n)
		return res, err
	}
	p.Start(planned)
	br := bufio.NewReaderSize(resp.Body, 1<<20)
	complete := false
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if _, werr := w.Write(line); werr != nil {
				return res, werr
			}
			var head struct {
				Table string `json:"table"`
			}
			// Only the table name is decoded; rows pass through as they are.
			if json.Unmarshal(line, &head) == nil {
				if head.Table == "_summary" {
					complete = true
				} else {
					res.Rows[head.Table]++
					res.Total++
					if res.Total%1000 == 0 {
						p.Set(res.Total, head.Table)
					}
				}
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			return res, errors.New("an export line is longer than 1 MiB")
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return res, fmt.Errorf("the export stopped: %w", err)
		}
	}
	p.Set(res.Total, "")
	p.Finish()
	if !complete {
		return res, errors.New("the export ended without its summary line: it is incomplete")
	}
	return res, nil
}

// privacyRecords adds what the catalogue and the limits view hold about a
// subject to its export: the customer's catalogue entry and, when the view
// runs, each key's live limit. registry and view may be nil.
func privacyRecords(registry *limits.Registry, view *limits.View) func(privacy.Subject) []privacy.Record {
	return func(s privacy.Subject) []privacy.Record {
		var out []privacy.Record
		var keys []string
		if registry != nil && s.CustomerID != "" {
			if c, ok := registry.Customer(s.CustomerID); ok {
				out = append(out, privacy.Record{Table: "catalogue", Row: map[string]any{
					"customer_id": c.ID, "plan": c.Plan, "keys": c.Keys, "alert_webhook": c.AlertWebhook}})
				keys = c.Keys
			}
		}
		if s.APIKeyID != "" {
			keys = []string{s.APIKeyID}
		}
		if view != nil {
			for _, k := range keys {
				if l, err := view.Lookup(k, time.Now()); err == nil && (s.CustomerID == "" || l.CustomerID == s.CustomerID) {
					out = append(out, privacy.Record{Table: "limits", Row: l})
				}
			}
		}
		return out
	}
}

func printCounts(w io.Writer, head string, m map[string]uint64) {
	names := make([]string, 0, len(m))
	var total uint64
	for k, v := range m {
		names = append(names, k)
		total += v
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "TABLE\t%s\t\n", head)
	for _, n := range names {
		fmt.Fprintf(tw, "%s\t%d\t\n", n, m[n])
	}
	fmt.Fprintf(tw, "total\t%d\t\n", total)
	tw.Flush()
}

func runPrivacyErase(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("privacy erase", "privacy erase --customer ID --yes [--account-deleted] [--reason TEXT] [flags]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	var rf remoteFlags
	rf.register(fs)
	customer := fs.String("customer", "", "customer `id` whose data to erase")
	reason := fs.String("reason", "", "why (a ticket number, the request's date); kept in the audit trail")
	accountDeleted := fs.Bool("account-deleted", false, "the account was deleted: schedule the erasure after privacy.account_deletion_delay (90 days) instead of now")
	by := fs.String("by", "", "who asks, for the audit trail (default cli:<OS user>)")
	yes := fs.Bool("yes", false, "confirm: an erasure cannot be undone")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *customer == "" {
		fmt.Fprintln(stderr, "meterline privacy erase: give --customer")
		return errUsage
	}
	if !*yes && !*accountDeleted {
		fmt.Fprintf(stderr, "meterline privacy erase: this deletes every row of customer %q from the raw events, the rollups and the alert log, and pseudonymises its billing records; it cannot be undone. Add --yes to go ahead.\n", *customer)
		return errUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var e privacy.Erasure
	var err error
	if rf.enabled() {
		e, err = remoteErase(ctx, &rf, *customer, *reason, *accountDeleted, stderr)
	} else {
		e, err = localErase(ctx, &cf, privacy.Request{CustomerID: *customer, Reason: *reason, RequestedBy: cliActor(*by)}, *accountDeleted, stderr)
	}
	if err != nil {
		return err
	}
	printErasure(stdout, e)
	return nil
}

func localErase(ctx context.Context, cf *commonFlags, req privacy.Request, scheduled bool, stderr io.Writer) (privacy.Erasure, error) {
	cfg, db, svc, err := openPrivacy(ctx, cf, stderr)
	if err != nil {
		return privacy.Erasure{}, err
	}
	defer db.Close()
	if scheduled {
		req.Delay = cfg.Privacy.AccountDeletionDelay
	}
	if err := req.Validate(); err != nil {
		return privacy.Erasure{}, err
	}
	e, err := svc.Request(ctx, req)
	if err != nil || scheduled {
		return e, err
	}
	fmt.Fprintf(stderr, "erasing customer %q (%s)...\n", req.CustomerID, e.ID)
	return svc.Execute(ctx, e.ID)
}

func remoteErase(ctx context.Context, rf *remoteFlags, customer, reason string, scheduled bool, stderr io.Writer) (privacy.Erasure, error) {
	body, _ := json.Marshal(map[string]any{"customer_id": customer, "reason": reason, "account_deletion": scheduled})
	resp, err := rf.do(ctx, http.MethodPost, "/v1/privacy/erasures", strings.NewReader(string(body)))
	if err != nil {
		return privacy.Erasure{}, err
	}
	var e privacy.Erasure
	err = json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if err != nil || scheduled {
		return e, err
	}
	fmt.Fprintf(stderr, "erasing customer %q (%s)...\n", customer, e.ID)
	for e.Status != privacy.StatusDone && e.Status != privacy.StatusFailed {
		select {
		case <-ctx.Done():
			return e, fmt.Errorf("stopped waiting; the erasure goes on on the server: meterline privacy erasures --id %s", e.ID)
		case <-time.After(500 * time.Millisecond):
		}
		resp, err := rf.do(ctx, http.MethodGet, "/v1/privacy/erasures/"+url.PathEscape(e.ID), nil)
		if err != nil {
			return e, err
		}
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if err != nil {
			return e, err
		}
	}
	if e.Status == privacy.StatusFailed {
		return e, fmt.Errorf("erasure %s failed: %s (it is retried by the server)", e.ID, e.Error)
	}
	return e, nil
}

func printErasure(w io.Writer, e privacy.Erasure) {
	fmt.Fprintf(w, "erasure %s of customer %q: %s (%s, requested by %s at %s)\n", e.ID, e.CustomerID, e.Status, e.Kind,
		e.RequestedBy, e.RequestedAt.Format(time.RFC3339))
	switch e.Status {
	case privacy.StatusScheduled:
		fmt.Fprintf(w, "runs after %s; cancel with: meterline privacy cancel %s\n", e.NotBefore.Format(time.RFC3339), e.ID)
		return
	case privacy.StatusFailed:
		fmt.Fprintf(w, "error: %s\n", e.Error)
	}
	if len(e.Removed) > 0 {
		printCounts(w, "ROWS DELETED", e.Removed)
	}
	if len(e.Pseudonymised) > 0 {
		printCounts(w, "ROWS PSEUDONYMISED", e.Pseudonymised)
		fmt.Fprintf(w, "pseudonym: %s\n", e.Pseudonym)
	}
}

func runPrivacyErasures(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("privacy erasures", "privacy erasures [--customer ID | --id ID] [flags]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	var rf remoteFlags
	rf.register(fs)
	customer := fs.String("customer", "", "only this customer's requests")
	id := fs.String("id", "", "show one request in full")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := errors.Join(privacy.CheckID("--customer", *customer), privacy.CheckID("--id", *id)); err != nil {
		fmt.Fprintln(stderr, "meterline privacy erasures:", err)
		return errUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var es []privacy.Erasure
	if rf.enabled() {
		path := "/v1/privacy/erasures?customer_id=" + url.QueryEscape(*customer)
		if *id != "" {
			path = "/v1/privacy/erasures/" + url.PathEscape(*id)
		}
		resp, err := rf.do(ctx, http.MethodGet, path, nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if *id != "" {
			var e privacy.Erasure
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				return err
			}
			es = []privacy.Erasure{e}
		} else {
			var list struct{ Erasures []privacy.Erasure }
			if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
				return err
			}
			es = list.Erasures
		}
	} else {
		_, db, svc, err := openPrivacy(ctx, &cf, stderr)
		if err != nil {
			return err
		}
		defer db.Close()
		if *id != "" {
			e, err := svc.Get(ctx, *id)
			if err != nil {
				return err
			}
			es = []privacy.Erasure{e}
		} else if es, err = svc.List(ctx, *customer); err != nil {
			return err
		}
	}
	if *id != "" {
		printErasure(stdout, es[0])
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCUSTOMER\tKIND\tSTATUS\tREQUESTED\tNOT BEFORE\tBY\tROWS DELETED")
	for _, e := range es {
		var n uint64
		for _, v := range e.Removed {
			n += v
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", e.ID, e.CustomerID, e.Kind, e.Status,
			e.RequestedAt.Format(time.RFC3339), e.NotBefore.Format(time.RFC3339), e.RequestedBy, n)
	}
	return tw.Flush()
}

func runPrivacyCancel(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("privacy cancel", "privacy cancel [flags] ID", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	var rf remoteFlags
	rf.register(fs)
	by := fs.String("by", "", "who cancels, for the audit trail (default cli:<OS user>)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "meterline privacy cancel: give one erasure id")
		return errUsage
	}
	id := fs.Arg(0)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var e privacy.Erasure
	if rf.enabled() {
		resp, err := rf.do(ctx, http.MethodDelete, "/v1/privacy/erasures/"+url.PathEscape(id), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			return err
		}
	} else {
		_, db, svc, err := openPrivacy(ctx, &cf, stderr)
		if err != nil {
			return err
		}
		defer db.Close()
		if e, err = svc.Cancel(ctx, id, cliActor(*by)); err != nil {
			return err
		}
	}
	printErasure(stdout, e)
	return nil
}

func runPrivacyRunDue(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("privacy run-due", "privacy run-due [flags]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	_, db, svc, err := openPrivacy(ctx, &cf, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	n, err := svc.RunDue(ctx)
	fmt.Fprintf(stdout, "%d erasure(s) carried out\n", n)
	return err
}

func runPrivacyReapply(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("privacy reapply", "privacy reapply [flags]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cfg, db, _, err := openPrivacy(ctx, &cf, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	logPath := cfg.erasureLogPath()
	logged, err := privacy.ReadErasureLog(logPath, nil)
	if err != nil {
		return err
	}
	res, err := privacy.Reapply(ctx, db, logged, cliActor(""), nil)
	if err != nil {
		return err
	}
	var removed uint64
	for _, n := range res.Removed {
		removed += n
	}
	fmt.Fprintf(stdout, "erasures: %d recorded from %s, %d re-applied, %d rows of %d erased customer(s) removed again\n",
		res.Recorded, logPath, res.Erasures, removed, len(res.Customers))
	return nil
}
