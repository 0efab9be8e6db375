package testenv

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Env variables of the browser tests.
const (
	// EnvChromium names the headless browser (Debian's /usr/bin/chromium),
	// set by deploy/test.sh after deploy/install.sh browser.
	EnvChromium = "METERLINE_TEST_CHROMIUM"
	// EnvUIScreenshots names a folder where the browser tests write a PNG of
	// each view; unset (the default), they write none.
	EnvUIScreenshots = "METERLINE_TEST_UI_SCREENSHOTS"
)

// BrowserFlags are the command-line flags of the test browser: headless, no
// sandbox (tests may run as root), and nothing that talks to the network on
// its own (no QUIC, no background updates, no sync).
var BrowserFlags = []string{
	"headless", "no-sandbox", "disable-gpu", "disable-quic", "no-first-run",
	"disable-background-networking", "disable-component-update", "disable-sync",
}

// Tab is one browser tab of a test, with what its pages wrote to the
// console.
type Tab struct {
	// Ctx is the chromedp context of the tab: pass it to chromedp.Do and
	// chromedp.Run.
	Ctx context.Context

	mu      sync.Mutex
	console []chromedp.ConsoleMessage
}

// Browser starts the system chromium headless with a fresh profile (a
// t.TempDir) and a 1280×800 viewport, and returns its first tab. The browser
// stops when the test ends. Without METERLINE_TEST_CHROMIUM the test is
// skipped (failed under CI).
func Browser(t testing.TB) *Tab {
	t.Helper()
	path := Require(t, EnvChromium)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	}
	for _, f := range BrowserFlags {
		opts = append(opts, chromedp.Flag(f, true))
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	return newTab(t, ctx)
}

// Incognito opens a tab in a new browser context of the same browser: it
// shares no cookies or storage with the other tabs, so a second person (a
// customer beside an operator) can be signed in at the same time.
func (b *Tab) Incognito(t testing.TB) *Tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.Ctx, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	return newTab(t, ctx)
}

func newTab(t testing.TB, ctx context.Context) *Tab {
	t.Helper()
	tab := &Tab{Ctx: ctx}
	// Start the browser and the tab, turn the browser log on (it carries the
	// CSP violations and failed loads), then record every console message.
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, log.Enable, cdp.Empty{})
		return err
	}), chromedp.EmulateViewport(1280, 800))
	if err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	if err := chromedp.Listen(ctx, tab.record); err != nil {
		t.Fatalf("listening to the console: %v", err)
	}
	return tab
}

// record keeps a console message; it runs on chromedp's reading goroutine,
// so it only appends.
func (b *Tab) record(ev any) {
	var m chromedp.ConsoleMessage
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		m.Type = chromedp.ConsoleType(ev.Type)
		for _, a := range ev.Args {
			if m.Text != "" {
				m.Text += " "
			}
			if len(a.Value) > 0 {
				m.Text += string(a.Value)
			} else {
				m.Text += a.Description
			}
		}
	case *runtime.EventExceptionThrown:
		m.Type = chromedp.ConsoleException
		if d := ev.ExceptionDetails; d != nil {
			m.Text = d.Text
			m.URL = d.URL
			if d.Exception != nil {
				m.Text += " " + d.Exception.Description
			}
		}
	case *log.EventEntryAdded:
		if ev.Entry == nil {
			return
		}
		m.Type = chromedp.ConsoleType(ev.Entry.Level)
		m.Text = ev.Entry.Text
		m.URL = ev.Entry.URL
		m.Source = string(ev.Entry.Source)
	default:
		return
	}
	b.mu.Lock()
	b.console = append(b.console, m)
	b.mu.Unlock()
}

// Console returns every console message recorded so far.
func (b *Tab) Console() []chromedp.ConsoleMessage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]chromedp.ConsoleMessage(nil), b.console...)
}

// ConsoleErrors returns the errors and uncaught exceptions recorded so far:
// Content-Security-Policy violations, failed loads, script errors.
func (b *Tab) ConsoleErrors() []chromedp.ConsoleMessage {
	var errs []chromedp.ConsoleMessage
	for _, m := range b.Console() {
		if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
			errs = append(errs, m)
		}
	}
	return errs
}

var screenshotName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// Screenshot writes a PNG of the tab's viewport to
// $METERLINE_TEST_UI_SCREENSHOTS/<name>.png when that folder is set, and does
// nothing otherwise, so that tests do not write into the tree by default.
func (b *Tab) Screenshot(t testing.TB, name string) {
	t.Helper()
	dir := os.Getenv(EnvUIScreenshots)
	if dir == "" {
		return
	}
	if !screenshotName.MatchString(name) {
		t.Fatalf("screenshot name %q: want lower-case letters, digits and dashes", name)
	}
	png, err := chromedp.Run(b.Ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}
