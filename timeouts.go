package writeguard

import (
	"errors"
	"sync"
	"time"
)

// errWriteTimeout is the cause of a write's context ending at write_timeout.
var errWriteTimeout = errors.New("write_timeout elapsed before the upstream answered")

// writeTimeouts ends the writes of one handler that outlive write_timeout.
// The writes of a handler all have the same timeout, so they expire in the
// order they began: a list in that order and one timer, armed for the
// list's head, serve them all, where a timer per write would cost two
// allocations and two operations on the runtime's timer heap.
type writeTimeouts struct {
	d     time.Duration
	mu    sync.Mutex
	head  *write
	tail  *write
	timer *time.Timer
}

// epoch makes deadlines plain monotonic durations.
var epoch = time.Now()

// timeoutLinks places a write in its handler's list.
type timeoutLinks struct {
	prev, next *write
	deadline   time.Duration // since epoch
	listed     bool
}

// start bounds wr by the timeout from now on: once it elapses, wr's
// context ends with errWriteTimeout, unless stop was called first.
func (q *writeTimeouts) start(wr *write) {
	t := &wr.timeout
	q.mu.Lock()
	defer q.mu.Unlock()
	// Read under the lock, so that the list stays in order of deadline.
	t.deadline = time.Since(epoch) + q.d
	t.prev, t.next, t.listed = q.tail, nil, true
	if q.tail != nil {
		q.tail.timeout.next = wr
	} else {
		q.head = wr
	}
	q.tail = wr
	switch {
	case q.timer == nil:
		q.timer = time.AfterFunc(q.d, q.expire)
	case q.head == wr:
		// Nothing was listed: the timer, if it is still set, is set for a
		// write that has left.
		q.timer.Reset(q.d)
	}
}

// stop takes wr out of the list; its context no longer ends at the timeout.
func (q *writeTimeouts) stop(wr *write) {
	t := &wr.timeout
	q.mu.Lock()
	defer q.mu.Unlock()
	if !t.listed {
		return
	}
	q.unlink(wr)
}

func (q *writeTimeouts) unlink(wr *write) {
	t := &wr.timeout
	if t.prev != nil {
		t.prev.timeout.next = t.next
	} else {
		q.head = t.next
	}
	if t.next != nil {
		t.next.timeout.prev = t.prev
	} else {
		q.tail = t.prev
	}
	t.prev, t.next, t.listed = nil, nil, false
}

// expire ends the writes whose time is up, and sets the timer for the
// next. Left unset once nothing is listed, it costs nothing while no write
// runs.
func (q *writeTimeouts) expire() {
	now := time.Since(epoch)
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head != nil && q.head.timeout.deadline <= now {
		wr := q.head
		q.unlink(wr)
		wr.cancel(errWriteTimeout)
	}
	if q.head != nil {
		q.timer.Reset(q.head.timeout.deadline - now)
	}
}
