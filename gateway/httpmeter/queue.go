package httpmeter

import "sync"

// queue holds the events between the requests and the sender. Requests
// append to the batch being filled under a mutex held for one copy; the
// sender is woken once per full batch (and looks at the partial batch every
// FlushInterval), not once per event, which is what a channel would do each
// time its reader waits. Buffers are recycled, so after the first batches
// enqueueing allocates nothing.
type queue struct {
	mu        sync.Mutex
	cur       []record   // the batch being filled
	full      [][]record // batches ready to send, oldest first
	free      [][]record // emptied batches, for reuse
	held      int        // events in cur, full and in the sender's hands
	enqueued  uint64
	dropped   uint64 // queue full
	capacity  int
	batchSize int
	ready     chan struct{} // a full batch is waiting (capacity 1)
}

func newQueue(capacity, batchSize int) *queue {
	return &queue{capacity: capacity, batchSize: batchSize, ready: make(chan struct{}, 1)}
}

// put adds ev unless the queue holds capacity events already, and reports
// whether it did. It never waits for the sender.
func (q *queue) put(ev *record) bool {
	q.mu.Lock()
	if q.held >= q.capacity {
		q.dropped++
		q.mu.Unlock()
		return false
	}
	if q.cur == nil {
		q.cur = q.buffer()
	}
	q.cur = append(q.cur, *ev)
	q.held++
	q.enqueued++
	if len(q.cur) >= q.batchSize {
		q.full = append(q.full, q.cur)
		q.cur = nil
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
	q.mu.Unlock()
	return true
}

// buffer returns an empty batch buffer; q.mu is held.
func (q *queue) buffer() []record {
	if n := len(q.free); n > 0 {
		b := q.free[n-1]
		q.free = q.free[:n-1]
		return b
	}
	return make([]record, 0, q.batchSize)
}

// take returns the batches ready to send, and the partial one too when
// partial is set. The events stay counted as held until done.
func (q *queue) take(partial bool, dst [][]record) [][]record {
	q.mu.Lock()
	defer q.mu.Unlock()
	dst = append(dst, q.full...)
	clear(q.full)
	q.full = q.full[:0]
	if partial && len(q.cur) > 0 {
		dst = append(dst, q.cur)
		q.cur = nil
	}
	return dst
}

// done releases a batch the sender finished with.
func (q *queue) done(b []record) {
	clear(b) // drop the strings it points to
	q.mu.Lock()
	q.held -= len(b)
	q.free = append(q.free, b[:0])
	q.mu.Unlock()
}

// counts returns what Stats reports of the queue.
func (q *queue) counts() (enqueued, dropped uint64, held int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.enqueued, q.dropped, q.held
}
