// Package lockmgr provides mutual exclusion per string key.
//
// Two distinct keys never share a lock, so one goroutine may hold several
// keys without deadlocking on itself (unlike a fixed array of striped
// mutexes), and a key has an entry only while it is held or waited for, so
// memory follows the keys in use rather than every key ever seen.
//
// Waiting respects a context and is served in arrival order; the number of
// waiters per key can be capped so that a hot key sheds load instead of
// piling up goroutines.
package lockmgr

import (
	"context"
	"errors"
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// ErrTooManyWaiters is returned by Lock, without queueing, when the key
// already has as many waiters as the caller allows.
var ErrTooManyWaiters = errors.New("lockmgr: too many waiters for key")

// 256 shards keep two cores, or many more, from meeting on a shard mutex
// while costing only 16 KiB per Manager.
const numShards = 256

// entry is the lock of one key while anyone holds or waits for it.
type entry struct {
	// Once contended is set, sem holds a token while the key is held:
	// acquiring sends, releasing receives. A receive from a full channel
	// moves the oldest blocked sender's value straight into the buffer, so
	// the lock passes to waiters in arrival order and a newcomer cannot
	// barge in between.
	sem chan struct{}
	// contended records that the holder's token is in sem. The first holder
	// of a quiet key skips the channel, which would otherwise be most of the
	// cost of an uncontended Lock and Unlock; the first waiter puts the token
	// in on the holder's behalf, and from then on sem alone says who holds
	// the key. Guarded by the shard mutex.
	contended bool
	// refs counts the holder (or the waiter the lock was just handed to)
	// plus the waiters: everyone who may still touch the entry. Guarded by
	// the shard mutex; the entry leaves the map and returns to the pool only
	// at 0, so it is never recycled under someone's feet.
	refs int
}

var entryPool = sync.Pool{
	New: func() any { return &entry{sem: make(chan struct{}, 1)} },
}

// shard is padded to a cache line so that neighbouring shards locked from
// different cores do not invalidate each other.
type shard struct {
	mu sync.Mutex
	m  map[string]*entry
	// Counters for Held and Waiting live beside the mutex, on a line the
	// updating core owns anyway; a single process-wide pair would bounce
	// between cores on every operation.
	held    atomic.Int64
	waiting atomic.Int64
	_       [32]byte
}

// Manager hands out locks on string keys. Use New; the zero value is not
// usable.
type Manager struct {
	// First, so that the shards line up with cache lines in the large,
	// page-aligned allocation.
	shards [numShards]shard
	seed   maphash.Seed
}

// New returns an empty Manager.
func New() *Manager {
	m := &Manager{seed: maphash.MakeSeed()}
	for i := range m.shards {
		m.shards[i].m = make(map[string]*entry)
	}
	return m
}

func (m *Manager) shard(key string) *shard {
	return &m.shards[maphash.String(m.seed, key)%numShards]
}

// Lock blocks until the caller holds key or ctx is done. If ctx ends first,
// Lock returns ctx.Err() and the caller holds nothing; if the lock is granted
// in the same instant, the grant wins and Lock returns nil. When maxWaiters
// is positive and that many callers already wait for key (the holder not
// counted), Lock returns ErrTooManyWaiters at once. An uncontended key is
// taken even if ctx is already done.
func (m *Manager) Lock(ctx context.Context, key string, maxWaiters int) error {
	s := m.shard(key)
	s.mu.Lock()
	e := s.m[key]
	if e == nil {
		e = entryPool.Get().(*entry)
		s.m[key] = e
	}
	if e.refs == 0 {
		e.refs = 1
		s.held.Add(1)
		s.mu.Unlock()
		return nil
	}
	if maxWaiters > 0 && e.refs-1 >= maxWaiters {
		s.mu.Unlock()
		return ErrTooManyWaiters
	}
	if err := ctx.Err(); err != nil {
		// Not queueing at all keeps a dead request from racing the grant.
		s.mu.Unlock()
		return err
	}
	if !e.contended {
		// sem has been empty until now, so this cannot block.
		e.sem <- struct{}{}
		e.contended = true
	}
	// Counted before blocking, so the entry outlives our use of it.
	e.refs++
	s.waiting.Add(1)
	s.mu.Unlock()

	select {
	case e.sem <- struct{}{}:
		// Ours even if ctx ended meanwhile: the caller must Unlock.
		s.waiting.Add(-1)
		s.held.Add(1)
		return nil
	case <-ctx.Done():
	}
	// ctx won the select, so our send did not happen and the token, if
	// there is one, belongs to someone else.
	s.mu.Lock()
	s.waiting.Add(-1)
	last := s.unref(key, e) // the holder unlocked and no one else waits
	s.mu.Unlock()
	if last {
		recycle(e)
	}
	return ctx.Err()
}

// TryLock takes key if nobody holds or waits for it, and reports whether it
// did. It never blocks: callers try it before setting up a bounded wait,
// which uncontended keys then never need.
func (m *Manager) TryLock(key string) bool {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[key]
	if e != nil {
		return false // held, so refs > 0: an entry without refs is not in the map
	}
	e = entryPool.Get().(*entry)
	e.refs = 1
	s.m[key] = e
	s.held.Add(1)
	return true
}

// Unlock releases key, handing it to the longest waiter if there is one. It
// panics if key is not held, which is a programming error, as with
// sync.Mutex; like sync.Mutex it cannot tell which goroutine holds a key.
func (m *Manager) Unlock(key string) {
	s := m.shard(key)
	s.mu.Lock()
	e := s.m[key]
	// An uncontended entry exists only while held. Once contended, only
	// Unlock removes the token, always under the shard mutex, so an empty
	// channel here means nobody holds the key.
	if e == nil || e.contended && len(e.sem) == 0 {
		s.mu.Unlock()
		panic("lockmgr: unlock of unlocked key")
	}
	// Decrement before the handoff so that Held never counts two holders.
	s.held.Add(-1)
	if e.contended {
		<-e.sem
	}
	last := s.unref(key, e)
	s.mu.Unlock()
	if last {
		recycle(e)
	}
}

// unref drops one reference to key's entry e, with s.mu held. The last one
// removes the entry from the map; the caller then recycles it once s.mu is
// released.
func (s *shard) unref(key string, e *entry) (last bool) {
	e.refs--
	if e.refs != 0 {
		return false
	}
	delete(s.m, key)
	e.contended = false
	return true
}

// recycle returns an entry nobody can reach any more to the pool.
func recycle(e *entry) {
	if e.refs != 0 || e.contended || len(e.sem) != 0 {
		// Reusing it would leave some unrelated key locked forever.
		panic("lockmgr: recycling an entry that is still in use")
	}
	entryPool.Put(e)
}

// Len reports how many keys are held or waited for.
func (m *Manager) Len() int {
	n := 0
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// Held reports how many keys are held. It takes no lock, so under load the
// figure is a snapshot, fit for a gauge.
func (m *Manager) Held() int64 {
	var n int64
	for i := range m.shards {
		n += m.shards[i].held.Load()
	}
	return n
}

// Waiting reports how many callers are blocked in Lock. It takes no lock,
// so under load the figure is a snapshot, fit for a gauge.
func (m *Manager) Waiting() int64 {
	var n int64
	for i := range m.shards {
		n += m.shards[i].waiting.Load()
	}
	return n
}
