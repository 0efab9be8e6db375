package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Interactive reads are the statements run on behalf of an API caller. They
// run on connections of their own, apart from the MaxOpenConns that the
// sink, the aggregator and the other background work share, and with
// per-query limits, so that no amount of reading can take a connection an
// insert needs or run without bound: reads wait, inserts do not.

// InteractiveConfig configures the connections and limits of interactive
// reads (statements whose context went through Interactive).
type InteractiveConfig struct {
	// Conns is the number of connections reserved for interactive reads,
	// in addition to MaxOpenConns. Default DefaultInteractiveConns.
	Conns int
	// QueueTimeout bounds the wait for a free interactive connection; a
	// read still waiting then fails with ErrBusy. Default
	// DefaultInteractiveQueueTimeout.
	QueueTimeout time.Duration
	// MaxExecutionTime is the engine's max_execution_time for each
	// interactive statement (rounded up to whole milliseconds); 0 sets none.
	MaxExecutionTime time.Duration
	// MaxMemoryBytes is the engine's max_memory_usage per statement; 0 sets none.
	MaxMemoryBytes int64
	// MaxRowsToRead is the engine's max_rows_to_read per statement; 0 sets none.
	MaxRowsToRead int64
	// MaxThreads is the engine's max_threads per statement, so that reads
	// leave processor time to inserts; 0 leaves the engine's default.
	MaxThreads int
}

// Defaults of InteractiveConfig.
const (
	DefaultInteractiveConns        = 2
	DefaultInteractiveQueueTimeout = 5 * time.Second
)

func (c InteractiveConfig) withDefaults() InteractiveConfig {
	if c.Conns <= 0 {
		c.Conns = DefaultInteractiveConns
	}
	if c.QueueTimeout <= 0 {
		c.QueueTimeout = DefaultInteractiveQueueTimeout
	}
	return c
}

// settings returns the engine settings of an interactive statement, in a
// fixed order, as the unquoted text of each value.
func (c InteractiveConfig) settings() [][2]string {
	var out [][2]string
	if c.MaxExecutionTime > 0 {
		// Seconds with a fraction: the setting accepts milliseconds.
		ms := (c.MaxExecutionTime + time.Millisecond - 1) / time.Millisecond
		out = append(out, [2]string{"max_execution_time", strconv.FormatFloat(float64(ms)/1000, 'f', -1, 64)},
			[2]string{"timeout_overflow_mode", "throw"})
	}
	if c.MaxMemoryBytes > 0 {
		out = append(out, [2]string{"max_memory_usage", strconv.FormatInt(c.MaxMemoryBytes, 10)})
	}
	if c.MaxRowsToRead > 0 {
		out = append(out, [2]string{"max_rows_to_read", strconv.FormatInt(c.MaxRowsToRead, 10)},
			[2]string{"read_overflow_mode", "throw"})
	}
	if c.MaxThreads > 0 {
		out = append(out, [2]string{"max_threads", strconv.Itoa(c.MaxThreads)})
	}
	return out
}

type interactiveKey struct{}

// Interactive marks ctx so that the statements run with it are interactive
// reads: they use the interactive connections and limits of the Conn.
func Interactive(ctx context.Context) context.Context {
	return context.WithValue(ctx, interactiveKey{}, true)
}

// NotInteractive undoes Interactive for the statements run with the
// returned context: work done on behalf of a read that must not be bound
// by the read limits (an audit record of the read).
func NotInteractive(ctx context.Context) context.Context {
	return context.WithValue(ctx, interactiveKey{}, false)
}

// IsInteractive reports whether ctx went through Interactive.
func IsInteractive(ctx context.Context) bool {
	v, _ := ctx.Value(interactiveKey{}).(bool)
	return v
}

// ErrBusy is returned when an interactive read waited
// InteractiveConfig.QueueTimeout without getting a connection. It is also
// ErrUnavailable.
var ErrBusy = fmt.Errorf("%w: every connection for interactive reads is in use", ErrUnavailable)

// acquireSlot takes a slot of sem for an interactive read, waiting at most
// timeout.
func acquireSlot(ctx context.Context, sem chan struct{}, timeout time.Duration) error {
	select {
	case sem <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("%w (waited %s)", ErrBusy, timeout)
	}
}

// Limit names a per-statement limit that a statement went over.
type Limit string

// Limits a statement can exceed (see InteractiveConfig).
const (
	LimitTime   Limit = "max_execution_time"
	LimitMemory Limit = "max_memory_usage"
	LimitRows   Limit = "max_rows_to_read"
)

// limitCodes maps ClickHouse error codes to the limit they report.
var limitCodes = map[int]Limit{
	158: LimitRows,   // TOO_MANY_ROWS
	159: LimitTime,   // TIMEOUT_EXCEEDED
	160: LimitTime,   // TOO_SLOW (estimated to exceed max_execution_time)
	241: LimitMemory, // MEMORY_LIMIT_EXCEEDED
	307: LimitRows,   // TOO_MANY_BYTES
}

// LimitExceeded reports whether err is the engine stopping a statement
// because it went over a per-statement limit, and which one.
func LimitExceeded(err error) (Limit, bool) {
	var qe *QueryError
	if !errors.As(err, &qe) {
		return "", false
	}
	l, ok := limitCodes[qe.Code]
	return l, ok
}
