package lockmgr

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// hang is how long anything may take before the test calls it stuck. It is
// far above any legitimate duration, so a busy machine cannot make it flake.
const hang = 5 * time.Second

// checkEmpty fails unless m has forgotten every key.
func checkEmpty(t *testing.T, m *Manager) {
	t.Helper()
	if n := m.Len(); n != 0 {
		t.Errorf("Len() = %d, want 0", n)
	}
	if n := m.Held(); n != 0 {
		t.Errorf("Held() = %d, want 0", n)
	}
	if n := m.Waiting(); n != 0 {
		t.Errorf("Waiting() = %d, want 0", n)
	}
}

// eventually polls cond until it holds, failing the test after hang.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hang)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// lockFrame is how Lock appears in a goroutine dump.
var lockFrame = runtime.FuncForPC(reflect.ValueOf((*Manager).Lock).Pointer()).Name() + "("

// parkedInLock counts goroutines blocked inside Lock's select. Waiting()
// rises just before a waiter blocks; only a parked goroutine is certain to
// be in the channel's queue, which is what ordering tests need.
func parkedInLock() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "[select") && strings.Contains(g, lockFrame) {
			count++
		}
	}
	return count
}

// lockAsync calls Lock in a new goroutine and delivers its result.
func lockAsync(ctx context.Context, m *Manager, key string, maxWaiters int) <-chan error {
	done := make(chan error, 1)
	go func() { done <- m.Lock(ctx, key, maxWaiters) }()
	return done
}

// await returns the result of lockAsync, failing the test if it hangs.
func await(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(hang):
		t.Fatal("Lock did not return")
		return nil
	}
}

// wait is wg.Wait, failing the test if that hangs.
func wait(t *testing.T, wg *sync.WaitGroup) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(hang):
		t.Fatal("goroutines did not finish")
	}
}

// lockNow takes key, failing the test if that blocks.
func lockNow(t *testing.T, m *Manager, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	if err := m.Lock(ctx, key, 0); err != nil {
		t.Fatalf("Lock(%q) = %v, want nil", key, err)
	}
}

func TestMutualExclusion(t *testing.T) {
	m := New()
	const (
		keys       = 3
		goroutines = 12
		rounds     = 300
	)
	var (
		counts [keys]int // guarded by the key's lock only
		inside [keys]atomic.Int32
		wg     sync.WaitGroup
	)
	for g := range goroutines {
		wg.Go(func() {
			for i := range rounds {
				k := (g + i) % keys
				key := fmt.Sprintf("/res/%d", k)
				if err := m.Lock(context.Background(), key, 0); err != nil {
					t.Error(err)
					return
				}
				if n := inside[k].Add(1); n != 1 {
					t.Errorf("%d goroutines inside %s at once", n, key)
				}
				c := counts[k]
				runtime.Gosched() // widen the window for a lost update
				counts[k] = c + 1
				inside[k].Add(-1)
				m.Unlock(key)
			}
		})
	}
	wait(t, &wg)
	total := 0
	for _, c := range counts {
		total += c
	}
	if total != goroutines*rounds {
		t.Errorf("counted %d increments, want %d", total, goroutines*rounds)
	}
	checkEmpty(t, m)
}

func TestDistinctKeysDoNotBlock(t *testing.T) {
	m := New()
	lockNow(t, m, "/a")
	lockNow(t, m, "/b")

	// Keys that land in the same shard must still be independent: that is
	// what separates this from a striped array of mutexes.
	s := m.shard("/a")
	var sibling string
	for i := 0; sibling == ""; i++ {
		if k := fmt.Sprintf("/sibling/%d", i); m.shard(k) == s {
			sibling = k
		}
	}
	lockNow(t, m, sibling)

	// One goroutine holding many keys at once, far more than there are
	// shards, must not deadlock on itself.
	keys := make([]string, 4*numShards)
	for i := range keys {
		keys[i] = fmt.Sprintf("/many/%d", i)
		lockNow(t, m, keys[i])
	}
	if got, want := m.Held(), int64(len(keys)+3); got != want {
		t.Errorf("Held() = %d, want %d", got, want)
	}
	for _, k := range keys {
		m.Unlock(k)
	}
	m.Unlock(sibling)
	m.Unlock("/b")
	m.Unlock("/a")
	checkEmpty(t, m)
}

// TestFIFO asserts strict arrival order: each waiter is parked in the
// channel's queue before the next one starts, and the channel wakes blocked
// senders first-in, first-out.
func TestFIFO(t *testing.T) {
	m := New()
	const key, waiters = "/queue", 8
	lockNow(t, m, key)

	var order []int // appended while holding key
	var wg sync.WaitGroup
	for i := range waiters {
		wg.Go(func() {
			if err := m.Lock(context.Background(), key, 0); err != nil {
				t.Error(err)
				return
			}
			order = append(order, i)
			m.Unlock(key)
		})
		eventually(t, fmt.Sprintf("waiter %d to park", i), func() bool {
			return m.Waiting() == int64(i+1) && parkedInLock() == i+1
		})
	}
	m.Unlock(key)
	wait(t, &wg)

	for i, got := range order {
		if got != i {
			t.Fatalf("grant order %v, want 0..%d in order", order, waiters-1)
		}
	}
	if len(order) != waiters {
		t.Fatalf("%d waiters granted, want %d", len(order), waiters)
	}
	checkEmpty(t, m)
}

func TestTimeout(t *testing.T) {
	m := New()
	const key = "/slow"
	lockNow(t, m, key)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := await(t, lockAsync(ctx, m, key, 0)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock = %v, want %v", err, context.DeadlineExceeded)
	}
	if n := m.Waiting(); n != 0 {
		t.Errorf("Waiting() = %d after timeout, want 0", n)
	}
	if n := m.Len(); n != 1 {
		t.Errorf("Len() = %d while held, want 1", n)
	}

	m.Unlock(key)
	checkEmpty(t, m)
	lockNow(t, m, key)
	m.Unlock(key)
	checkEmpty(t, m)
}

func TestCancel(t *testing.T) {
	m := New()
	const key = "/cancel"
	lockNow(t, m, key)

	ctx, cancel := context.WithCancel(context.Background())
	done := lockAsync(ctx, m, key, 0)
	eventually(t, "the waiter to queue", func() bool { return m.Waiting() == 1 })
	cancel()
	if err := await(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock = %v, want %v", err, context.Canceled)
	}
	if n := m.Waiting(); n != 0 {
		t.Errorf("Waiting() = %d after cancel, want 0", n)
	}

	// The holder is unaffected, and the cancelled waiter did not pick up
	// the lock on its way out: the key is free once the holder lets go.
	m.Unlock(key)
	checkEmpty(t, m)
	lockNow(t, m, key)
	m.Unlock(key)
	checkEmpty(t, m)
}

func TestDoneContextDoesNotQueue(t *testing.T) {
	m := New()
	const key = "/done"
	lockNow(t, m, key)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := await(t, lockAsync(ctx, m, key, 0)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock = %v, want %v", err, context.Canceled)
	}
	m.Unlock(key)
	checkEmpty(t, m)
}

// TestGrantRacesCancel unlocks at the same instant a waiter's context ends.
// Whatever Lock returns must be the truth: nil means the caller holds the
// key, an error means nobody does once the holder is gone.
func TestGrantRacesCancel(t *testing.T) {
	m := New()
	const key = "/race"
	var won, lost int
	for range 500 {
		lockNow(t, m, key)
		ctx, cancel := context.WithCancel(context.Background())
		done := lockAsync(ctx, m, key, 0)
		eventually(t, "the waiter to queue", func() bool { return m.Waiting() == 1 })
		go cancel()
		m.Unlock(key)
		if err := await(t, done); err == nil {
			won++
			if m.Held() != 1 {
				t.Fatalf("Lock returned nil but Held() = %d", m.Held())
			}
			m.Unlock(key)
		} else {
			lost++
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Lock = %v, want nil or %v", err, context.Canceled)
			}
		}
		checkEmpty(t, m)
		lockNow(t, m, key)
		m.Unlock(key)
	}
	t.Logf("grant won %d times, cancel won %d times", won, lost)
	checkEmpty(t, m)
}

func TestMaxWaiters(t *testing.T) {
	m := New()
	const key, limit = "/busy", 2
	lockNow(t, m, key)

	var wg sync.WaitGroup
	for range limit {
		wg.Go(func() {
			if err := m.Lock(context.Background(), key, limit); err != nil {
				t.Errorf("queued Lock = %v", err)
				return
			}
			m.Unlock(key)
		})
	}
	eventually(t, "the waiters to queue", func() bool { return m.Waiting() == limit })

	// Had it queued, the background context would keep it waiting until
	// await gives up.
	if err := await(t, lockAsync(context.Background(), m, key, limit)); !errors.Is(err, ErrTooManyWaiters) {
		t.Fatalf("Lock beyond the limit = %v, want %v", err, ErrTooManyWaiters)
	}
	if n := m.Waiting(); n != limit {
		t.Errorf("Waiting() = %d after rejection, want %d", n, limit)
	}

	// A higher limit, or none, still queues.
	for _, higher := range []int{limit + 1, 0} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		if err := m.Lock(ctx, key, higher); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Lock with maxWaiters %d = %v, want %v", higher, err, context.DeadlineExceeded)
		}
		cancel()
	}

	m.Unlock(key)
	wait(t, &wg)
	checkEmpty(t, m)
}

func TestEntriesGoneAfterRelease(t *testing.T) {
	m := New()
	const keys = 2000
	var wg sync.WaitGroup
	for i := range keys {
		key := fmt.Sprintf("/items/%d", i)
		lockNow(t, m, key)
		switch i % 4 {
		case 0: // no waiter
		case 1: // a waiter whose deadline comes in the middle of things
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%7)*50*time.Microsecond)
			wg.Go(func() {
				defer cancel()
				if err := m.Lock(ctx, key, 0); err == nil {
					m.Unlock(key)
				}
			})
		case 2: // a queued waiter cancelled as the holder lets go
			ctx, cancel := context.WithCancel(context.Background())
			wg.Go(func() {
				if err := m.Lock(ctx, key, 0); err == nil {
					m.Unlock(key)
				}
			})
			eventually(t, "a waiter", func() bool { return waitersOf(m, key) == 1 })
			wg.Go(cancel)
		case 3: // a queued waiter that gets the lock after us
			wg.Go(func() {
				if err := m.Lock(context.Background(), key, 0); err != nil {
					t.Error(err)
					return
				}
				m.Unlock(key)
			})
			eventually(t, "a waiter", func() bool { return waitersOf(m, key) == 1 })
		}
		wg.Go(func() { m.Unlock(key) })
	}
	wait(t, &wg)
	if n := m.Len(); n != 0 {
		t.Fatalf("Len() = %d after all keys were released, want 0", n)
	}
	checkEmpty(t, m)
}

// waitersOf reports how many callers queue for key behind its holder.
func waitersOf(m *Manager, key string) int {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[key]; e != nil {
		return e.refs - 1
	}
	return 0
}

func TestUnlockNotHeldPanics(t *testing.T) {
	m := New()
	mustPanic := func(name string, f func()) {
		t.Helper()
		// Run apart, so that a hang instead of a panic fails too.
		panicked := make(chan bool, 1)
		go func() {
			defer func() { panicked <- recover() != nil }()
			f()
		}()
		select {
		case ok := <-panicked:
			if !ok {
				t.Errorf("%s did not panic", name)
			}
		case <-time.After(hang):
			t.Fatalf("%s hung", name)
		}
	}
	mustPanic("Unlock of an unknown key", func() { m.Unlock("/never") })
	lockNow(t, m, "/once")
	m.Unlock("/once")
	mustPanic("second Unlock", func() { m.Unlock("/once") })

	// The key is waited for but, between holders, held by no one.
	lockNow(t, m, "/between")
	s := m.shard("/between")
	s.mu.Lock()
	e := s.m["/between"]
	// What Lock does for a waiter that has queued but not yet reached the
	// channel.
	e.sem <- struct{}{}
	e.contended = true
	e.refs++
	s.mu.Unlock()
	m.Unlock("/between")
	mustPanic("Unlock between holders", func() { m.Unlock("/between") })
	// Undo the fake waiter; the entry is dropped rather than recycled.
	s.mu.Lock()
	e.refs--
	delete(s.m, "/between")
	s.mu.Unlock()

	// A panic must not leave a shard locked.
	lockNow(t, m, "/never")
	m.Unlock("/never")
	checkEmpty(t, m)
}

// TestStress mixes holders, timeouts, cancellations and the waiter limit on
// a few keys, checking exclusion all along and that nothing is left over.
func TestStress(t *testing.T) {
	m := New()
	const (
		keys       = 8
		goroutines = 8
		ops        = 500
	)
	var inside [keys]atomic.Int32
	var granted, refused atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for g := range goroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range ops {
				k := rng.IntN(keys)
				key := fmt.Sprintf("/stress/%d", k)
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				switch rng.IntN(4) {
				case 0:
					ctx, cancel = context.WithTimeout(ctx, time.Duration(rng.IntN(200))*time.Microsecond)
				case 1:
					ctx, cancel = context.WithCancel(ctx)
					go func(d time.Duration) { time.Sleep(d); cancel() }(time.Duration(rng.IntN(200)) * time.Microsecond)
				}
				err := m.Lock(ctx, key, rng.IntN(4))
				if err != nil {
					cancel()
					if !errors.Is(err, ErrTooManyWaiters) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("Lock = %v", err)
					}
					refused.Add(1)
					continue
				}
				granted.Add(1)
				if n := inside[k].Add(1); n != 1 {
					t.Errorf("%d goroutines inside %s at once", n, key)
				}
				if rng.IntN(2) == 0 {
					runtime.Gosched()
				}
				inside[k].Add(-1)
				m.Unlock(key)
				cancel()
			}
		})
	}
	wait(t, &wg)
	t.Logf("%d granted, %d refused in %v", granted.Load(), refused.Load(), time.Since(start))
	checkEmpty(t, m)
}

func TestTryLock(t *testing.T) {
	m := New()
	const key = "/try"
	if !m.TryLock(key) {
		t.Fatal("TryLock of a free key failed")
	}
	if m.TryLock(key) {
		t.Fatal("TryLock of a held key succeeded")
	}
	if m.Held() != 1 {
		t.Fatalf("Held %d", m.Held())
	}
	// A waiter queued behind the holder goes first: TryLock never barges.
	got := make(chan struct{})
	go func() {
		if err := m.Lock(context.Background(), key, 0); err != nil {
			t.Error(err)
		}
		close(got)
	}()
	eventually(t, "the waiter to park", func() bool { return m.Waiting() == 1 })
	m.Unlock(key)
	<-got
	if m.TryLock(key) {
		t.Fatal("TryLock took a key handed to a waiter")
	}
	m.Unlock(key)
	checkEmpty(t, m)

	// sync.Pool drops entries at random under the race detector.
	if n := testing.AllocsPerRun(1000, func() {
		m.TryLock(key)
		m.Unlock(key)
	}); n != 0 && !raceDetector {
		t.Errorf("TryLock+Unlock: %v allocations, want 0", n)
	}
}
