package ingest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterline/meterline/internal/testenv"
)

// TestLeaseOneHolderAndFailover runs three lease members of one name over
// the real broker: exactly one holds it at any time it is checked; when
// the holder stops (as a process that exits), another takes over; a member
// joining (a rebalance) leaves it where it is.
// A holder killed without leaving the group is replaced after the session
// timeout: TestLeaseFailsOverAfterKill.
func TestLeaseOneHolderAndFailover(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	k := KafkaConfig{Brokers: brokers}.WithDefaults()
	cfg := LeaseConfig{Topic: testenv.Unique("leases"), SessionTimeout: 6 * time.Second}
	name := testenv.Unique("alerts")

	type member struct {
		l      *Lease
		cancel context.CancelFunc
		done   chan error
	}
	start := func() *member {
		ctx, cancel := context.WithCancel(context.Background())
		m := &member{l: NewLease(cfg, k, name, quietLog()), cancel: cancel, done: make(chan error, 1)}
		go func() { m.done <- m.l.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-m.done })
		return m
	}
	members := []*member{start(), start(), start()}
	holders := func(ms []*member) []int {
		var h []int
		for i, m := range ms {
			if m.l.Held() {
				h = append(h, i)
			}
		}
		return h
	}
	oneHolder := func(ms []*member) int {
		var holder int
		testenv.Eventually(t, 60*time.Second, func() error {
			h := holders(ms)
			if len(h) != 1 {
				return fmt.Errorf("holders %v, want exactly one", h)
			}
			holder = h[0]
			return nil
		})
		// Stable: nobody else claims it while the holder's next three
		// heartbeats are acknowledged (the group may still be settling,
		// so a moment without a holder is allowed, two holders never).
		acked := func() float64 { return testutil.ToFloat64(ms[holder].l.m.heartbeats.WithLabelValues("acked")) }
		from := acked()
		testenv.Eventually(t, time.Minute, func() error {
			if h := holders(ms); len(h) > 1 {
				t.Fatalf("two holders at once: %v", h)
			}
			if n := acked(); n < from+3 {
				return fmt.Errorf("%v heartbeats acknowledged, want %v", n, from+3)
			}
			return nil
		})
		return holder
	}

	first := oneHolder(members)
	for _, m := range members {
		select {
		case <-m.l.Ready():
		case <-time.After(30 * time.Second):
			t.Fatal("a member never learnt the election's result")
		}
	}

	// The holder exits: it leaves the group and another takes over.
	members[first].cancel()
	if err := <-members[first].done; err != nil {
		t.Fatal(err)
	}
	members[first].done <- nil // for the cleanup
	if members[first].l.Held() {
		t.Fatal("a stopped member still holds the lease")
	}
	rest := append(append([]*member(nil), members[:first]...), members[first+1:]...)
	second := oneHolder(rest)

	rest = append(rest, start())
	select {
	case <-rest[len(rest)-1].l.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("the newcomer never joined")
	}
	if h := oneHolder(rest); h != second {
		t.Fatalf("a member joining moved the lease from member %d to %d", second, h)
	}
}

// leaseChildEnv makes the test binary run one lease member instead of the
// tests: "brokers|topic|name". The member prints "held" when it holds the
// lease and runs until killed.
const leaseChildEnv = "METERLINE_TEST_LEASE_CHILD"

func runLeaseChild() int {
	parts := strings.Split(os.Getenv(leaseChildEnv), "|")
	if len(parts) != 3 {
		fmt.Fprintln(os.Stderr, "bad", leaseChildEnv)
		return 2
	}
	l := NewLease(LeaseConfig{Topic: parts[1], SessionTimeout: 6 * time.Second},
		KafkaConfig{Brokers: strings.Split(parts[0], ",")}.WithDefaults(), parts[2], nil)
	go func() { _ = l.Run(context.Background()) }()
	for !l.Held() {
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Println("held")
	select {}
}

// TestLeaseFailsOverAfterKill: a holder killed with SIGKILL (no leave
// request, no last heartbeat) keeps the lease until the group's session
// timeout, then another member takes it; the two never hold it together.
func TestLeaseFailsOverAfterKill(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	topic, name := testenv.Unique("leases"), testenv.Unique("alerts")
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), leaseChildEnv+"="+strings.Join(brokers, ",")+"|"+topic+"|"+name)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	held := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "held" {
				close(held)
			}
		}
	}()
	select {
	case <-held:
	case <-time.After(60 * time.Second):
		t.Fatal("the child never held the lease")
	}

	l := NewLease(LeaseConfig{Topic: topic, SessionTimeout: 6 * time.Second}, KafkaConfig{Brokers: brokers}.WithDefaults(), name, quietLog())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-l.Ready():
	case <-time.After(60 * time.Second):
		t.Fatal("the second member never joined")
	}
	// Ready: Held shows the election's result. The child holds it: the
	// newcomer must not.
	if l.Held() {
		t.Fatal("the second member holds the lease while the first is alive")
	}

	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	testenv.Eventually(t, 60*time.Second, func() error {
		if !l.Held() {
			return errors.New("the survivor does not hold the lease yet")
		}
		return nil
	})
	t.Logf("lease taken over %s after the holder was killed (session timeout 6s)", time.Since(killed).Round(100*time.Millisecond))
}
