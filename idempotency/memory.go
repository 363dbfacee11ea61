package idempotency

import (
	"context"
	"sync"
	"time"
)

// entryOverhead is about what an entry costs beyond its id and answer: the
// map slot, the entry, its fingerprint and list links.
const entryOverhead = 200

// Memory keeps records in this process, within a bound in bytes. Records in
// flight are never evicted (they are bounded by the requests being
// served); when the bound is reached, finished and unknown records are
// evicted oldest first, and expired ones are dropped as they are met.
type Memory struct {
	max     int64
	onEvict func()
	now     func() time.Time

	mu      sync.Mutex
	entries map[string]*entry
	bytes   int64
	// ended lists the finished and unknown entries, oldest first.
	head, tail *entry
	evicted    uint64
}

type entry struct {
	id    string
	rec   Record
	size  int64
	ended bool // in the list
	// done is closed when an entry in flight ends (finished, released or
	// forgotten).
	done       chan struct{}
	prev, next *entry
}

// MemoryConfig sets a Memory up.
type MemoryConfig struct {
	// MaxBytes bounds the records' memory.
	MaxBytes int64
	// OnEvict, when set, is called (under the store's lock) for each
	// record evicted for room before it expired.
	OnEvict func()
	// Now replaces time.Now, for tests.
	Now func() time.Time
}

// NewMemory returns an empty store.
func NewMemory(cfg MemoryConfig) *Memory {
	m := &Memory{max: cfg.MaxBytes, onEvict: cfg.OnEvict, now: cfg.Now, entries: map[string]*entry{}}
	if m.now == nil {
		m.now = time.Now
	}
	return m
}

// MemoryStats is what a Memory holds.
type MemoryStats struct {
	Records  int
	Bytes    int64
	MaxBytes int64
	// Evicted counts records evicted for room before they expired.
	Evicted uint64
}

// Stats returns what the store holds now.
func (m *Memory) Stats() MemoryStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return MemoryStats{Records: len(m.entries), Bytes: m.bytes, MaxBytes: m.max, Evicted: m.evicted}
}

// SetMaxBytes changes the bound; finished records are evicted, oldest
// first, the next time one is stored while the bound is exceeded.
func (m *Memory) SetMaxBytes(n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.max = n
}

// current returns id's live entry, dropping it when it has expired.
func (m *Memory) current(id string) *entry {
	e := m.entries[id]
	if e != nil && e.ended && !m.now().Before(e.rec.Expires) {
		m.remove(e)
		return nil
	}
	return e
}

func (m *Memory) remove(e *entry) {
	delete(m.entries, e.id)
	m.bytes -= e.size
	if e.ended {
		m.unlink(e)
	} else {
		close(e.done)
	}
}

func (m *Memory) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		m.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		m.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (m *Memory) Claim(_ context.Context, id string, fp Fingerprint) (Ticket, Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.current(id); e != nil {
		return nil, e.rec, nil
	}
	e := &entry{id: id, rec: Record{State: InFlight, Fingerprint: fp}, size: entryOverhead + int64(len(id)), done: make(chan struct{})}
	m.entries[id] = e
	m.bytes += e.size
	return &memoryTicket{m: m, e: e}, Record{}, nil
}

func (m *Memory) Wait(ctx context.Context, id string) error {
	m.mu.Lock()
	e := m.current(id)
	if e == nil || e.ended {
		m.mu.Unlock()
		return nil
	}
	done := e.done
	m.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Memory) Lookup(_ context.Context, id string) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.current(id); e != nil {
		return e.rec, nil
	}
	return Record{}, nil
}

func (m *Memory) Forget(_ context.Context, id string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.current(id)
	if e != nil {
		m.remove(e)
	}
	return e != nil, nil
}

// memoryTicket is a claim on an entry in flight.
type memoryTicket struct {
	m *Memory
	e *entry
}

func (t *memoryTicket) Finish(_ context.Context, state State, answer *Answer, ttl time.Duration) error {
	m, e := t.m, t.e
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.entries[e.id] != e {
		return ErrClaimLost // forgotten meanwhile
	}
	close(e.done)
	e.rec.State, e.rec.Answer, e.rec.Expires = state, answer, m.now().Add(ttl)
	size := entryOverhead + int64(len(e.id)) + answer.Size()
	m.bytes += size - e.size
	e.size, e.ended = size, true
	e.prev, m.tail = m.tail, e
	if e.prev != nil {
		e.prev.next = e
	} else {
		m.head = e
	}
	m.evict(e)
	return nil
}

// evict makes room, oldest record first, sparing the one just stored, kept
// (if need be without its body) whatever room the records in flight take.
func (m *Memory) evict(keep *entry) {
	now := m.now()
	for m.bytes > m.max && m.head != nil && m.head != keep {
		old := m.head
		if now.Before(old.rec.Expires) {
			m.evicted++
			if m.onEvict != nil {
				m.onEvict()
			}
		}
		m.remove(old)
	}
	if m.bytes > m.max && keep.rec.Answer != nil && !keep.rec.Answer.BodyOmitted && len(keep.rec.Answer.Body) > 0 {
		keep.rec.Answer = keep.rec.Answer.WithoutBody()
		size := entryOverhead + int64(len(keep.id)) + keep.rec.Answer.Size()
		m.bytes += size - keep.size
		keep.size = size
	}
	// Expired records at the head go too, while they are there.
	for m.head != nil && m.head != keep && !now.Before(m.head.rec.Expires) {
		m.remove(m.head)
	}
}

func (t *memoryTicket) Release(context.Context) error {
	m, e := t.m, t.e
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.entries[e.id] != e {
		return ErrClaimLost
	}
	m.remove(e)
	return nil
}

var _ Store = (*Memory)(nil)
