package store

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// libchdb installs its own handlers for SIGSEGV, SIGBUS, SIGFPE, SIGILL,
// SIGTRAP, SIGABRT, SIGSYS and SIGTSTP when a connection is opened (seen
// with the 26.5 engine). Go turns SIGSEGV from a nil dereference into a
// recoverable panic only through its own handler, so with the engine's
// handlers in place such a panic hangs or kills the process instead. We
// save the handlers of the standard signals (1–31) before calling into the
// library and put back any that it changed. Real-time signals (32 and up)
// are left to the engine: Go does not use them, and ClickHouse sends one to
// its threads to collect stack traces.

// kernelSigaction holds a raw struct sigaction as the rt_sigaction system
// call reads and writes it. We never interpret it, only save and restore
// it, so it is sized generously (the kernel struct is 32 bytes on amd64 and
// arm64).
type kernelSigaction [64]byte

// sigsetSize is the kernel's sigset_t size on Linux (64 signals).
const sigsetSize = 8

// lastStandardSignal is the highest non-real-time signal number.
const lastStandardSignal = 31

func getSigaction(sig int) (kernelSigaction, error) {
	var old kernelSigaction
	_, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), 0, uintptr(unsafe.Pointer(&old)), sigsetSize, 0, 0)
	if errno != 0 {
		return old, errno
	}
	return old, nil
}

func setSigaction(sig int, act *kernelSigaction) error {
	_, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(act)), 0, sigsetSize, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// signalSnapshot is the saved disposition of the standard signals.
type signalSnapshot struct {
	acts [lastStandardSignal + 1]kernelSigaction
	ok   [lastStandardSignal + 1]bool
}

func saveSignals() *signalSnapshot {
	s := &signalSnapshot{}
	for sig := 1; sig <= lastStandardSignal; sig++ {
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		if act, err := getSigaction(sig); err == nil {
			s.acts[sig], s.ok[sig] = act, true
		}
	}
	return s
}

// restore puts back every saved handler that changed and returns the
// signals it restored.
func (s *signalSnapshot) restore() ([]int, error) {
	var restored []int
	for sig := 1; sig <= lastStandardSignal; sig++ {
		if !s.ok[sig] {
			continue
		}
		cur, err := getSigaction(sig)
		if err != nil || cur == s.acts[sig] {
			continue
		}
		if err := setSigaction(sig, &s.acts[sig]); err != nil {
			return restored, err
		}
		restored = append(restored, sig)
	}
	return restored, nil
}
