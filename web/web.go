package web

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/httpx"
)

//go:embed assets
var assets embed.FS

// Cookie names. Both are scoped to Path=/ui/.
const (
	sessionCookie = "ml_session"
	preCSRFCookie = "ml_signin_csrf" // the sign-in form's double-submit token
)

// maxFormBytes bounds every form body; a larger one answers 413.
const maxFormBytes = 8 << 10

// Portal link lifetimes: POST /v1/portal/sessions' ttl is at most this,
// and this when absent.
const maxPortalTTL = 15 * time.Minute

// Registry is what the interface needs of the catalogue.
type Registry interface {
	Customer(id string) (limits.Customer, bool)
	Catalogue() *limits.Catalogue
}

// Deps are the parts of the process the interface reads from.
type Deps struct {
	Tokens   *auth.Tokens
	Usage    api.UsageReader
	Limits   api.LimitLooker
	Registry Registry
	// ReadLimiter, when set, limits each principal's page and CSV requests
	// as it limits the API's reads (per token name; portal sessions of one
	// customer share "portal:<customer_id>").
	ReadLimiter *api.Limiter
	// TLS: the server serves HTTPS, cookies are then Secure.
	TLS bool
	// Finance serves the finance pages (admin and finance sessions); nil:
	// the process has no store to read billing from, and the pages are not
	// served.
	Finance Finance
	// Privacy serves the privacy pages (admin sessions): the same export,
	// erasure requests and audit trail as the API's /v1/privacy endpoints;
	// nil: not served.
	Privacy *api.Privacy
	// Deliveries reads a customer's recent usage alert deliveries for the
	// plan card; nil: not shown.
	Deliveries DeliveriesFunc
	// AlertsOn reports whether the limits view sends usage alerts at all
	// (limits.View.AlertsOn); nil: taken as on.
	AlertsOn func() bool
	// Health reports the pipeline's state for the overview; nil: not shown.
	Health func() []HealthItem
	Log    *slog.Logger
	// Now is the clock of sessions and codes; nil: time.Now. Tests set it.
	Now func() time.Time
}

// HealthItem is one line of the overview's pipeline health.
type HealthItem struct {
	// ID names the line for tests and links; Name labels it for people.
	ID, Name, Value string
}

// Server is the web interface.
type Server struct {
	cfg      Config
	d        Deps
	sessions *sessions
	codes    *codes
	signIns  *limiter
	pages    *template.Template
	hasChart bool
	csp      string
	secure   bool           // cookies Secure and HSTS: TLS here or at the proxy (ui.public_url https://)
	proxies  []netip.Prefix // ui.trusted_proxies
}

// New builds the interface; cfg should have passed Validate.
func New(cfg Config, d Deps) *Server {
	cfg = cfg.WithDefaults()
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	sub, _ := fs.Sub(assets, "assets/static")
	_, err := fs.Stat(sub, "vendor/uplot/uPlot.iife.min.js")
	s := &Server{
		cfg: cfg, d: d,
		sessions: newSessions(cfg, d.Now),
		codes:    &codes{byVal: map[string]portalCode{}, max: cfg.MaxSessions, now: d.Now},
		signIns:  &limiter{per: cfg.SignInPerMinute, counts: map[string]int{}, now: d.Now},
		pages:    template.Must(template.New("").Funcs(funcs).Funcs(template.FuncMap{"asset": assetURL}).ParseFS(assets, "assets/templates/*.html")),
		hasChart: err == nil,
		secure:   d.TLS || strings.HasPrefix(strings.ToLower(cfg.PublicURL), "https://"),
		proxies:  parseProxies(cfg.TrustedProxies),
	}
	fa := "'none'"
	if len(cfg.FrameAncestors) > 0 {
		fa = strings.Join(cfg.FrameAncestors, " ")
	}
	s.csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
		"form-action 'self'; base-uri 'none'; frame-ancestors " + fa
	return s
}

// Handler serves /ui/ (mount it at "/ui/").
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ui/{$}", s.home)
	mux.HandleFunc("GET /ui/signin", s.signInForm)
	mux.HandleFunc("POST /ui/signin", s.signIn)
	mux.HandleFunc("POST /ui/signout", s.signOut)
	mux.HandleFunc("GET /ui/portal/exchange", s.exchange)
	mux.HandleFunc("GET /ui/overview", s.overview)
	mux.HandleFunc("GET /ui/customers/{customer}", s.customerPage)
	mux.HandleFunc("GET /ui/customers/{customer}/usage.csv", s.usageCSV)
	mux.HandleFunc("GET /ui/customers/{customer}/keys/{key}", s.customerPage)
	mux.HandleFunc("GET /ui/customers/{customer}/keys/{key}/usage.csv", s.usageCSV)
	mux.HandleFunc("GET /ui/customers/{customer}/live.json", s.liveData)
	mux.HandleFunc("GET /ui/customers/{customer}/keys/{key}/live.json", s.liveData)
	mux.HandleFunc("GET /ui/finance", s.financePage)
	mux.HandleFunc("GET /ui/finance/reconciliation.csv", s.financeCSV("reconciliation"))
	mux.HandleFunc("GET /ui/finance/ledger.csv", s.financeCSV("ledger"))
	mux.HandleFunc("GET /ui/finance/invoices.csv", s.financeCSV("invoices"))
	mux.HandleFunc("GET /ui/privacy", s.privacyPage)
	mux.HandleFunc("GET /ui/privacy/erasures/{id}", s.erasurePage)
	mux.HandleFunc("POST /ui/privacy/export", s.exportDownload)
	mux.HandleFunc("POST /ui/privacy/erasures", s.requestErasure)
	mux.HandleFunc("POST /ui/privacy/erasures/{id}/cancel", s.cancelErasure)
	mux.HandleFunc("GET /ui/static/", s.serveStatic)
	mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, http.StatusNotFound, "No such page.")
	})
	return s.headers(compress(mux))
}

// headers sets the security headers on every response.
func (s *Server) headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", s.csp)
		if len(s.cfg.FrameAncestors) == 0 {
			h.Set("X-Frame-Options", "DENY") // frame-ancestors lists the allowed origins otherwise
		}
		h.Set("Referrer-Policy", "same-origin")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		if s.secure {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) cookie(name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/ui/", HttpOnly: true, Secure: s.secure,
		SameSite: http.SameSiteStrictMode, MaxAge: maxAge}
}

// current returns the request's live session.
func (s *Server) current(r *http.Request) (session, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return session{}, false
	}
	return s.sessions.get(c.Value)
}

// signedIn returns the session or sends the browser to sign in.
func (s *Server) signedIn(w http.ResponseWriter, r *http.Request) (session, bool) {
	ss, ok := s.current(r)
	if !ok {
		if _, err := r.Cookie(sessionCookie); err == nil {
			http.SetCookie(w, s.cookie(sessionCookie, "", -1))
		}
		http.Redirect(w, r, "/ui/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
	}
	return ss, ok
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// safeNext keeps a post-sign-in redirect inside /ui/.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/ui/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") || len(next) > 2048 {
		return "/ui/"
	}
	return next
}

func (s *Server) home(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.signedIn(w, r)
	if !ok {
		return
	}
	http.Redirect(w, r, landing(ss.principal), http.StatusSeeOther)
}

func landing(p auth.Principal) string {
	if p.Has(auth.ScopeAdmin) || p.Has(auth.ScopeFinance) {
		return "/ui/overview"
	}
	if own := p.Customers(); len(own) > 0 {
		return "/ui/customers/" + url.PathEscape(own[0])
	}
	return "/ui/signin"
}

func (s *Server) signInForm(w http.ResponseWriter, r *http.Request) {
	if err := httpx.CheckParams(r.URL.Query(), []string{"next"}); err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	s.renderSignIn(w, r, http.StatusOK, safeNext(r.URL.Query().Get("next")), "")
}

func (s *Server) renderSignIn(w http.ResponseWriter, r *http.Request, code int, next, msg string) {
	tok := randomID()
	http.SetCookie(w, s.cookie(preCSRFCookie, tok, 3600))
	s.render(w, code, "signin.html", map[string]any{"CSRF": tok, "Next": next, "Error": msg, "Title": "Sign in"})
}

// form parses a bounded urlencoded body, accepting only the named fields.
func (s *Server) form(w http.ResponseWriter, r *http.Request, fields ...string) (url.Values, bool) {
	if mt, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); strings.TrimSpace(mt) != "application/x-www-form-urlencoded" {
		s.fail(w, r, http.StatusUnsupportedMediaType, "Forms must be sent as application/x-www-form-urlencoded.")
		return nil, false
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.fail(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("The form is larger than %d bytes.", maxFormBytes))
		} else {
			s.fail(w, r, http.StatusBadRequest, "The form could not be read: "+err.Error())
		}
		return nil, false
	}
	if len(r.URL.RawQuery) > 0 {
		s.fail(w, r, http.StatusBadRequest, "This form takes no query parameters.")
		return nil, false
	}
	if err := httpx.CheckParams(r.PostForm, fields); err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return nil, false
	}
	return r.PostForm, true
}

func (s *Server) signIn(w http.ResponseWriter, r *http.Request) {
	if !s.signIns.allow(s.client(r)) {
		w.Header().Set("Retry-After", "60")
		s.fail(w, r, http.StatusTooManyRequests, "Too many sign-in attempts from this address; wait a minute.")
		return
	}
	f, ok := s.form(w, r, "token", "csrf", "next")
	if !ok {
		return
	}
	c, err := r.Cookie(preCSRFCookie)
	if err != nil || !equalSecret(c.Value, f.Get("csrf")) {
		s.fail(w, r, http.StatusForbidden, "The sign-in form expired or was not sent from this site; reload it and try again.")
		return
	}
	next := safeNext(f.Get("next"))
	tok := strings.TrimSpace(f.Get("token"))
	p, ok := s.d.Tokens.Lookup(tok)
	if tok == "" || len(tok) > 512 || !ok {
		s.d.Log.Info("ui sign-in refused", "client", s.client(r))
		s.renderSignIn(w, r, http.StatusUnauthorized, next, "That token is not valid (unknown or expired).")
		return
	}
	if !p.HasAny(auth.ScopeAdmin, auth.ScopeFinance, auth.ScopeCustomer) {
		s.renderSignIn(w, r, http.StatusForbidden, next, "That token may not read usage (it needs scope admin, finance or customer:<id>).")
		return
	}
	s.start(w, p)
	s.d.Log.Info("ui sign-in", "token", p.Name, "client", s.client(r))
	if next == "/ui/" {
		next = landing(p)
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Server) start(w http.ResponseWriter, p auth.Principal) {
	ss := s.sessions.create(p)
	http.SetCookie(w, s.cookie(sessionCookie, ss.id, int(s.cfg.SessionMax/time.Second)))
	http.SetCookie(w, s.cookie(preCSRFCookie, "", -1))
}

func (s *Server) signOut(w http.ResponseWriter, r *http.Request) {
	f, ok := s.form(w, r, "csrf")
	if !ok {
		return
	}
	ss, ok := s.current(r)
	if !ok {
		http.Redirect(w, r, "/ui/signin", http.StatusSeeOther)
		return
	}
	if !equalSecret(ss.csrf, f.Get("csrf")) {
		s.fail(w, r, http.StatusForbidden, "The request did not carry this session's CSRF token.")
		return
	}
	s.sessions.end(ss.id)
	http.SetCookie(w, s.cookie(sessionCookie, "", -1))
	http.Redirect(w, r, "/ui/signin", http.StatusSeeOther)
}

// exchange turns a portal link's code into a session of its customer.
func (s *Server) exchange(w http.ResponseWriter, r *http.Request) {
	if !s.signIns.allow(s.client(r)) {
		w.Header().Set("Retry-After", "60")
		s.fail(w, r, http.StatusTooManyRequests, "Too many attempts from this address; wait a minute.")
		return
	}
	q := r.URL.Query()
	if err := httpx.CheckParams(q, []string{"code"}); err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	code := q.Get("code")
	cust, ok := "", false
	if code != "" && len(code) <= 64 {
		cust, ok = s.codes.exchange(code)
	}
	if !ok {
		s.fail(w, r, http.StatusForbidden, "This portal link is not valid: it was used already, it expired, or it was mistyped. Ask for a new one.")
		return
	}
	p := auth.Principal{Name: "portal:" + cust, Scopes: []auth.Scope{auth.Scope(auth.CustomerScopePrefix + cust)}}
	s.start(w, p)
	s.d.Log.Info("ui portal session", "customer", cust, "client", s.client(r))
	http.Redirect(w, r, "/ui/customers/"+url.PathEscape(cust), http.StatusSeeOther)
}

// PortalRequest is the body of POST /v1/portal/sessions.
type PortalRequest struct {
	CustomerID string `json:"customer_id"`
	// TTL is a Go duration ("10m"); at most and by default 15m.
	TTL string `json:"ttl"`
}

// PortalResponse is its answer.
type PortalResponse struct {
	URL       string    `json:"url"`
	ExpiresAt time.Time `json:"expires_at"`
}

// PortalSessions serves POST /v1/portal/sessions (admin token): a one-time
// link to a session scoped to one customer.
func (s *Server) PortalSessions() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			httpx.MethodNotAllowed(w, http.MethodPost)
			return
		}
		if _, ok := httpx.Authenticate(w, r, s.d.Tokens, auth.ScopeAdmin); !ok {
			return
		}
		if len(r.URL.RawQuery) > 0 {
			httpx.WriteError(w, http.StatusBadRequest, "this endpoint takes no query parameters")
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
			httpx.WriteError(w, http.StatusUnsupportedMediaType, "send application/json")
			return
		}
		var req PortalRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				httpx.WriteError(w, http.StatusRequestEntityTooLarge, "body larger than 4 KiB")
				return
			}
			httpx.WriteError(w, http.StatusBadRequest, "body: "+err.Error()+` (want {"customer_id": "...", "ttl": "15m"})`)
			return
		}
		if dec.More() {
			httpx.WriteError(w, http.StatusBadRequest, "body: one JSON object expected")
			return
		}
		ttl := maxPortalTTL
		if req.TTL != "" {
			d, err := time.ParseDuration(req.TTL)
			if err != nil || d <= 0 || d > maxPortalTTL {
				httpx.WriteError(w, http.StatusBadRequest, fmt.Sprintf(`"ttl": %q must be a duration from 1s to %s (e.g. "10m")`, req.TTL, maxPortalTTL))
				return
			}
			ttl = d
		}
		if req.CustomerID == "" || len(req.CustomerID) > 128 {
			httpx.WriteError(w, http.StatusBadRequest, `"customer_id": required, 1-128 bytes`)
			return
		}
		if _, ok := s.d.Registry.Customer(req.CustomerID); !ok {
			httpx.WriteError(w, http.StatusNotFound, "unknown customer (not in the catalogue)")
			return
		}
		code, exp, err := s.codes.issue(req.CustomerID, ttl)
		if err != nil {
			w.Header().Set("Retry-After", "60")
			httpx.WriteError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(PortalResponse{URL: s.base(r) + "/ui/portal/exchange?code=" + code, ExpiresAt: exp.UTC()})
	})
}

func (s *Server) base(r *http.Request) string {
	if s.cfg.PublicURL != "" {
		return strings.TrimRight(s.cfg.PublicURL, "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func (s *Server) render(w http.ResponseWriter, code int, name string, data map[string]any) {
	data["HasChart"] = s.hasChart
	if ss, ok := data["Session"].(session); ok { // templates see exported fields only
		p := ss.principal
		data["Session"] = map[string]any{"Name": p.Name, "CSRF": ss.csrf, "Customers": p.Customers(),
			"Staff": p.Has(auth.ScopeAdmin) || p.Has(auth.ScopeFinance), "Finance": s.d.Finance != nil && p.HasAny(auth.ScopeAdmin, auth.ScopeFinance),
			"Privacy": s.d.Privacy != nil && p.Has(auth.ScopeAdmin)}
	}
	var b strings.Builder
	if err := s.pages.ExecuteTemplate(&b, name, data); err != nil {
		s.d.Log.Error("ui template", "page", name, "err", err)
		http.Error(w, "page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(b.String()))
}

// fail answers an error page.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, code int, msg string) {
	data := map[string]any{"Title": http.StatusText(code), "Code": code, "Error": msg}
	if ss, ok := s.current(r); ok {
		data["Session"] = ss
	}
	s.render(w, code, "error.html", data)
}
