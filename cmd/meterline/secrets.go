package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/meterline/meterline/auth"
)

// Secrets in the configuration.
//
// A setting is a secret when its struct field carries the tag
// `secret:"true"`. Two things follow from the tag alone, so that a new
// secret cannot be forgotten by either: `meterline config` prints it as
// <redacted>, and it may be read from a file by setting <name>_file (in
// YAML) or METERLINE_<NAME>_FILE (in the environment) to the file's path
// instead of <name> itself. The file's content is the secret, less one
// trailing newline; setting both the secret and its file in one place is an
// error, and so is an empty or unreadable file.

// secretTag marks a secret field.
const secretTag = "secret"

// redacted replaces a secret's value in printed configuration.
const redacted = "<redacted>"

// maxSecretFileBytes caps a secret file: secrets are short, and a path
// pointing at a large file by mistake should fail, not be sent to Stripe.
const maxSecretFileBytes = 64 << 10

// secretField is one secret setting of the configuration.
type secretField struct {
	path []string // YAML keys from the root, e.g. billing, stripe_api_key
}

func (s secretField) name() string { return strings.Join(s.path, ".") }

func (s secretField) env() string {
	return EnvPrefix + strings.ToUpper(strings.Join(s.path, "_"))
}

// secretFields lists every field of Config tagged secret, in field order.
func secretFields() []secretField {
	var out []secretField
	walkSecrets(reflect.TypeOf(Config{}), nil, func(path []string, _ []int) {
		out = append(out, secretField{path: path})
	})
	return out
}

// walkSecrets calls f with the YAML path and field index of every string
// field tagged secret under t, through nested and inline structs.
func walkSecrets(t reflect.Type, prefix []string, f func(path []string, index []int)) {
	walkSecretsIndex(t, prefix, nil, f)
}

func walkSecretsIndex(t reflect.Type, prefix []string, index []int, f func([]string, []int)) {
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag, opts, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		idx := append(append([]int(nil), index...), i)
		if tag == "" && opts == "inline" {
			walkSecretsIndex(sf.Type, prefix, idx, f)
			continue
		}
		if tag == "" || tag == "-" {
			continue
		}
		path := append(append([]string(nil), prefix...), tag)
		if sf.Tag.Get(secretTag) == "true" {
			if sf.Type.Kind() != reflect.String {
				panic(fmt.Sprintf("config: secret field %s is not a string", strings.Join(path, ".")))
			}
			f(path, idx)
			continue
		}
		if sf.Type.Kind() == reflect.Struct && sf.Type != reflect.TypeOf(time.Duration(0)) && sf.Type != reflect.TypeOf(time.Time{}) {
			walkSecretsIndex(sf.Type, path, idx, f)
		}
	}
}

// redactSecrets returns a copy of c with every secret that is set replaced
// by <redacted>. Secret fields are strings in value structs, so the copy
// shares nothing that is changed.
func redactSecrets(c *Config) Config {
	shown := *c
	v := reflect.ValueOf(&shown).Elem()
	walkSecrets(reflect.TypeOf(shown), nil, func(_ []string, index []int) {
		f := v.FieldByIndex(index)
		if f.String() != "" {
			f.SetString(redacted)
		}
	})
	return shown
}

// readSecretFile reads a secret from path: its content less one trailing
// newline (\n or \r\n).
func readSecretFile(setting, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", setting, err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretFileBytes+1))
	if err != nil {
		return "", fmt.Errorf("%s: %w", setting, err)
	}
	if len(data) > maxSecretFileBytes {
		return "", fmt.Errorf("%s: %s is larger than %d bytes; is it the secret file?", setting, path, maxSecretFileBytes)
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
	if s == "" {
		return "", fmt.Errorf("%s: %s is empty", setting, path)
	}
	return s, nil
}

// resolveSecretFilesYAML replaces every <secret>_file key of the YAML
// document data by <secret> with the file's content.
func resolveSecretFilesYAML(data []byte) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
		return data, nil // the decoder reports it
	}
	changed := false
	var errs []error
	for _, s := range secretFields() {
		m := mappingAt(doc.Content[0], s.path[:len(s.path)-1])
		if m == nil {
			continue
		}
		leaf := s.path[len(s.path)-1]
		fileKey := leaf + "_file"
		fi := keyIndex(m, fileKey)
		if fi < 0 {
			continue
		}
		setting := s.name() + "_file"
		if keyIndex(m, leaf) >= 0 {
			errs = append(errs, fmt.Errorf("%s and %s are both set; set one", s.name(), setting))
			continue
		}
		pathNode := m.Content[fi+1]
		if pathNode.Kind != yaml.ScalarNode || pathNode.Value == "" {
			errs = append(errs, fmt.Errorf("%s: want the path of a file", setting))
			continue
		}
		secret, err := readSecretFile(setting, pathNode.Value)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.Content[fi].Value = leaf
		m.Content[fi+1] = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: secret}
		changed = true
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if !changed {
		return data, nil
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	return buf.Bytes(), enc.Close()
}

// secretFilesNote says, on a decoding error of a document whose _file keys
// were resolved (and so re-encoded), that its line numbers are those of the
// re-encoded document.
func secretFilesNote(err error, original, resolved []byte) error {
	if bytes.Equal(original, resolved) {
		return err
	}
	return fmt.Errorf("%w\n(line numbers count in the configuration with its *_file secrets read in, keys in their order)", err)
}

// mappingAt follows keys from the mapping node n; nil if a key is absent.
func mappingAt(n *yaml.Node, keys []string) *yaml.Node {
	for _, k := range keys {
		if n.Kind != yaml.MappingNode {
			return nil
		}
		i := keyIndex(n, k)
		if i < 0 {
			return nil
		}
		n = n.Content[i+1]
	}
	if n.Kind != yaml.MappingNode {
		return nil
	}
	return n
}

// keyIndex is the index of key k in mapping node m, or -1.
func keyIndex(m *yaml.Node, k string) int {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == k {
			return i
		}
	}
	return -1
}

// resolveSecretFilesEnv turns every METERLINE_<SECRET>_FILE variable into
// METERLINE_<SECRET> with the file's content.
func resolveSecretFilesEnv(environ []string) ([]string, error) {
	set := map[string]bool{}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		set[name] = true
	}
	var errs []error
	out := make([]string, 0, len(environ))
	fileVars := map[string]string{}
	for _, s := range secretFields() {
		fileVars[s.env()+"_FILE"] = s.env()
	}
	for _, kv := range environ {
		name, val, _ := strings.Cut(kv, "=")
		target, ok := fileVars[name]
		if !ok {
			out = append(out, kv)
			continue
		}
		if set[target] {
			errs = append(errs, fmt.Errorf("environment: %s and %s are both set; set one", target, name))
			continue
		}
		secret, err := readSecretFile("environment: "+name, val)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, target+"="+secret)
	}
	return out, errors.Join(errs...)
}

// isLoopbackHost reports whether host (a name or an IP, no port) is the
// local machine.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// warnPlainHTTP logs a warning when the API listens without TLS on an
// address other hosts can reach: bearer tokens and usage figures would
// cross the network in clear text (fine behind a TLS-terminating proxy on
// the same host or network, which is why it is a warning).
func warnPlainHTTP(log *slog.Logger, addr string, tlsOn bool) {
	if tlsOn {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if isLoopbackHost(host) {
		return
	}
	log.Warn("HTTP API listening without TLS on a non-loopback address: bearer tokens cross the network in clear text; set http.tls or terminate TLS in front of it",
		"addr", addr)
}

// openTokens builds the API tokens: the inline ones of auth.tokens and
// those of auth.tokens_file, which is then watched and reloaded without a
// restart while the process runs.
func openTokens(cfg *Config, reg prometheus.Registerer, log *slog.Logger, goRun func(string, func(context.Context) error)) (*auth.Tokens, error) {
	tokens, err := auth.New(cfg.Auth.Tokens)
	if err != nil {
		return nil, err
	}
	if f := cfg.Auth.TokensFile; f != "" {
		if err := tokens.LoadFilePath(f); err != nil {
			return nil, err
		}
		reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_auth_tokens_reloads_total",
			Help: "Reloads of auth.tokens_file by result (success, error); on error the tokens in force stay.",
		}, []string{"result"})
		reg.MustRegister(reloads)
		goRun("tokens file watcher", func(ctx context.Context) error {
			tokens.WatchFile(ctx, f, cfg.Auth.ReloadEvery, log, func(r string) { reloads.WithLabelValues(r).Inc() })
			return nil
		})
	}
	if tokens.Len() == 0 {
		log.Warn("no API tokens configured: every authenticated endpoint answers 401 (see `meterline token new`)")
	}
	return tokens, nil
}
