package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/billing"
	"github.com/meterline/meterline/internal/testenv"
)

// The chart's tools, installed by deploy/install.sh helm and exported by
// deploy/test.sh: Helm, kubeconform, and the Kubernetes JSON schemas
// (kubernetes-validate's, from PyPI) with the ServiceMonitor CRD
// (prometheus-operator's Go module).
const (
	envHelm        = "METERLINE_TEST_HELM"
	envKubeconform = "METERLINE_TEST_KUBECONFORM"
	envK8sSchemas  = "METERLINE_TEST_K8S_SCHEMAS"
)

var (
	chartDir = filepath.Join("..", "..", "deploy", "helm", "meterline")
	// The Kubernetes versions the rendered objects are validated against:
	// the oldest the chart supports (Chart.yaml kubeVersion) and the newest
	// the schema package has.
	k8sVersions = []string{"1.29.0", "1.37.0"}
	// The value sets of ci/: the defaults with the two required addresses,
	// an external Kafka over SASL_SSL with secrets from Secrets of the
	// user's, and everything enabled.
	chartValueSets = []string{"default-values.yaml", "external-kafka-sasl-tls-values.yaml", "full-values.yaml"}
)

// k8sObject is one rendered object, decoded.
type k8sObject map[string]any

func (o k8sObject) kind() string { s, _ := o["kind"].(string); return s }
func (o k8sObject) name() string { s, _ := dig(o, "metadata", "name").(string); return s }
func (o k8sObject) String() string {
	return o.kind() + "/" + o.name()
}

// dig follows map keys (strings) and list indexes (ints) through decoded YAML.
func dig(v any, path ...any) any {
	if o, ok := v.(k8sObject); ok {
		v = map[string]any(o)
	}
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func list(v any) []any { l, _ := v.([]any); return l }

func helmTool(t *testing.T) string {
	t.Helper()
	return testenv.Require(t, envHelm)
}

// helmTemplate renders the chart with the given values files and --set
// arguments; it returns the output and helm's error text.
func helmTemplate(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helmTool(t), append([]string{"template", "r", chartDir}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.String(), nil
}

func decodeObjects(t *testing.T, manifest string) []k8sObject {
	t.Helper()
	var objs []k8sObject
	dec := yaml.NewDecoder(strings.NewReader(manifest))
	for {
		var o map[string]any // not k8sObject: the decoder would give nested maps that type too
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("rendered manifest is not YAML: %v", err)
		}
		if o != nil {
			objs = append(objs, k8sObject(o))
		}
	}
	return objs
}

func TestHelmChartLints(t *testing.T) {
	helm := helmTool(t)
	for _, vs := range chartValueSets {
		out, err := exec.Command(helm, "lint", "--strict", chartDir, "-f", filepath.Join(chartDir, "ci", vs)).CombinedOutput()
		if err != nil {
			t.Errorf("helm lint --strict -f ci/%s: %v\n%s", vs, err, out)
		}
	}
}

// TestHelmChartRendersValidObjects renders each value set, validates every
// object against the Kubernetes schemas with kubeconform, checks the
// chart's promises on the objects, and loads the configuration every pod
// would read (with the files it mounts) with meterline's own loader.
func TestHelmChartRendersValidObjects(t *testing.T) {
	helmTool(t)
	kubeconform := testenv.Require(t, envKubeconform)
	schemas := testenv.Require(t, envK8sSchemas)
	locations := kubeconformLocations(t, schemas)
	for _, vs := range chartValueSets {
		t.Run(strings.TrimSuffix(vs, "-values.yaml"), func(t *testing.T) {
			manifest, err := helmTemplate(t, "-f", filepath.Join(chartDir, "ci", vs))
			if err != nil {
				t.Fatalf("helm template: %v", err)
			}
			for _, v := range k8sVersions {
				if out, err := runKubeconform(kubeconform, v, locations, manifest); err != nil {
					t.Errorf("kubeconform (Kubernetes %s): %v\n%s", v, err, out)
				}
			}
			objs := decodeObjects(t, manifest)
			checkChartPromises(t, vs, objs)
			checkPodConfigs(t, objs)
		})
	}
}

// kubeconformLocations returns the -schema-location arguments: the
// Kubernetes schemas in strict form, and the ServiceMonitor's, made from
// the prometheus-operator CRD into a temporary directory.
func kubeconformLocations(t *testing.T, schemas string) []string {
	t.Helper()
	crd, err := os.ReadFile(filepath.Join(schemas, "monitoring.coreos.com_servicemonitors.yaml"))
	if err != nil {
		t.Fatalf("%s: %v (run deploy/install.sh helm)", envK8sSchemas, err)
	}
	var doc struct {
		Spec struct {
			Versions []struct {
				Name   string `yaml:"name"`
				Schema struct {
					OpenAPIV3Schema map[string]any `yaml:"openAPIV3Schema"`
				} `yaml:"schema"`
			} `yaml:"versions"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(crd, &doc); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, v := range doc.Spec.Versions {
		s := strictSchema(v.Schema.OpenAPIV3Schema)
		data, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "servicemonitor-monitoring-"+v.Name+".json"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return []string{
		filepath.Join(schemas, "{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}", "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
		filepath.Join(dir, "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
	}
}

// strictSchema refuses unknown fields in every object of an OpenAPI v3
// schema that lists its properties, as kubeconform's strict schemas do.
func strictSchema(v any) any {
	switch s := v.(type) {
	case map[string]any:
		for k, x := range s {
			s[k] = strictSchema(x)
		}
		if _, ok := s["properties"]; ok {
			if _, set := s["additionalProperties"]; !set {
				if pu, _ := s["x-kubernetes-preserve-unknown-fields"].(bool); !pu {
					s["additionalProperties"] = false
				}
			}
		}
		return s
	case []any:
		for i, x := range s {
			s[i] = strictSchema(x)
		}
	}
	return v
}

func runKubeconform(bin, version string, locations []string, manifest string) ([]byte, error) {
	args := []string{"-strict", "-summary", "-output", "text", "-kubernetes-version", version}
	for _, l := range locations {
		args = append(args, "-schema-location", l)
	}
	cmd := exec.Command(bin, append(args, "-")...)
	cmd.Stdin = strings.NewReader(manifest)
	out, err := cmd.CombinedOutput()
	if err == nil && !bytes.Contains(out, []byte("Invalid: 0, Errors: 0, Skipped: 0")) {
		err = errors.New("not every object was validated")
	}
	return out, err
}

// TestKubeconformRefusesBrokenObjects makes sure the validation can fail:
// an unknown field, a wrong type and an unknown ServiceMonitor field are
// each refused.
func TestKubeconformRefusesBrokenObjects(t *testing.T) {
	helmTool(t)
	kubeconform := testenv.Require(t, envKubeconform)
	locations := kubeconformLocations(t, testenv.Require(t, envK8sSchemas))
	manifest, err := helmTemplate(t, "-f", filepath.Join(chartDir, "ci", "full-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, old, new string }{
		{"unknown field", "terminationGracePeriodSeconds: 60", "terminationGracePeriodSecond: 60"},
		{"wrong type", "replicas: 8", "replicas: eight"},
		{"unknown ServiceMonitor field", "jobLabel:", "jobLabels:"},
	} {
		broken := strings.Replace(manifest, c.old, c.new, 1)
		if broken == manifest {
			t.Fatalf("%s: %q not in the manifest", c.name, c.old)
		}
		if out, err := runKubeconform(kubeconform, k8sVersions[1], locations, broken); err == nil {
			t.Errorf("%s: kubeconform accepted it:\n%s", c.name, out)
		}
	}
}

// checkChartPromises asserts what the chart's README promises on every
// rendered object.
func checkChartPromises(t *testing.T, valueSet string, objs []k8sObject) {
	t.Helper()
	byKind := map[string][]k8sObject{}
	for _, o := range objs {
		byKind[o.kind()] = append(byKind[o.kind()], o)
	}
	deployments := map[string]k8sObject{} // by role
	for _, d := range byKind["Deployment"] {
		role, _ := dig(d, "spec", "template", "metadata", "labels", "app.kubernetes.io/component").(string)
		deployments[role] = d
	}
	wantRoles := []string{"aggregator", "collector", "query", "sink"}
	if valueSet == "full-values.yaml" {
		wantRoles = append(wantRoles, "billing")
		slices.Sort(wantRoles)
	}
	var roles []string
	for r := range deployments {
		roles = append(roles, r)
	}
	slices.Sort(roles)
	if !slices.Equal(roles, wantRoles) {
		t.Errorf("Deployments for roles %v, want %v", roles, wantRoles)
	}

	// Every pod: non-root, read-only root file system, no privilege
	// escalation, no capabilities, seccomp RuntimeDefault, no service
	// account token, no secret in the environment.
	pods := map[string]map[string]any{}
	for role, d := range deployments {
		pods["Deployment "+role] = dig(d, "spec", "template", "spec").(map[string]any)
	}
	for _, j := range byKind["Job"] {
		pods["Job "+j.name()] = dig(j, "spec", "template", "spec").(map[string]any)
	}
	if len(byKind["Job"]) != 1 {
		t.Errorf("%d Jobs, want the migration Job", len(byKind["Job"]))
	}
	for what, spec := range pods {
		if dig(spec, "securityContext", "runAsNonRoot") != true {
			t.Errorf("%s: pod securityContext.runAsNonRoot is not true", what)
		}
		if dig(spec, "securityContext", "seccompProfile", "type") != "RuntimeDefault" {
			t.Errorf("%s: pod seccompProfile is not RuntimeDefault", what)
		}
		if dig(spec, "automountServiceAccountToken") != false {
			t.Errorf("%s: the service account token is mounted", what)
		}
		if uid, _ := dig(spec, "securityContext", "runAsUser").(int); uid == 0 {
			t.Errorf("%s: runAsUser is %v", what, dig(spec, "securityContext", "runAsUser"))
		}
		for _, kind := range []string{"containers", "initContainers"} {
			for _, c := range list(spec[kind]) {
				name := fmt.Sprintf("%s container %v", what, dig(c, "name"))
				sc := dig(c, "securityContext")
				for _, want := range []struct {
					path []any
					val  any
				}{
					{[]any{"runAsNonRoot"}, true},
					{[]any{"readOnlyRootFilesystem"}, true},
					{[]any{"allowPrivilegeEscalation"}, false},
					{[]any{"privileged"}, false},
					{[]any{"seccompProfile", "type"}, "RuntimeDefault"},
				} {
					if got := dig(sc, want.path...); got != want.val {
						t.Errorf("%s: securityContext %v is %v, want %v", name, want.path, got, want.val)
					}
				}
				if !slices.Contains(list(dig(sc, "capabilities", "drop")), any("ALL")) {
					t.Errorf("%s: capabilities do not drop ALL", name)
				}
				if dig(c, "resources", "requests", "memory") == nil || dig(c, "resources", "limits", "memory") == nil {
					t.Errorf("%s: no memory request or limit", name)
				}
				for _, e := range list(dig(c, "env")) {
					if dig(e, "valueFrom", "secretKeyRef") != nil {
						t.Errorf("%s: env %v comes from a Secret; secrets must be files", name, dig(e, "name"))
					}
				}
				if dig(c, "envFrom") != nil {
					t.Errorf("%s: envFrom is set", name)
				}
				mounts := map[string]bool{}
				for _, m := range list(dig(c, "volumeMounts")) {
					mounts[fmt.Sprint(dig(m, "mountPath"))] = dig(m, "readOnly") == true
				}
				if ro, ok := mounts["/etc/meterline/secrets"]; !ok || !ro {
					t.Errorf("%s: the secrets directory is not mounted read-only (%v)", name, mounts)
				}
				if _, ok := mounts["/tmp"]; !ok {
					t.Errorf("%s: no writable /tmp on a read-only root", name)
				}
			}
		}
	}

	for role, d := range deployments {
		c := dig(d, "spec", "template", "spec", "containers", 0)
		if got := dig(c, "livenessProbe", "httpGet", "path"); got != "/healthz" {
			t.Errorf("%s: liveness probe path %v, want /healthz", role, got)
		}
		if got := dig(c, "readinessProbe", "httpGet", "path"); got != "/readyz" {
			t.Errorf("%s: readiness probe path %v, want /readyz", role, got)
		}
		if !slices.Contains(list(dig(c, "args")), any("--roles="+role)) {
			t.Errorf("%s: args %v do not run the role alone", role, dig(c, "args"))
		}
		if role == "aggregator" || role == "billing" {
			if n, _ := dig(d, "spec", "replicas").(int); n > 1 {
				t.Errorf("%s: %d replicas of a role without a lease", role, n)
			}
			if got := dig(d, "spec", "strategy", "type"); got != "Recreate" {
				t.Errorf("%s: strategy %v, want Recreate (never two at once)", role, got)
			}
		}
		if role == "sink" {
			// The partitions from the rendered configuration.
			n, _ := dig(d, "spec", "replicas").(int)
			if p := renderedPartitions(t, objs); n > p {
				t.Errorf("sink: %d replicas for %d partitions", n, p)
			}
		}
	}

	// Services, PDBs and NetworkPolicies select the pods of a Deployment;
	// the HPA scales the collector, whose Deployment then sets no replicas.
	selects := func(sel map[string]any) string {
		for role, d := range deployments {
			labels := dig(d, "spec", "template", "metadata", "labels").(map[string]any)
			ok := len(sel) > 0
			for k, v := range sel {
				ok = ok && labels[k] == v
			}
			if ok {
				return role
			}
		}
		return ""
	}
	for _, s := range byKind["Service"] {
		if selects(dig(s, "spec", "selector").(map[string]any)) == "" {
			t.Errorf("%s selects no Deployment's pods", s)
		}
		if dig(s, "spec", "ports", 0, "targetPort") != "http" {
			t.Errorf("%s: targetPort is not the pods' http port", s)
		}
	}
	if len(byKind["Service"]) != len(deployments) {
		t.Errorf("%d Services for %d Deployments", len(byKind["Service"]), len(deployments))
	}
	for _, p := range byKind["PodDisruptionBudget"] {
		if selects(dig(p, "spec", "selector", "matchLabels").(map[string]any)) == "" {
			t.Errorf("%s selects no Deployment's pods", p)
		}
	}
	if len(byKind["PodDisruptionBudget"]) == 0 {
		t.Error("no PodDisruptionBudget")
	}
	covered := map[string]bool{}
	for _, np := range byKind["NetworkPolicy"] {
		covered[selects(dig(np, "spec", "podSelector", "matchLabels").(map[string]any))] = true
	}
	for role := range deployments {
		if !covered[role] {
			t.Errorf("no NetworkPolicy selects the %s pods", role)
		}
	}
	hpas := byKind["HorizontalPodAutoscaler"]
	wantHPA := valueSet == "full-values.yaml"
	if (len(hpas) == 1) != wantHPA {
		t.Errorf("%d HorizontalPodAutoscalers, want one: %v", len(hpas), wantHPA)
	}
	for _, h := range hpas {
		if dig(h, "spec", "scaleTargetRef", "name") != deployments["collector"].name() {
			t.Errorf("%s scales %v, not the collector", h, dig(h, "spec", "scaleTargetRef", "name"))
		}
		if dig(h, "spec", "metrics", 0, "resource", "name") != "cpu" {
			t.Errorf("%s does not scale on CPU", h)
		}
		if dig(deployments["collector"], "spec", "replicas") != nil {
			t.Error("the autoscaled collector Deployment sets replicas (each upgrade would reset the autoscaler's choice)")
		}
	}
	if got, want := len(byKind["ServiceMonitor"]), map[bool]int{true: 1}[valueSet == "full-values.yaml"]; got != want {
		t.Errorf("%d ServiceMonitors, want %d (off by default)", got, want)
	}

	// No secret value in a ConfigMap, and every secret value in a Secret.
	if valueSet == "full-values.yaml" {
		secretValues := []string{"clickhouse-password-for-tests", "alert-webhook-secret-for-tests", "ip-hash-secret-for-tests-0123456789", "whsec_for_tests"}
		for _, cm := range byKind["ConfigMap"] {
			text := fmt.Sprint(cm["data"])
			for _, s := range secretValues {
				if strings.Contains(text, s) {
					t.Errorf("%s holds the secret %q", cm, s)
				}
			}
		}
		var inSecrets string
		for _, s := range byKind["Secret"] {
			for _, v := range dig(s, "data").(map[string]any) {
				b, _ := base64.StdEncoding.DecodeString(fmt.Sprint(v))
				inSecrets += string(b) + "\n"
			}
		}
		for _, s := range secretValues {
			if !strings.Contains(inSecrets, s) {
				t.Errorf("the secret %q is in no Secret", s)
			}
		}
	}
}

func renderedPartitions(t *testing.T, objs []k8sObject) int {
	t.Helper()
	for _, o := range objs {
		if o.kind() == "ConfigMap" && !strings.HasSuffix(o.name(), "-migrate") {
			var c Config
			if err := yaml.Unmarshal([]byte(fmt.Sprint(dig(o, "data", "meterline.yaml"))), &c); err != nil {
				t.Fatal(err)
			}
			return c.Kafka.Partitions
		}
	}
	t.Fatal("no ConfigMap")
	return 0
}

// userSecrets stand for the Secrets that ci/*.yaml names by secretRef and
// that an operator creates beside the release. The certificates are made
// by the test; the rest are placeholders of the right shape.
func userSecrets(t *testing.T) map[string]map[string]string {
	t.Helper()
	certFile, keyFile, _ := selfSigned(t)
	cert, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pem := string(cert)
	return map[string]map[string]string{
		"kafka-ca":               {"ca.crt": pem},
		"kafka-credentials":      {"password": "kafka-password\n"},
		"clickhouse-credentials": {"password": "clickhouse-password\n"},
		"clickhouse-ca":          {"ca.crt": pem},
		"clickhouse-client":      {"tls.crt": pem, "tls.key": string(key)},
		"meterline-tls":          {"tls.crt": pem, "tls.key": string(key)},
		"meterline-tokens":       {"tokens.yaml": "tokens:\n  - name: gateway\n    sha256: 50525995d81280e78032927d29401ee97212a9dc68a0329b1841c262aa7217d1\n    scopes: [ingest]\n"},
		"stripe":                 {"api-key": "sk_test_placeholder\n"},
	}
}

// checkPodConfigs lays out, for every pod, the files its volumes would
// hold (the ConfigMap, the chart's Secret and the user's Secrets projected
// into the secrets directory) and loads its configuration with meterline's
// own loader and validation: every file the configuration names must be
// mounted, every setting must be known and valid, and the catalogue and
// billing mapping must parse.
func checkPodConfigs(t *testing.T, objs []k8sObject) {
	t.Helper()
	rendered := map[string]k8sObject{}
	for _, o := range objs {
		rendered[o.kind()+"/"+o.name()] = o
	}
	external := userSecrets(t)
	for _, o := range objs {
		if o.kind() != "Deployment" && o.kind() != "Job" {
			continue
		}
		cfgPath, data := layOutPod(t, rendered, external, o)
		cfg, err := loadConfig(cfgPath, nil)
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			t.Fatalf("%s: meterline refuses its configuration: %v\n%s", o, err, data)
		}
		if len(cfg.ClickHouse.Addr) == 0 || len(cfg.Kafka.Brokers) == 0 {
			t.Errorf("%s: configuration without Kafka or ClickHouse addresses", o)
		}
		var cat *limits.Catalogue
		if f := cfg.Limits.CatalogueFile; f != "" {
			if cat, err = limits.LoadRegistry(f); err != nil {
				t.Errorf("%s: catalogue: %v", o, err)
			}
		}
		if f := cfg.Billing.MappingFile; f != "" {
			if _, err := billing.LoadMapping(f, cat); err != nil {
				t.Errorf("%s: billing mapping: %v", o, err)
			}
		}
	}
}

// layOutPod writes, under a temporary directory, the files the volumes of
// a rendered Deployment or Job would hold (its ConfigMap, the chart's Secret
// and the user's Secrets projected into the secrets directory) and returns
// the path of its --config there, with the mount paths in it moved along,
// and the configuration as rendered.
func layOutPod(t *testing.T, rendered map[string]k8sObject, external map[string]map[string]string, o k8sObject) (cfgPath string, data []byte) {
	t.Helper()
	spec := dig(o, "spec", "template", "spec")
	root := t.TempDir()
	for _, v := range list(dig(spec, "volumes")) {
		dir := filepath.Join(root, fmt.Sprint(dig(v, "name")))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if cm := dig(v, "configMap", "name"); cm != nil {
			obj, ok := rendered["ConfigMap/"+fmt.Sprint(cm)]
			if !ok {
				t.Fatalf("%s mounts the ConfigMap %v, which the chart does not render", o, cm)
			}
			for k, val := range dig(obj, "data").(map[string]any) {
				writePodFile(t, filepath.Join(dir, k), fmt.Sprint(val))
			}
		}
		for _, src := range list(dig(v, "projected", "sources")) {
			name := fmt.Sprint(dig(src, "secret", "name"))
			data := map[string]string{}
			if obj, ok := rendered["Secret/"+name]; ok {
				m, _ := dig(obj, "data").(map[string]any)
				for k, val := range m {
					b, err := base64.StdEncoding.DecodeString(fmt.Sprint(val))
					if err != nil {
						t.Fatalf("%s: data %s is not base64: %v", obj, k, err)
					}
					data[k] = string(b)
				}
			} else if ext, ok := external[name]; ok {
				data = ext
			} else {
				t.Fatalf("%s projects the Secret %q, which neither the chart nor the test provides", o, name)
			}
			items := list(dig(src, "secret", "items"))
			if items == nil {
				for k, val := range data {
					writePodFile(t, filepath.Join(dir, k), val)
				}
			}
			for _, it := range items {
				val, ok := data[fmt.Sprint(dig(it, "key"))]
				if !ok {
					t.Fatalf("%s: Secret %s has no key %v", o, name, dig(it, "key"))
				}
				writePodFile(t, filepath.Join(dir, fmt.Sprint(dig(it, "path"))), val)
			}
		}
	}
	// The container's --config, with the mount paths moved under root.
	mounts := map[string]string{}
	c := dig(spec, "containers", 0)
	for _, m := range list(dig(c, "volumeMounts")) {
		mounts[fmt.Sprint(dig(m, "mountPath"))] = filepath.Join(root, fmt.Sprint(dig(m, "name")))
	}
	var pairs []string
	for mp, dir := range mounts {
		pairs = append(pairs, mp+"/", dir+"/")
	}
	relocate := strings.NewReplacer(pairs...).Replace // one pass: a moved path is not moved again
	for _, a := range list(dig(c, "args")) {
		if p, ok := strings.CutPrefix(fmt.Sprint(a), "--config="); ok {
			cfgPath = relocate(p)
		}
	}
	if cfgPath == "" {
		t.Fatalf("%s: no --config argument", o)
	}
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatalf("%s: its --config is not mounted: %v", o, err)
	}
	writePodFile(t, cfgPath, relocate(string(data)))
	return cfgPath, data
}

func writePodFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestHelmChartRefusesBadValues: values that would deploy something broken
// or unsafe fail `helm template` with a message naming what to change.
func TestHelmChartRefusesBadValues(t *testing.T) {
	helmTool(t)
	base := []string{"--set", "kafka.brokers={kafka:9092}", "--set", "clickhouse.addr={clickhouse:9000}"}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no Kafka address", []string{"--set", "clickhouse.addr={clickhouse:9000}"}, "kafka.brokers is required"},
		{"no ClickHouse address", []string{"--set", "kafka.brokers={kafka:9092}"}, "clickhouse.addr is required"},
		{"broker without port", append(slices.Clone(base), "--set", "kafka.brokers={kafka}"), `kafka.brokers: "kafka" is not host:port`},
		{"broker list smuggled in one address", []string{"--set", "clickhouse.addr={clickhouse:9000}", "--set-json", `kafka.brokers=["a:9092,evil:9092"]`}, `kafka.brokers: "a:9092,evil:9092" is not host:port`},
		{"two aggregators", append(slices.Clone(base), "--set", "aggregator.replicas=2"), "aggregator.replicas is 2: the aggregator role has no lease"},
		{"two billing workers", append(slices.Clone(base), "-f", filepath.Join(chartDir, "ci", "full-values.yaml"), "--set", "billing.replicas=3"), "billing.replicas is 3: the billing role has no lease"},
		{"more sinks than partitions", append(slices.Clone(base), "--set", "sink.replicas=7"), "sink.replicas is 7 but kafka.partitions is 6"},
		{"alerts from every query replica", append(slices.Clone(base), "--set", "query.replicas=3", "--set", "config.limits.alert_sender=always"), `config.limits.alert_sender is "always" with query.replicas 3`},
		{"secret in the ConfigMap", append(slices.Clone(base), "--set", "config.billing.stripe_api_key=sk_live_x"), "config.billing.stripe_api_key is set by the chart: set billing.stripeApiKey instead (secrets go to"},
		{"password in the ConfigMap", append(slices.Clone(base), "--set", "config.kafka.sasl.password=x"), "config.kafka.sasl is set by the chart"},
		{"managed setting in config", append(slices.Clone(base), "--set", "config.http.addr=0.0.0.0:9999"), "config.http.addr is set by the chart: set http.port instead"},
		{"embedded engine data dir", append(slices.Clone(base), "--set", "config.clickhouse.data_dir=/data"), "config.clickhouse.data_dir is set by the chart"},
		{"SASL without password", append(slices.Clone(base), "--set", "kafka.sasl.mechanism=scram-sha-512", "--set", "kafka.sasl.username=u"), "kafka.sasl.password is required"},
		{"SASL without user", append(slices.Clone(base), "--set", "kafka.sasl.mechanism=plain"), "kafka.sasl.username is required"},
		{"unknown SASL mechanism", append(slices.Clone(base), "--set", "kafka.sasl.mechanism=gssapi"), "at '/kafka/sasl/mechanism': value must be one of"},
		{"secret both inline and from a Secret", append(slices.Clone(base), "--set", "clickhouse.password.value=x", "--set", "clickhouse.password.secretRef.name=ch"), "clickhouse.password: give value or secretRef, not both"},
		{"secretRef without key", append(slices.Clone(base), "--set", "clickhouse.password.secretRef.name=ch"), "clickhouse.password.secretRef.key is required"},
		{"billing without Stripe key", append(slices.Clone(base), "--set", "billing.enabled=true", "--set-json", `billing.mapping={"plans":[]}`), "billing.stripeApiKey is required"},
		{"billing without mapping", append(slices.Clone(base), "--set", "billing.enabled=true", "--set", "billing.stripeApiKey.value=sk"), "billing.mapping is required"},
		{"HTTPS without a certificate", append(slices.Clone(base), "--set", "http.tls.enabled=true"), "http.tls.cert is required"},
		{"autoscaler bounds reversed", append(slices.Clone(base), "--set", "collector.autoscaling.enabled=true", "--set", "collector.autoscaling.minReplicas=5", "--set", "collector.autoscaling.maxReplicas=2"), "collector.autoscaling.minReplicas (5) is above maxReplicas (2)"},
		{"negative replicas", append(slices.Clone(base), "--set", "query.replicas=-1"), "replicas"},
		{"replicas not a number", append(slices.Clone(base), "--set", "query.replicas=many"), "replicas"},
		{"misspelt value", append(slices.Clone(base), "--set", "colector.replicas=3"), "colector"},
		{"unknown role value", append(slices.Clone(base), "--set", "sink.replica=3"), "replica"},
		{"privileged port", append(slices.Clone(base), "--set", "http.port=80"), "at '/http/port': minimum"},
		{"image digest not a digest", append(slices.Clone(base), "--set", "image.digest=latest"), "at '/image/digest'"},
		{"hostile database name", append(slices.Clone(base), "--set", "clickhouse.database=x; DROP TABLE events"), "at '/clickhouse/database'"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := helmTemplate(t, c.args...)
			if err == nil {
				t.Fatalf("helm template accepted it; rendered %d bytes", len(out))
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error does not say %q:\n%v", c.want, err)
			}
		})
	}
}

// TestHelmChartQuotesHostileValues: a value that tries to add settings to
// the rendered configuration stays one string value.
func TestHelmChartQuotesHostileValues(t *testing.T) {
	helmTool(t)
	topic := "requests\nclickhouse:\n  addr: [evil:9000]\n# "
	manifest, err := helmTemplate(t, "--set", "kafka.brokers={kafka:9092}", "--set", "clickhouse.addr={clickhouse:9000}",
		"--set-string", "kafka.topic="+topic, "--set-string", "config.ui.public_url=https://x\"\n  disabled: true")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range decodeObjects(t, manifest) {
		if o.kind() != "ConfigMap" {
			continue
		}
		var c Config
		dec := yaml.NewDecoder(strings.NewReader(fmt.Sprint(dig(o, "data", "meterline.yaml"))))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		if c.Kafka.Topic != topic {
			t.Errorf("%s: kafka.topic %q, want %q", o, c.Kafka.Topic, topic)
		}
		if !slices.Equal(c.ClickHouse.Addr, []string{"clickhouse:9000"}) {
			t.Errorf("%s: clickhouse.addr %v: the topic value added a setting", o, c.ClickHouse.Addr)
		}
		if c.UI.Disabled {
			t.Errorf("%s: ui.disabled set through ui.public_url", o)
		}
	}
}
