package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkBackupRestore1M measures, on one million events (and their
// minute rollups), a full backup, its restore into a fresh data directory
// (erasure log re-applied, tables checked, put in place), and as the
// baseline the engine copying the same tables with INSERT ... SELECT, all
// through the binary so that each figure includes one engine start, which
// is measured alone too (SELECT 1):
//
//	go test -run '^$' -bench BenchmarkBackupRestore1M -benchtime 1x ./cmd/meterline
func BenchmarkBackupRestore1M(b *testing.B) {
	e := newBackupEnv(b, "")
	e.insert("ev", 1_000_000)
	timeIt := func(args ...string) time.Duration {
		start := time.Now()
		e.ok(args...)
		return time.Since(start)
	}
	var boot, create, restore, copyT time.Duration
	var backupBytes, dataBytes int64
	for i := range b.N {
		boot += timeIt("sql", "SELECT 1")
		name := fmt.Sprintf("bench%d", i)
		create += timeIt("backup", "create", "--name", name, "--quiet", "--no-prune")
		backupBytes = treeBytes(filepath.Join(e.backupDir(), name))
		dataBytes = treeBytes(e.dataDir)
		restore += timeIt("backup", "restore", "--target", filepath.Join(b.TempDir(), "r"), "--quiet", name)
		copyT += timeIt("sql", fmt.Sprintf("CREATE TABLE copy%d_e AS events", i))
		copyT += timeIt("sql", fmt.Sprintf("INSERT INTO copy%d_e SELECT * FROM events", i))
		copyT += timeIt("sql", fmt.Sprintf("CREATE TABLE copy%d_m AS usage_minute", i))
		copyT += timeIt("sql", fmt.Sprintf("INSERT INTO copy%d_m SELECT * FROM usage_minute", i))
		// The copy took four engine starts, the others one each.
		copyT -= 3 * boot / time.Duration(i+1)
	}
	n := float64(b.N)
	b.ReportMetric(create.Seconds()/n, "create_s")
	b.ReportMetric(restore.Seconds()/n, "restore_s")
	b.ReportMetric(copyT.Seconds()/n, "copy_s")
	b.ReportMetric(boot.Seconds()/n, "boot_s")
	b.ReportMetric(create.Seconds()/copyT.Seconds(), "create/copy")
	b.ReportMetric(restore.Seconds()/copyT.Seconds(), "restore/copy")
	b.ReportMetric(float64(backupBytes)/1e6, "backup_MB")
	b.ReportMetric(float64(backupBytes)/float64(dataBytes), "backup/data_bytes")
}

func treeBytes(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
		return nil
	})
	return n
}
