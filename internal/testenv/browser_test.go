package testenv

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestBrowserRecordsCSPViolations proves the harness the web interface's
// tests rely on: the system chromium starts headless, a page loads, and a
// Content-Security-Policy violation (an inline script under script-src
// 'self') reaches ConsoleErrors, while a clean page leaves none.
func TestBrowserRecordsCSPViolations(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self'")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		switch r.URL.Path {
		case "/favicon.ico":
			w.WriteHeader(http.StatusNoContent)
		case "/clean":
			fmt.Fprint(w, `<!doctype html><title>clean</title><p id="ok">ok</p>`)
		case "/inline":
			fmt.Fprint(w, `<!doctype html><title>inline</title><p id="ok">ok</p><script>document.title="ran"</script>`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	tab := Browser(t)
	if err := chromedp.Do(tab.Ctx, chromedp.Navigate(srv.URL+"/clean"), chromedp.WaitVisible(chromedp.ID("ok"))); err != nil {
		t.Fatal(err)
	}
	if errs := tab.ConsoleErrors(); len(errs) != 0 {
		t.Fatalf("clean page: console errors %v", errs)
	}

	if err := chromedp.Do(tab.Ctx, chromedp.Navigate(srv.URL+"/inline"), chromedp.WaitVisible(chromedp.ID("ok"))); err != nil {
		t.Fatal(err)
	}
	title, err := chromedp.Run(tab.Ctx, chromedp.Title())
	if err != nil {
		t.Fatal(err)
	}
	if title == "ran" {
		t.Fatal("the inline script ran despite the CSP")
	}
	Eventually(t, 30*time.Second, func() error {
		for _, m := range tab.ConsoleErrors() {
			if strings.Contains(m.Text, "Content Security Policy") {
				return nil
			}
		}
		return fmt.Errorf("no CSP violation among %v", tab.Console())
	})

	// A second person in the same browser shares no cookies.
	other := tab.Incognito(t)
	if err := chromedp.Do(other.Ctx, chromedp.Navigate(srv.URL+"/clean"), chromedp.WaitVisible(chromedp.ID("ok"))); err != nil {
		t.Fatal(err)
	}
	tab.Screenshot(t, "harness")
}
