//go:build !noembedded

package store

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkInsertEvents inserts batches of 10,000 event rows into the
// events table (embedded engine) as Native data in a memory file (the
// default on Linux), as a Native file in /dev/shm or the temporary
// directory (elsewhere) and as inline JSON (the fallback), in the same run,
// and reports rows per second:
//
//	go test ./store -run '^$' -bench InsertEvents -benchtime 30x -count 3
func BenchmarkInsertEvents(b *testing.B) {
	for _, format := range []string{"native", "native-file", "json"} {
		b.Run(format, func(b *testing.B) {
			c := embeddedConnForTest(b, Config{})
			c.(*embeddedConn).jsonInserts = format == "json"
			c.(*embeddedConn).fileInserts = format == "native-file"
			migrate(b, c)
			const batchSize = 10_000
			at := time.Now().UTC().Add(-time.Hour).Truncate(time.Millisecond)
			batch := make([][]any, batchSize)
			for i := range batch {
				batch[i] = eventRow("", at.Add(time.Duration(i)*time.Millisecond), i)
			}
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				b.StopTimer()
				for i := range batch {
					batch[i][0] = fmt.Sprintf("bench-%d-%d", n, i)
				}
				b.StartTimer()
				if err := c.Insert(testCtx(b), "events", eventColumns, batch, InsertOptions{DedupToken: fmt.Sprintf("bench-%d", n)}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// BenchmarkInsertMemFileVsFile inserts the same 10,000-row batches through
// a memory file and through a file in /dev/shm (or the temporary
// directory), alternating the two in every iteration (and which goes
// first) so that both see the same load, and reports each path's rows per
// second and their ratio (file time / memory-file time: above 1 means the
// memory file is faster):
//
//	go test ./store -run '^$' -bench MemFileVsFile -benchtime 40x -count 3
func BenchmarkInsertMemFileVsFile(b *testing.B) {
	mem := embeddedConnForTest(b, Config{})
	file := embeddedConnForTest(b, Config{})
	file.(*embeddedConn).fileInserts = true
	migrate(b, mem)
	migrate(b, file)
	const batchSize = 10_000
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Millisecond)
	batch := make([][]any, batchSize)
	for i := range batch {
		batch[i] = eventRow("", at.Add(time.Duration(i)*time.Millisecond), i)
	}
	var memTime, fileTime time.Duration
	insert := func(c Conn, n int) time.Duration {
		start := time.Now()
		if err := c.Insert(testCtx(b), "events", eventColumns, batch, InsertOptions{DedupToken: fmt.Sprintf("bench-%d", n)}); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		b.StopTimer()
		for i := range batch {
			batch[i][0] = fmt.Sprintf("bench-%d-%d", n, i)
		}
		b.StartTimer()
		if n%2 == 0 {
			memTime += insert(mem, n)
			fileTime += insert(file, n)
		} else {
			fileTime += insert(file, n)
			memTime += insert(mem, n)
		}
	}
	rows := float64(b.N * batchSize)
	b.ReportMetric(rows/memTime.Seconds(), "memfile-rows/s")
	b.ReportMetric(rows/fileTime.Seconds(), "file-rows/s")
	b.ReportMetric(fileTime.Seconds()/memTime.Seconds(), "file/memfile")
}
