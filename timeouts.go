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
	// armed: the timer is set. It is set when a write arrives while it is
	// not, and again when it fires for as long as writes are listed; a
	// write that leaves early leaves it set, and its firing then finds
	// nothing to end. So the timer is reset once per timeout at most, not
	// once per write.
	armed bool
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
// context ends with errWriteTimeout, unless stop was called first. Writes
// that start at once may be listed a few microseconds out of the order of
// their deadlines; one is then ended that much late.
func (q *writeTimeouts) start(wr *write, now time.Time) {
	t := &wr.timeout
	t.deadline = now.Sub(epoch) + q.d
	q.mu.Lock()
	defer q.mu.Unlock()
	t.prev, t.next, t.listed = q.tail, nil, true
	if q.tail != nil {
		q.tail.timeout.next = wr
	} else {
		q.head = wr
	}
	q.tail = wr
	switch {
	case q.armed:
	case q.timer == nil:
		q.timer, q.armed = time.AfterFunc(q.d, q.expire), true
	default:
		q.timer.Reset(q.d)
		q.armed = true
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
	q.armed = q.head != nil
	if q.armed {
		q.timer.Reset(q.head.timeout.deadline - now)
	}
}
