package writeguard

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/writeguard/caddy-writeguard/reskey"
)

// A write the guard gave up on (write_timeout elapsed, the upstream cut the
// connection, the client left) may still be applied by the upstream later,
// after the lock is gone. A version learned in the meantime, by the next
// write's version check or a read, is the version before that late change:
// trusting it would let a write that never saw the late change overwrite it.
// So for a while after an abandoned write, every write of the resource asks
// the upstream, and when that time is over, whatever was learned during it
// is forgotten by the first write that comes. Resources are remembered by
// their path (see markOf), which a reload that changes the key keeps.

// DefaultRevalidateAbandoned is how long writes of a resource are checked
// against the upstream after a write of it was abandoned.
const DefaultRevalidateAbandoned = 10 * time.Minute

// maxAbandoned bounds the resources remembered; beyond it, every write is
// checked against the upstream until the oldest would have been let go.
const maxAbandoned = 10_000

// abandonedWrites remembers the resources whose write was abandoned, for the
// whole process: keys are the process's, like its locks.
type abandonedWrites struct {
	// n counts the marks, so that writes skip the lock when there are none.
	n  atomic.Int64
	mu sync.Mutex
	by map[string]abandonMark
	// overflowUntil: too many marks; every write is checked until then.
	overflowUntil time.Time
}

type abandonMark struct {
	// until is when writes stop being checked; drop is when the mark goes
	// whether a write came or not (what was learned during it has expired
	// from the cache by then).
	until, drop time.Time
}

// mark notes that a write of key was abandoned at now.
func (a *abandonedWrites) mark(key string, now time.Time, window, cacheTTL time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.by == nil {
		a.by = make(map[string]abandonMark)
	}
	if len(a.by) >= maxAbandoned {
		for k, m := range a.by {
			if now.After(m.drop) {
				delete(a.by, k)
			}
		}
	}
	m := abandonMark{until: now.Add(window), drop: now.Add(window + cacheTTL)}
	if len(a.by) >= maxAbandoned {
		a.overflowUntil = m.drop
	} else {
		a.by[key] = m
	}
	a.n.Store(int64(len(a.by)) + boolInt(!a.overflowUntil.IsZero()))
}

// any reports whether a write may have to ask the upstream at all: none
// does while no write was abandoned.
func (a *abandonedWrites) any() bool { return a.n.Load() != 0 }

// distrusts reports whether a write of key at now must ask the upstream.
// forget is called, once, when the window of key has just ended: what was
// learned during it must go; forgetAll likewise when the windows of more
// resources than could be remembered end.
func (a *abandonedWrites) distrusts(key string, now time.Time, forget func(), forgetAll func()) bool {
	if a.n.Load() == 0 {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.overflowUntil.IsZero() {
		if now.Before(a.overflowUntil) {
			return true
		}
		a.overflowUntil = time.Time{}
		forgetAll()
	}
	m, ok := a.by[key]
	if ok && !now.Before(m.until) {
		delete(a.by, key)
		forget()
	}
	a.n.Store(int64(len(a.by)) + boolInt(!a.overflowUntil.IsZero()))
	return ok
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// markOf names the resource of a request's path in the list: the coarsest
// canonical form, the same whatever the key, so that the mark outlives a
// reload that names resources otherwise. Paths that differ only in case
// or a trailing slash share a mark, which only costs them version checks.
func markOf(path string) string {
	return reskey.Path(path, reskey.Options{CaseInsensitive: true})
}
