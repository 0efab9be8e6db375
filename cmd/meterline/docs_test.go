package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/meterline/meterline/internal/testenv"
)

// configKeys returns the dotted paths of the leaves of a YAML mapping.
func configKeys(prefix string, n *yaml.Node, out *[]string) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			configKeys(prefix, c, out)
		}
		return
	}
	if n.Kind != yaml.MappingNode {
		*out = append(*out, prefix)
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := n.Content[i].Value
		if prefix != "" {
			key = prefix + "." + key
		}
		configKeys(key, n.Content[i+1], out)
	}
}

// documentedKeys returns the settings docs/configuration.md names in its
// tables' first column: `a.b`, `a.b`, `a.c` lists, `a.{b,c}` groups and
// `a.*` wildcards.
func documentedKeys(doc string) (exact map[string]bool, prefixes []string) {
	exact = map[string]bool{}
	code := regexp.MustCompile("`([^`]+)`")
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first := strings.SplitN(line[1:], "|", 2)[0]
		for _, m := range code.FindAllStringSubmatch(first, -1) {
			k := m[1]
			switch {
			case strings.HasSuffix(k, ".*"):
				prefixes = append(prefixes, strings.TrimSuffix(k, "*"))
			case strings.Contains(k, "{"):
				i, j := strings.Index(k, "{"), strings.Index(k, "}")
				if j < i {
					continue
				}
				for _, leaf := range strings.Split(k[i+1:j], ",") {
					exact[k[:i]+strings.TrimSpace(leaf)] = true
				}
			default:
				exact[k] = true
			}
		}
	}
	return exact, prefixes
}

// TestConfigurationReferenceNamesEverySetting keeps docs/configuration.md
// in step with the configuration: every setting `meterline config` prints
// must be named in the reference's tables, and every setting named there
// must exist.
func TestConfigurationReferenceNamesEverySetting(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := runConfig(nil, &stdout, &stderr); err != nil {
		t.Fatalf("meterline config: %v\n%s", err, stderr.String())
	}
	var root yaml.Node
	if err := yaml.Unmarshal(stdout.Bytes(), &root); err != nil {
		t.Fatal(err)
	}
	var keys []string
	configKeys("", &root, &keys)
	if len(keys) < 50 {
		t.Fatalf("only %d settings printed: %v", len(keys), keys)
	}
	doc, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	exact, prefixes := documentedKeys(string(doc))
	known := map[string]bool{}
	for _, k := range keys {
		known[k] = true
		if exact[k] {
			continue
		}
		covered := false
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) {
				covered = true
			}
		}
		if !covered {
			t.Errorf("setting %s is not in docs/configuration.md", k)
		}
	}
	var unknown []string
	for k := range exact {
		// Entries inside lists (auth.tokens[].expires) are not printed as
		// leaves; their list is.
		if strings.Contains(k, "[]") {
			if !known[k[:strings.Index(k, "[]")]] {
				unknown = append(unknown, k)
			}
			continue
		}
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		t.Errorf("docs/configuration.md names %s, which is not a setting", k)
	}
}
