package httplimit

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsStayLight: like httpmeter, the package must not bring Kafka,
// the ClickHouse engine or the server into the service that imports it.
func TestImportsStayLight(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	own := map[string]bool{
		"github.com/meterline/meterline/gateway/httplimit": true,
		"github.com/meterline/meterline/gateway/httpmeter": true,
		"github.com/meterline/meterline/schemas":           true,
	}
	denied := []string{
		"github.com/segmentio/", "github.com/twmb/", "github.com/ebitengine/purego", "github.com/ClickHouse/",
		"github.com/chdb-io/", "github.com/stripe/", "github.com/chromedp/", "gopkg.in/yaml", "github.com/shopspring/",
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/meterline/meterline") && !own[p] {
			t.Errorf("httplimit depends on Meterline's %s", p)
		}
		for _, d := range denied {
			if strings.HasPrefix(p, d) {
				t.Errorf("httplimit depends on %s", p)
			}
		}
	}
}
