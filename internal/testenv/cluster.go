package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// Cluster is a three-node Kafka cluster (KRaft, each node a controller and
// a broker, one quorum) started by a test through deploy/kafka-cluster.sh.
// Topics created on it default to replication factor 3 and
// min.insync.replicas=2.
type Cluster struct {
	// Addrs are the nodes' PLAINTEXT addresses; Addrs[i] is node i+1.
	Addrs []string
	dir   string
	t     testing.TB
}

// StartCluster starts a cluster of its own for the test (tens of seconds on
// a busy machine) and stops it at the end of the test.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	Require(t, EnvKafkaLibs)
	var c *Cluster
	for attempt := 1; ; attempt++ {
		c = &Cluster{dir: t.TempDir(), t: t}
		var ports, cports []string
		for range 3 {
			ports = append(ports, FreePort(t))
			cports = append(cports, FreePort(t))
		}
		out, err := c.script("start", "--ports", strings.Join(ports, ","), "--controller-ports", strings.Join(cports, ","))
		if err == nil {
			c.Addrs = strings.Split(strings.TrimSpace(lastLine(out)), ",")
			break
		}
		c.Stop() // nodes that did start are still running
		if attempt < 3 && bytes.Contains(out, []byte("Address already in use")) {
			t.Logf("a port of the cluster was taken; retrying with new ports")
			continue
		}
		t.Fatalf("starting a Kafka cluster: %v\n%s", err, out)
	}
	t.Cleanup(c.Stop)
	if err := c.WaitBrokers(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
	return c
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

func (c *Cluster) script(args ...string) ([]byte, error) {
	args = append(args, "--dir", c.dir)
	return exec.Command(filepath.Join(RepoRoot(), "deploy", "kafka-cluster.sh"), args...).CombinedOutput()
}

// Bootstrap is the comma-separated list of every node's address.
func (c *Cluster) Bootstrap() string { return strings.Join(c.Addrs, ",") }

// Stop stops every node (controlled shutdown).
func (c *Cluster) Stop() {
	if out, err := c.script("stop"); err != nil {
		c.t.Logf("stopping the cluster: %v\n%s", err, out)
	}
}

// Kill sends SIGKILL to node id (1-3), as a crash would, and waits until
// the process is gone.
func (c *Cluster) Kill(id int) {
	c.t.Helper()
	if out, err := c.script("kill", "--node", fmt.Sprint(id)); err != nil {
		c.t.Fatalf("killing node %d: %v\n%s", id, err, out)
	}
}

// StopNode stops node id with SIGTERM (controlled shutdown: its partitions'
// leadership moves first) and waits until the process is gone.
func (c *Cluster) StopNode(id int) {
	c.t.Helper()
	if out, err := c.script("stop", "--node", fmt.Sprint(id)); err != nil {
		c.t.Fatalf("stopping node %d: %v\n%s", id, err, out)
	}
}

// StartNode starts the stopped node id again on its address and data, and
// waits until it logged that it is up.
func (c *Cluster) StartNode(id int) {
	c.t.Helper()
	if out, err := c.script("start", "--node", fmt.Sprint(id)); err != nil {
		c.t.Fatalf("starting node %d: %v\n%s", id, err, out)
	}
}

// Log returns node id's broker log (for a failing test's report).
func (c *Cluster) Log(id int) string {
	out, _ := exec.Command("tail", "-n", "60", filepath.Join(c.dir, fmt.Sprintf("node%d", id), "kafka.log")).Output()
	return string(out)
}

// NodeID returns the node id (1-3) of a broker address, 0 if none.
func (c *Cluster) NodeID(addr string) int {
	for i, a := range c.Addrs {
		if a == addr {
			return i + 1
		}
	}
	return 0
}

// metadata asks any node that is up for the metadata of topics (all
// brokers and no topic when none is given), over a transport of its own,
// so nothing is cached between calls.
func (c *Cluster) metadata(ctx context.Context, topics ...string) (*kafka.MetadataResponse, error) {
	tr := &kafka.Transport{DialTimeout: 2 * time.Second}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(c.Addrs...), Transport: tr, Timeout: 5 * time.Second}
	return client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
}

// WaitBrokers waits until the cluster's metadata lists n live brokers.
func (c *Cluster) WaitBrokers(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last error
	for {
		md, err := c.metadata(ctx)
		if err == nil && len(md.Brokers) == n {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("%d brokers in the metadata, want %d", len(md.Brokers), n)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d brokers: %w", n, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// PartitionState is one partition's leader and in-sync replicas, by node id.
type PartitionState struct {
	Partition int
	Leader    int // 0: no leader
	ISR       []int
}

// Partitions returns the state of every partition of topic.
func (c *Cluster) Partitions(ctx context.Context, topic string) ([]PartitionState, error) {
	md, err := c.metadata(ctx, topic)
	if err != nil {
		return nil, err
	}
	if len(md.Topics) != 1 {
		return nil, fmt.Errorf("metadata lists %d topics for %q", len(md.Topics), topic)
	}
	if md.Topics[0].Error != nil {
		return nil, fmt.Errorf("topic %q: %w", topic, md.Topics[0].Error)
	}
	var out []PartitionState
	for _, p := range md.Topics[0].Partitions {
		s := PartitionState{Partition: p.ID}
		if p.Leader.Host != "" {
			s.Leader = p.Leader.ID
		}
		for _, r := range p.Isr {
			s.ISR = append(s.ISR, r.ID)
		}
		out = append(out, s)
	}
	return out, nil
}

// Leader returns the node id leading a partition of topic (0: none).
func (c *Cluster) Leader(ctx context.Context, topic string, partition int) (int, error) {
	parts, err := c.Partitions(ctx, topic)
	if err != nil {
		return 0, err
	}
	for _, p := range parts {
		if p.Partition == partition {
			return p.Leader, nil
		}
	}
	return 0, fmt.Errorf("topic %q has no partition %d", topic, partition)
}

// FullyReplicated returns nil when every partition of the topics has a
// leader and all three replicas in sync.
func (c *Cluster) FullyReplicated(ctx context.Context, topics ...string) error {
	for _, topic := range topics {
		parts, err := c.Partitions(ctx, topic)
		if err != nil {
			return err
		}
		if len(parts) == 0 {
			return fmt.Errorf("topic %q has no partitions", topic)
		}
		for _, p := range parts {
			if p.Leader == 0 || len(p.ISR) != len(c.Addrs) {
				return fmt.Errorf("topic %q partition %d: leader %d, in-sync replicas %v", topic, p.Partition, p.Leader, p.ISR)
			}
		}
	}
	return nil
}

// ErrNoLeader is returned by LeaderOtherThan while the partition has none.
var ErrNoLeader = errors.New("no leader")

// LeaderOtherThan returns nil once a partition of topic is led by a node
// other than old.
func (c *Cluster) LeaderOtherThan(ctx context.Context, topic string, partition, old int) error {
	l, err := c.Leader(ctx, topic, partition)
	if err != nil {
		return err
	}
	switch l {
	case 0:
		return fmt.Errorf("topic %q partition %d: %w", topic, partition, ErrNoLeader)
	case old:
		return fmt.Errorf("topic %q partition %d still led by node %d", topic, partition, old)
	}
	return nil
}
