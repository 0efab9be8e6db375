//go:build !linux

package store

// signalSnapshot is a no-op outside Linux: the raw rt_sigaction save and
// restore is Linux-specific, and the embedded engine is only supported
// (and tested) on Linux.
type signalSnapshot struct {
	acts [lastStandardSignal + 1]struct{}
	ok   [lastStandardSignal + 1]bool
}

// lastStandardSignal mirrors the Linux constant so tests compile.
const lastStandardSignal = 31

func saveSignals() *signalSnapshot { return &signalSnapshot{} }

func (s *signalSnapshot) restore() ([]int, error) { return nil, nil }
