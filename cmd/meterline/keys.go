package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/meterline/meterline/aggregate/limits"
)

// keysUsage is the help of `meterline keys`.
const keysUsage = `Usage: meterline keys rotate --customer C --old KEY --new KEY2 [--overlap 24h] [--at TIME] [--catalogue FILE | --config FILE]

  rotate  print the catalogue change that replaces a customer's API key:
          KEY2 is added to the customer's keys, KEY gets an expires_at
          (now, or --at, plus --overlap), after which gateways answer it
          403. Both keys stay the customer's, so its usage is continuous.
          The change is checked against the catalogue file (the file with
          the change must be valid) and printed; the file is not written:
          edit it (serve reloads it within limits.reload_every).
`

func runKeys(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, keysUsage)
		return nil
	}
	if len(args) == 0 || args[0] != "rotate" {
		fmt.Fprint(stderr, keysUsage)
		return errUsage
	}
	fs := newFlagSet("keys rotate", "keys rotate --customer C --old KEY --new KEY2 [--overlap 24h] [--at TIME] [--catalogue FILE | --config FILE]", stderr)
	var cf commonFlags
	cf.registerFor(fs, 0)
	catalogue := fs.String("catalogue", "", "catalogue `file` (default: limits.catalogue_file of the configuration)")
	customer := fs.String("customer", "", "the customer whose key is rotated (required)")
	oldKey := fs.String("old", "", "the `key` replaced; it expires after the overlap (required)")
	newKey := fs.String("new", "", "the new `key`, held by no one yet (required)")
	overlap := fs.Duration("overlap", 24*time.Hour, "how long both keys are valid (0-2160h)")
	at := fs.String("at", "", "when the rotation starts, RFC 3339 (default now)")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	var missing []string
	for name, v := range map[string]string{"--customer": *customer, "--old": *oldKey, "--new": *newKey} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(stderr, "missing %s\n", strings.Join(slices.Sorted(slices.Values(missing)), ", "))
		fs.Usage()
		return errUsage
	}
	start := time.Now().UTC()
	if *at != "" {
		t, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			return fmt.Errorf("--at %q: not an RFC 3339 time (2026-12-08T09:00:00Z)", *at)
		}
		start = t
	}
	path := *catalogue
	if path == "" {
		cfg, err := cf.load()
		if err != nil {
			return err
		}
		path = cfg.Limits.CatalogueFile
		if path == "" {
			return errors.New("no catalogue: give --catalogue, or a configuration with limits.catalogue_file")
		}
	}
	cat, err := limits.LoadRegistry(path)
	if err != nil {
		return err
	}
	next, err := cat.Rotate(limits.Rotation{Customer: *customer, Old: *oldKey, New: *newKey, At: start, Overlap: *overlap})
	if err != nil {
		return fmt.Errorf("rotating %q of customer %q in %s: %w", *oldKey, *customer, path, err)
	}
	var cu limits.Customer
	for _, c := range next.Customers {
		if c.ID == *customer {
			cu = c
		}
	}
	expires := start.Add(*overlap).UTC().Truncate(time.Second).Format(time.RFC3339)
	fmt.Fprintf(stdout, "Rotation of customer %q's key %q (checked against %s):\n", *customer, *oldKey, path)
	fmt.Fprintf(stdout, "  + %s  added, active now\n", *newKey)
	fmt.Fprintf(stdout, "  ~ %s  expires_at %s (overlap %s), then gateways answer it 403\n\n", *oldKey, expires, shortDuration(*overlap))
	type snippet struct {
		ID         string             `yaml:"id"`
		Keys       []limits.KeyEntry  `yaml:"keys"`
		KeyPeriods []limits.KeyPeriod `yaml:"key_periods,omitempty"`
	}
	out, err := yaml.Marshal([]snippet{{ID: cu.ID, Keys: cu.KeyList(), KeyPeriods: cu.KeyPeriods}})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "The customer's keys after the rotation (replace its keys%s in the catalogue):\n", map[bool]string{true: " and key_periods", false: ""}[len(cu.KeyPeriods) > 0])
	for _, l := range strings.SplitAfter(string(out), "\n") {
		if l != "" {
			fmt.Fprint(stdout, "  "+l)
		}
	}
	fmt.Fprintf(stdout, "\nThe catalogue with this change is valid. Give the customer %q before %s.\n", *newKey, expires)
	return nil
}

// shortDuration writes 24h rather than Go's 24h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
