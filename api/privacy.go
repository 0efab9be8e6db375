package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/privacy"
	"github.com/meterline/meterline/store"
)

// Privacy serves the privacy endpoints, all with the admin scope:
//
//	GET    /v1/privacy/export?customer_id=C[&api_key_id=K][&format=ndjson|zip]
//	POST   /v1/privacy/erasures            {"customer_id": C, "reason": R, "account_deletion": false}
//	GET    /v1/privacy/erasures[?customer_id=C]
//	GET    /v1/privacy/erasures/{id}
//	DELETE /v1/privacy/erasures/{id}       cancels a scheduled account deletion
type Privacy struct {
	DB      store.Conn
	Service *privacy.Service
	Tokens  *auth.Tokens
	// AccountDeletionDelay schedules requests with account_deletion set.
	AccountDeletionDelay time.Duration
	// Records, if set, adds data held outside the tables to an export
	// (the catalogue entry, the live limits of the keys).
	Records func(privacy.Subject) []privacy.Record
	Log     *slog.Logger
	// ReadLimiter, if set, limits exports per token like the other read
	// endpoints (see ReadEndpoint).
	ReadLimiter *Limiter
}

// Register adds the endpoints to mux.
func (p *Privacy) Register(mux *http.ServeMux) {
	var export http.Handler = http.HandlerFunc(p.export)
	if p.ReadLimiter != nil {
		export = ReadEndpoint(p.ReadLimiter, p.Tokens, export)
	}
	mux.Handle("/v1/privacy/export", export)
	mux.HandleFunc("/v1/privacy/erasures", p.erasures)
	mux.HandleFunc("/v1/privacy/erasures/{id}", p.erasure)
}

func (p *Privacy) export(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		httpx.MethodNotAllowed(w, http.MethodGet)
		return
	}
	who, ok := httpx.Authenticate(w, r, p.Tokens, auth.ScopeAdmin)
	if !ok {
		return
	}
	q := r.URL.Query()
	if err := httpx.CheckParams(q, []string{"customer_id", "api_key_id", "format"}); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	s := privacy.Subject{CustomerID: q.Get("customer_id"), APIKeyID: q.Get("api_key_id")}
	if err := s.Validate(); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	format := privacy.NDJSON
	if f := q.Get("format"); f != "" {
		var err error
		if format, err = privacy.ParseFormat(f); err != nil {
			httpx.WriteError(w, http.StatusBadRequest, "parameter \"format\": "+err.Error())
			return
		}
	} else if strings.Contains(r.Header.Get("Accept"), "application/zip") {
		format = privacy.ZipCSV
	}
	p.WriteExport(w, r, who.Name, s, format)
}

// WriteExport streams the subject's export in format as the answer to r,
// audited as done by actor: what GET /v1/privacy/export answers once the
// request is checked, and what the web interface's export downloads.
func (p *Privacy) WriteExport(w http.ResponseWriter, r *http.Request, actor string, s privacy.Subject, format privacy.Format) {
	ex, err := privacy.Plan(r.Context(), p.DB, s, 0)
	if err != nil {
		p.Log.Error("privacy export: planning failed", "err", err)
		httpx.WriteError(w, http.StatusServiceUnavailable, "the export could not be prepared; try again")
		return
	}
	if p.Records != nil {
		ex.Records = p.Records(s)
	}
	name := "meterline-export"
	if s.CustomerID != "" {
		name += "-customer"
	}
	if s.APIKeyID != "" {
		name += "-key"
	}
	ext := ".ndjson"
	if format == privacy.ZipCSV {
		ext = ".zip"
	}
	w.Header().Set("Content-Type", format.ContentType())
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+ext+`"`)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Meterline-Export-Rows", fmt.Sprint(ex.Rows))
	w.WriteHeader(http.StatusOK)
	// A large export outlasts the server's write timeout: each slice written
	// pushes the deadline forward instead, so only a stalled client is cut.
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(exportSliceTimeout))
	res, err := ex.Write(r.Context(), w, format, func(privacy.Progress) {
		_ = rc.Flush()
		_ = rc.SetWriteDeadline(time.Now().Add(exportSliceTimeout))
	})
	detail := map[string]any{"format": format, "rows": res.Rows, "total": res.Total}
	if err != nil {
		detail["error"] = err.Error()
	}
	// Audited even when the client went away mid-export.
	// On the background connections: the audit record must not be refused
	// for lack of a read connection.
	if aerr := p.Service.Audit(store.NotInteractive(context.WithoutCancel(r.Context())), actor, "export", s.CustomerID, s.APIKeyID, "", detail); aerr != nil {
		p.Log.Error("privacy export: audit failed", "err", aerr)
	}
	if err != nil {
		// Headers are gone: abort the response so the client sees a
		// truncated transfer, not a complete-looking file.
		p.Log.Error("privacy export failed mid-stream", "customer", s.CustomerID, "api_key", s.APIKeyID, "err", err)
		panic(http.ErrAbortHandler)
	}
	p.Log.Info("privacy export", "by", actor, "customer", s.CustomerID, "api_key", s.APIKeyID, "rows", res.Total, "format", format)
}

// exportSliceTimeout bounds writing one slice of an export to the client.
const exportSliceTimeout = 2 * time.Minute

// erasureRequest is the body of POST /v1/privacy/erasures.
type erasureRequest struct {
	CustomerID      string `json:"customer_id"`
	Reason          string `json:"reason"`
	AccountDeletion bool   `json:"account_deletion"`
}

// maxErasureBody bounds the request body.
const maxErasureBody = 16 << 10

func (p *Privacy) erasures(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
	case http.MethodGet:
		p.list(w, r)
		return
	default:
		httpx.MethodNotAllowed(w, http.MethodGet, http.MethodPost)
		return
	}
	who, ok := httpx.Authenticate(w, r, p.Tokens, auth.ScopeAdmin)
	if !ok {
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		httpx.WriteError(w, http.StatusUnsupportedMediaType, "send application/json")
		return
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxErasureBody))
	dec.DisallowUnknownFields()
	var body erasureRequest
	if err := dec.Decode(&body); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			httpx.WriteError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", maxErasureBody))
			return
		}
		httpx.WriteError(w, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		httpx.WriteError(w, http.StatusBadRequest, "body: one JSON object expected")
		return
	}
	e, err := p.RequestErasure(r.Context(), who.Name, body.CustomerID, body.Reason, body.AccountDeletion)
	var invalid *InvalidRequestError
	switch {
	case errors.As(err, &invalid):
		httpx.WriteError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		httpx.WriteError(w, http.StatusServiceUnavailable, "the request could not be recorded; try again")
		return
	}
	w.Header().Set("Location", "/v1/privacy/erasures/"+e.ID)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(e)
}

// InvalidRequestError is a request that fails validation; nothing was
// recorded.
type InvalidRequestError struct{ Err error }

func (e *InvalidRequestError) Error() string { return e.Err.Error() }
func (e *InvalidRequestError) Unwrap() error { return e.Err }

// RequestErasure records an erasure of the customer requested by actor
// (scheduled after AccountDeletionDelay for an account deletion, due at
// once otherwise) and wakes the runner: what POST /v1/privacy/erasures
// does once the body is read, and what the web interface's form does. An
// invalid request is an *InvalidRequestError and records nothing.
func (p *Privacy) RequestErasure(ctx context.Context, actor, customerID, reason string, accountDeletion bool) (privacy.Erasure, error) {
	req := privacy.Request{CustomerID: customerID, RequestedBy: actor, Reason: reason}
	if accountDeletion {
		req.Delay = p.AccountDeletionDelay
	}
	if err := req.Validate(); err != nil {
		return privacy.Erasure{}, &InvalidRequestError{Err: err}
	}
	e, err := p.Service.Request(ctx, req)
	if err != nil {
		p.Log.Error("privacy: recording an erasure failed", "err", err)
		return e, err
	}
	if e.Status == privacy.StatusPending {
		p.Service.Wake()
	}
	return e, nil
}

func (p *Privacy) list(w http.ResponseWriter, r *http.Request) {
	if _, ok := httpx.Authenticate(w, r, p.Tokens, auth.ScopeAdmin); !ok {
		return
	}
	q := r.URL.Query()
	if err := httpx.CheckParams(q, []string{"customer_id"}); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := privacy.CheckID("customer_id", q.Get("customer_id")); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	es, err := p.Service.List(r.Context(), q.Get("customer_id"))
	if err != nil {
		p.Log.Error("privacy: listing erasures failed", "err", err)
		httpx.WriteError(w, http.StatusServiceUnavailable, "erasures could not be read; try again")
		return
	}
	if es == nil {
		es = []privacy.Erasure{}
	}
	httpx.WriteJSON(w, map[string]any{"erasures": es})
}

func (p *Privacy) erasure(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodDelete {
		httpx.MethodNotAllowed(w, http.MethodGet, http.MethodDelete)
		return
	}
	who, ok := httpx.Authenticate(w, r, p.Tokens, auth.ScopeAdmin)
	if !ok {
		return
	}
	id := r.PathValue("id")
	if len(id) > 64 {
		httpx.WriteError(w, http.StatusNotFound, "no such erasure")
		return
	}
	var e privacy.Erasure
	var err error
	if r.Method == http.MethodDelete {
		e, err = p.Service.Cancel(r.Context(), id, who.Name)
	} else {
		e, err = p.Service.Get(r.Context(), id)
	}
	switch {
	case errors.Is(err, privacy.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, "no such erasure: "+id)
	case errors.Is(err, privacy.ErrNotCancellable):
		httpx.WriteError(w, http.StatusConflict, err.Error())
	case err != nil:
		p.Log.Error("privacy: reading an erasure failed", "err", err)
		httpx.WriteError(w, http.StatusServiceUnavailable, "the erasure could not be read; try again")
	default:
		httpx.WriteJSON(w, e)
	}
}
