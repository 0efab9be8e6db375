package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestClusterScriptRefusesBadInput runs deploy/kafka-cluster.sh with
// malformed and hostile arguments: each run fails with a message naming
// the problem, and writes no cluster (no configuration, no data).
func TestClusterScriptRefusesBadInput(t *testing.T) {
	Require(t, EnvKafkaLibs) // start installs the jars first when they are missing
	p := []string{FreePort(t), FreePort(t), FreePort(t), FreePort(t), FreePort(t), FreePort(t)}
	ports := strings.Join(p[:3], ",")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "usage: deploy/kafka-cluster.sh start|stop|kill|status"},
		{"unknown command", []string{"destroy"}, "usage:"},
		{"unknown flag", []string{"start", "--force", "yes"}, "unknown flag --force"},
		{"flag without value", []string{"start", "--ports"}, "flag --ports needs a value"},
		{"two ports", []string{"start", "--ports", p[0] + "," + p[1]}, "--ports: want 3 comma-separated ports"},
		{"not a port", []string{"start", "--ports", p[0] + "," + p[1] + ",http"}, `"http" is not a TCP port`},
		{"port out of range", []string{"start", "--ports", p[0] + "," + p[1] + ",70000"}, `"70000" is not a TCP port`},
		{"shell in a port", []string{"start", "--ports", p[0] + "," + p[1] + ",$(touch pwned)"}, "is not a TCP port"},
		{"same port twice", []string{"start", "--ports", p[0] + "," + p[0] + "," + p[1]}, "the ports must differ"},
		{"controller port shared", []string{"start", "--ports", ports, "--controller-ports", p[0] + "," + p[4] + "," + p[5]}, "must not share a port"},
		{"bad controller ports", []string{"start", "--ports", ports, "--controller-ports", "1,2"}, "--controller-ports: want 3"},
		{"node out of range", []string{"stop", "--node", "4"}, "--node: 4 is not a node of the cluster (1, 2 or 3)"},
		{"node not a number", []string{"kill", "--node", "1;reboot"}, "is not a node of the cluster"},
		{"kill without node", []string{"kill"}, "kill needs --node N"},
		{"one node of no cluster", []string{"start", "--node", "2"}, "holds no cluster yet"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cluster")
			cmd := exec.Command(filepath.Join(RepoRoot(), "deploy", "kafka-cluster.sh"), append(tc.args, "--dir", dir)...)
			if len(tc.args) == 0 || tc.args[len(tc.args)-1] == "--ports" {
				// The flag's value would be --dir: keep the arguments as given.
				cmd = exec.Command(filepath.Join(RepoRoot(), "deploy", "kafka-cluster.sh"), tc.args...)
				cmd.Env = append(os.Environ(), "METERLINE_RUN="+filepath.Dir(dir))
			}
			cmd.Dir = t.TempDir()
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("exit 0, want an error; output:\n%s", out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("output does not say %q:\n%s", tc.want, out)
			}
			if _, err := os.Stat(filepath.Join(dir, "bootstrap")); err == nil {
				t.Fatalf("a cluster was configured in %s", dir)
			}
			if _, err := os.Stat(filepath.Join(dir, "node1")); err == nil {
				t.Fatalf("node data was written in %s", dir)
			}
			if _, err := os.Stat(filepath.Join(cmd.Dir, "pwned")); err == nil {
				t.Fatal("a port value ran as a command")
			}
		})
	}
}
