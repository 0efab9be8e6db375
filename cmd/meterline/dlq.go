package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/retry"
	"github.com/meterline/meterline/internal/term"
)

const dlqUsage = `Usage: meterline dlq <list|show|replay> [flags]

Inspect the dead-letter topic (kafka.dead_letter_topic) and replay its
messages to the events topic after a fix. Replayed events are deduplicated
by id like any other, so replaying twice stores nothing twice.

  list    one line per dead letter: partition, offset, time, class, size, reason
  show    one dead letter in full: headers and value (PARTITION/OFFSET)
  replay  write the selected dead letters back to the events topic

Run 'meterline dlq <command> -h' for its flags.
`

func runDLQ(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, dlqUsage)
		return errUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, dlqUsage)
		return nil
	case "list":
		return runDLQList(args[1:], stdout, stderr)
	case "show":
		return runDLQShow(args[1:], stdout, stderr)
	case "replay":
		return runDLQReplay(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "unknown dlq command %q\n\n%s", args[0], dlqUsage)
	return errUsage
}

// dlqFilterFlags are the selection flags of list and replay.
type dlqFilterFlags struct {
	partition  int
	from, to   int64
	class      string
	reason     string
	registered *flag.FlagSet
}

func (f *dlqFilterFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&f.partition, "partition", -1, "only this `partition` of the dead-letter topic")
	fs.Int64Var(&f.from, "from", -1, "first `offset` (inclusive; needs --partition)")
	fs.Int64Var(&f.to, "to", -1, "last `offset` (inclusive; needs --partition)")
	fs.StringVar(&f.class, "class", "", "only dead letters of this `class` (invalid, unstorable, ownership)")
	fs.StringVar(&f.reason, "reason", "", "only dead letters whose error contains this `text` (case-insensitive)")
	f.registered = fs
}

// filter checks the flags and returns the filter; a bad combination prints
// the usage.
func (f *dlqFilterFlags) filter(stderr io.Writer) (ingest.DeadLetterFilter, error) {
	flt := ingest.DeadLetterFilter{Partition: f.partition, From: f.from, To: f.to, Class: f.class, Reason: f.reason}
	if err := flt.Validate(); err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		f.registered.Usage()
		return flt, errUsage
	}
	return flt, nil
}

func (f *dlqFilterFlags) any() bool {
	return f.partition >= 0 || f.from >= 0 || f.to >= 0 || f.class != "" || f.reason != ""
}

// dlqKafka loads the configuration for a dlq command (Kafka only).
func dlqKafka(cf *commonFlags) (ingest.KafkaConfig, error) {
	cfg, err := cf.load()
	if err != nil {
		return ingest.KafkaConfig{}, err
	}
	return cfg.Kafka, nil
}

// openDLQScan reads the configuration and the selection flags and opens a
// scan of the dead-letter topic.
func openDLQScan(ctx context.Context, cf *commonFlags, ff *dlqFilterFlags, stderr io.Writer) (ingest.KafkaConfig, *ingest.DeadLetterScan, error) {
	flt, err := ff.filter(stderr)
	if err != nil {
		return ingest.KafkaConfig{}, nil, err
	}
	k, err := dlqKafka(cf)
	if err != nil {
		return k, nil, err
	}
	scan, err := ingest.NewDeadLetterScan(ctx, k, flt)
	return k, scan, err
}

func runDLQList(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dlq list", "dlq list [--config FILE] [--partition N [--from OFFSET] [--to OFFSET]] [--class CLASS] [--reason TEXT] [--limit N]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsKafka)
	var ff dlqFilterFlags
	ff.register(fs)
	limit := fs.Int("limit", 0, "list at most `n` dead letters (0: all)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	if *limit < 0 {
		fmt.Fprintf(stderr, "--limit %d is negative\n", *limit)
		fs.Usage()
		return errUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	k, scan, err := openDLQScan(ctx, &cf, &ff, stderr)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PARTITION\tOFFSET\tTIME\tCLASS\tSIZE\tSOURCE\tREASON")
	n := 0
	errLimit := errors.New("limit reached")
	err = scan.Each(ctx, func(d ingest.DeadLetter) error {
		size := strconv.Itoa(d.Size)
		if d.Truncated {
			size = fmt.Sprintf("%d (of %d, truncated)", d.Size, d.OriginalSize)
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\n", d.Partition, d.Offset, d.Time.UTC().Format(time.RFC3339), orDash(d.Class),
			size, orDash(d.Source), orDash(retry.CleanText(d.Reason, 120)))
		n++
		if *limit > 0 && n >= *limit {
			return errLimit
		}
		return nil
	}, nil)
	if err != nil && !errors.Is(err, errLimit) {
		return err
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d dead letter(s) in %s\n", n, k.DeadLetterTopic)
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// parsePosition reads PARTITION/OFFSET.
func parsePosition(s string) (int, int64, error) {
	p, o, ok := strings.Cut(s, "/")
	pi, err1 := strconv.Atoi(p)
	oi, err2 := strconv.ParseInt(o, 10, 64)
	if !ok || err1 != nil || err2 != nil || pi < 0 || oi < 0 {
		return 0, 0, fmt.Errorf("%q is not PARTITION/OFFSET (two non-negative numbers, as `meterline dlq list` prints them)", s)
	}
	return pi, oi, nil
}

func runDLQShow(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dlq show", "dlq show [--config FILE] PARTITION/OFFSET", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsKafka)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "give exactly one PARTITION/OFFSET")
		fs.Usage()
		return errUsage
	}
	part, off, err := parsePosition(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, err)
		fs.Usage()
		return errUsage
	}
	k, err := dlqKafka(&cf)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	d, err := ingest.ReadDeadLetter(ctx, k, part, off)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "position:  %s/%d/%d\n", k.WithDefaults().DeadLetterTopic, d.Partition, d.Offset)
	fmt.Fprintf(stdout, "time:      %s\n", d.Time.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(stdout, "class:     %s\n", orDash(d.Class))
	fmt.Fprintf(stdout, "reason:    %s\n", orDash(retry.CleanText(d.Reason, 64<<10)))
	fmt.Fprintf(stdout, "source:    %s\n", orDash(d.Source))
	if d.Truncated {
		fmt.Fprintf(stdout, "size:      %d bytes, truncated from %d (cannot be replayed)\n", d.Size, d.OriginalSize)
	} else {
		fmt.Fprintf(stdout, "size:      %d bytes\n", d.Size)
	}
	fmt.Fprintf(stdout, "key:       %s\n", printable(d.Key))
	fmt.Fprintln(stdout, "headers:")
	for _, h := range d.Headers {
		fmt.Fprintf(stdout, "  %s: %s\n", h.Key, printable(h.Value))
	}
	fmt.Fprintln(stdout, "value:")
	var pretty bytes.Buffer
	if json.Indent(&pretty, d.Value, "", "  ") == nil {
		fmt.Fprintln(stdout, pretty.String())
	} else {
		fmt.Fprintln(stdout, printable(d.Value))
	}
	return nil
}

// printable shows b as text when it is valid UTF-8 without control
// characters, else quoted.
func printable(b []byte) string {
	if utf8.Valid(b) && !bytes.ContainsFunc(b, func(r rune) bool { return r < 0x20 && r != '\t' }) {
		return string(b)
	}
	return strconv.Quote(string(b))
}

func runDLQReplay(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dlq replay", "dlq replay [--config FILE] (--all | [--partition N [--from OFFSET] [--to OFFSET]] [--class CLASS] [--reason TEXT]) [--dry-run] [--quiet]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsKafka)
	var ff dlqFilterFlags
	ff.register(fs)
	all := fs.Bool("all", false, "replay every dead letter")
	dryRun := fs.Bool("dry-run", false, "count what would be replayed, write nothing")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	if *all == ff.any() {
		fmt.Fprintln(stderr, "choose what to replay: --all, or a selection (--partition, --from, --to, --class, --reason), not both")
		fs.Usage()
		return errUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	k, scan, err := openDLQScan(ctx, &cf, &ff, stderr)
	if err != nil {
		return err
	}
	bar := term.NewProgress(stderr, *quiet)
	bar.SetUnit("messages")
	bar.Start(uint64(scan.Offsets()))
	res, err := ingest.ReplayDeadLetters(ctx, scan, *dryRun, func(read int64, r ingest.ReplayResult) {
		bar.Set(uint64(read), fmt.Sprintf("%d replayed", r.Replayed))
	})
	bar.Finish()
	verb := "replayed"
	if *dryRun {
		verb = "would replay"
	}
	k = k.WithDefaults()
	fmt.Fprintf(stdout, "%s %d dead letter(s) from %s to %s", verb, res.Replayed, k.DeadLetterTopic, k.Topic)
	if res.Truncated > 0 {
		fmt.Fprintf(stdout, "; skipped %d truncated (their events are incomplete: see `meterline dlq show`)", res.Truncated)
	}
	fmt.Fprintln(stdout)
	return err
}
