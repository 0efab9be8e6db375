package httpmeter

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsStayLight: the package must not bring Kafka, the ClickHouse
// engine, the server or any Meterline package other than the event contract
// into the binary of the service that imports it.
func TestImportsStayLight(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	// Of Meterline, only these; of the rest, none of the server's heavy
	// dependencies (the Prometheus client's own are fine).
	own := map[string]bool{
		"github.com/meterline/meterline/gateway/httpmeter": true,
		"github.com/meterline/meterline/schemas":           true,
	}
	denied := []string{
		"github.com/segmentio/", "github.com/twmb/", "github.com/ebitengine/purego", "github.com/ClickHouse/",
		"github.com/chdb-io/", "github.com/stripe/", "github.com/chromedp/", "gopkg.in/yaml",
		"github.com/shopspring/",
	}
	var deps []string
	for _, p := range strings.Fields(string(out)) {
		deps = append(deps, p)
		if strings.HasPrefix(p, "github.com/meterline/meterline") && !own[p] {
			t.Errorf("httpmeter depends on Meterline's %s", p)
		}
		for _, d := range denied {
			if strings.HasPrefix(p, d) {
				t.Errorf("httpmeter depends on %s", p)
			}
		}
	}
	if !strings.Contains(string(out), "github.com/meterline/meterline/schemas") {
		t.Errorf("the event contract is not among the dependencies: %v", deps)
	}
}
