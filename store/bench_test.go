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
