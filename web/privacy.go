package web

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/privacy"
)

// maxListedErasures bounds the erasures the privacy page lists.
const maxListedErasures = 200

// admin returns the session of an admin; anyone else gets "not found", as
// for a page that does not exist.
func (s *Server) admin(w http.ResponseWriter, r *http.Request) (session, bool) {
	ss, ok := s.signedIn(w, r)
	if !ok {
		return ss, false
	}
	if !ss.principal.Has(auth.ScopeAdmin) || s.d.Privacy == nil {
		s.fail(w, r, http.StatusNotFound, "No such page.")
		return ss, false
	}
	return ss, true
}

// adminForm reads a state-changing form of an admin session: the session's
// CSRF token is required, then only the named fields, each at most once.
func (s *Server) adminForm(w http.ResponseWriter, r *http.Request, fields ...string) (session, url.Values, bool) {
	ss, ok := s.current(r)
	if !ok {
		// A form posted without a live session: sign in again (a POST is
		// not replayed after it).
		http.Redirect(w, r, "/ui/signin?next=/ui/privacy", http.StatusSeeOther)
		return ss, nil, false
	}
	if !ss.principal.Has(auth.ScopeAdmin) || s.d.Privacy == nil {
		s.fail(w, r, http.StatusNotFound, "No such page.")
		return ss, nil, false
	}
	f, ok := s.form(w, r, append([]string{"csrf"}, fields...)...)
	if !ok {
		return ss, nil, false
	}
	if !equalSecret(ss.csrf, f.Get("csrf")) {
		s.fail(w, r, http.StatusForbidden, "The request did not carry this session's CSRF token; reload the page and try again.")
		return ss, nil, false
	}
	return ss, f, true
}

// privacyPage serves /ui/privacy: the erasure requests, newest first, with
// their status and counts, and the forms to download an export and to
// request an erasure.
func (s *Server) privacyPage(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.admin(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	if err := httpx.CheckParams(q, []string{"customer_id"}); err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	customer := q.Get("customer_id")
	if err := privacy.CheckID("customer_id", customer); err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	s.renderPrivacy(w, r, ss, http.StatusOK, customer, "")
}

func (s *Server) renderPrivacy(w http.ResponseWriter, r *http.Request, ss session, code int, customer, formError string) {
	r, release, ok := s.reading(w, r, ss.principal)
	if !ok {
		return
	}
	defer release()
	data := map[string]any{"Session": ss, "Title": "Privacy", "Customer": customer, "FormError": formError,
		"Formats": []privacy.Format{privacy.NDJSON, privacy.ZipCSV}}
	es, err := s.d.Privacy.Service.List(r.Context(), customer)
	if err != nil {
		data["Error"] = "Erasures could not be read: " + err.Error()
		s.render(w, queryStatus(err), "privacy.html", data)
		return
	}
	if len(es) > maxListedErasures {
		data["Cut"], data["Total"] = maxListedErasures, len(es)
		es = es[:maxListedErasures]
	}
	data["Erasures"] = es
	s.render(w, code, "privacy.html", data)
}

// erasurePage serves /ui/privacy/erasures/{id}.
func (s *Server) erasurePage(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.admin(w, r)
	if !ok {
		return
	}
	if err := httpx.CheckParams(r.URL.Query(), nil); err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	id := r.PathValue("id")
	if id == "" || len(id) > 64 {
		s.fail(w, r, http.StatusNotFound, "No such erasure.")
		return
	}
	r, release, ok := s.reading(w, r, ss.principal)
	if !ok {
		return
	}
	defer release()
	e, err := s.d.Privacy.Service.Get(r.Context(), id)
	switch {
	case errors.Is(err, privacy.ErrNotFound):
		s.fail(w, r, http.StatusNotFound, "No such erasure.")
	case err != nil:
		s.fail(w, r, queryStatus(err), "The erasure could not be read: "+err.Error())
	default:
		s.render(w, http.StatusOK, "erasure.html", map[string]any{"Session": ss, "Title": "Erasure " + e.ID, "E": e,
			"Cancellable": e.Status == privacy.StatusScheduled})
	}
}

// exportDownload serves the export form: the same export, headers and
// audit record as GET /v1/privacy/export, the session's token name as the
// actor.
func (s *Server) exportDownload(w http.ResponseWriter, r *http.Request) {
	ss, f, ok := s.adminForm(w, r, "customer_id", "api_key_id", "format")
	if !ok {
		return
	}
	sub := privacy.Subject{CustomerID: strings.TrimSpace(f.Get("customer_id")), APIKeyID: strings.TrimSpace(f.Get("api_key_id"))}
	format := privacy.NDJSON
	err := sub.Validate()
	if err == nil && f.Get("format") != "" {
		format, err = privacy.ParseFormat(f.Get("format"))
	}
	if err != nil {
		s.renderPrivacy(w, r, ss, http.StatusBadRequest, "", "Export: "+err.Error())
		return
	}
	r, release, ok := s.reading(w, r, ss.principal)
	if !ok {
		return
	}
	defer release()
	s.d.Privacy.WriteExport(w, r, ss.principal.Name, sub, format)
}

// requestErasure serves the erasure form: the customer id typed twice,
// then recorded as POST /v1/privacy/erasures records it.
func (s *Server) requestErasure(w http.ResponseWriter, r *http.Request) {
	ss, f, ok := s.adminForm(w, r, "customer_id", "confirm", "reason", "account_deletion")
	if !ok {
		return
	}
	c := strings.TrimSpace(f.Get("customer_id"))
	switch {
	case c == "":
		s.renderPrivacy(w, r, ss, http.StatusBadRequest, "", "Erasure: give the customer id.")
		return
	case f.Get("confirm") != c:
		s.renderPrivacy(w, r, ss, http.StatusBadRequest, "", "Erasure: the confirmation does not repeat the customer id exactly; nothing was requested.")
		return
	}
	del := false
	switch f.Get("account_deletion") {
	case "":
	case "on", "1", "true":
		del = true
	default:
		s.renderPrivacy(w, r, ss, http.StatusBadRequest, "", "Erasure: account_deletion must be on or absent.")
		return
	}
	e, err := s.d.Privacy.RequestErasure(r.Context(), ss.principal.Name, c, f.Get("reason"), del)
	var invalid *api.InvalidRequestError
	switch {
	case errors.As(err, &invalid):
		s.renderPrivacy(w, r, ss, http.StatusBadRequest, "", "Erasure: "+err.Error())
		return
	case err != nil:
		s.fail(w, r, http.StatusServiceUnavailable, "The request could not be recorded; try again.")
		return
	}
	s.d.Log.Info("ui erasure requested", "by", ss.principal.Name, "customer", c, "erasure", e.ID)
	http.Redirect(w, r, "/ui/privacy/erasures/"+url.PathEscape(e.ID), http.StatusSeeOther)
}

// cancelErasure cancels a scheduled erasure as DELETE
// /v1/privacy/erasures/{id} does.
func (s *Server) cancelErasure(w http.ResponseWriter, r *http.Request) {
	ss, _, ok := s.adminForm(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	if id == "" || len(id) > 64 {
		s.fail(w, r, http.StatusNotFound, "No such erasure.")
		return
	}
	_, err := s.d.Privacy.Service.Cancel(r.Context(), id, ss.principal.Name)
	switch {
	case errors.Is(err, privacy.ErrNotFound):
		s.fail(w, r, http.StatusNotFound, "No such erasure.")
	case errors.Is(err, privacy.ErrNotCancellable):
		s.fail(w, r, http.StatusConflict, err.Error())
	case err != nil:
		s.fail(w, r, http.StatusServiceUnavailable, "The erasure could not be cancelled; try again.")
	default:
		http.Redirect(w, r, "/ui/privacy/erasures/"+url.PathEscape(id), http.StatusSeeOther)
	}
}
