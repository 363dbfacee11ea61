package writeguard

import (
	"context"
	"testing"
	"time"
)

// timedWrite is a write with a context that writeTimeouts can end.
func timedWrite() (*write, context.Context) {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &write{cancel: cancel}, ctx
}

// awaitTimeout waits for ctx to end, failing if it ends otherwise than by
// write_timeout or not within a bound far above any timeout used here.
func awaitTimeout(t *testing.T, ctx context.Context) {
	t.Helper()
	select {
	case <-ctx.Done():
		if cause := context.Cause(ctx); cause != errWriteTimeout {
			t.Fatalf("context ended with %v, want errWriteTimeout", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write_timeout never ended the write")
	}
}

// A write that outlives its timeout is ended with errWriteTimeout; one
// that stopped first is not, even when it was ahead in the list.
func TestWriteTimeoutsEndOnlyWritesStillRunning(t *testing.T) {
	q := &writeTimeouts{d: 20 * time.Millisecond}
	stopped, stoppedCtx := timedWrite()
	running, runningCtx := timedWrite()
	q.start(stopped, time.Now())
	q.start(running, time.Now())
	q.stop(stopped)
	awaitTimeout(t, runningCtx)
	if stoppedCtx.Err() != nil {
		t.Fatal("a write that stopped its timeout was ended")
	}
	// Stopping again, after the timer took it out, is harmless.
	q.stop(running)
	if q.head != nil || q.tail != nil {
		t.Fatal("the list is not empty once every write left it")
	}
}

// Once the list emptied, the timer is set again for the next write: a
// write that starts after the others left is still bounded.
func TestWriteTimeoutsRearmAfterTheListEmptied(t *testing.T) {
	q := &writeTimeouts{d: 10 * time.Millisecond}
	first, firstCtx := timedWrite()
	q.start(first, time.Now())
	awaitTimeout(t, firstCtx)
	quick, quickCtx := timedWrite()
	q.start(quick, time.Now())
	q.stop(quick)
	later, laterCtx := timedWrite()
	q.start(later, time.Now())
	awaitTimeout(t, laterCtx)
	if quickCtx.Err() != nil {
		t.Fatal("a write that stopped its timeout was ended")
	}
}

// Writes in the middle of the list leave it without disturbing the others:
// every write still running is ended, in any number.
func TestWriteTimeoutsManyWrites(t *testing.T) {
	q := &writeTimeouts{d: 30 * time.Millisecond}
	var running []context.Context
	var stopped []context.Context
	for i := range 50 {
		wr, ctx := timedWrite()
		q.start(wr, time.Now())
		if i%3 == 1 {
			q.stop(wr)
			stopped = append(stopped, ctx)
		} else {
			running = append(running, ctx)
		}
	}
	for _, ctx := range running {
		awaitTimeout(t, ctx)
	}
	for _, ctx := range stopped {
		if ctx.Err() != nil {
			t.Fatal("a write that stopped its timeout was ended")
		}
	}
}

// Starting and stopping the timeout of a write allocates nothing: the
// write carries its place in the list.
func TestWriteTimeoutsAllocateNothing(t *testing.T) {
	q := &writeTimeouts{d: time.Minute}
	wr, _ := timedWrite()
	q.start(wr, time.Now()) // the timer, once
	q.stop(wr)
	if n := testing.AllocsPerRun(100, func() { q.start(wr, time.Now()); q.stop(wr) }); n != 0 {
		t.Fatalf("start and stop allocated %v times", n)
	}
}
