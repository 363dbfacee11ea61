package etagcache

import (
	"fmt"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// instance is one ristretto cache and what goes with it. Its size is what a
// cache costs before it holds anything. For the number of entries it is
// given, ristretto allocates an admission sketch of ten 4-bit counters per
// entry in four rows and a bloom filter of about ten bits per counter, both
// rounded up to powers of two, and taught takes 8 bytes per entry: for a
// million entries 32, 16 and 8 MiB, 56 MiB in all before a single entry is
// stored.
//
// A cache therefore starts with an instance sized for initialEntries and,
// each time the entries it holds reach what its instance is sized for,
// replaces it by an empty one growFactor times as large, up to the size of
// the cache. What the smaller instance held is forgotten, which the cache
// may do at any moment, and reads teach the versions again. Stores made
// just before the swap go down with the old instance, as if ristretto had
// dropped them; a lookup that loaded the old instance just before may
// still find an entry there, which Get checks against the shared
// Generations like any other; a read stamped before a write cannot teach
// the new instance its older version, for the same reason.
type instance struct {
	rc *ristretto.Cache[string, *slot]
	// taught holds, per slot (by key hash), a fingerprint of the last
	// version a read taught (key, version, generation), so that the reads
	// that learn what is already known, nearly all of them, skip the
	// lookup. An eviction or a refused store clears its slot's fingerprint;
	// a fingerprint that outlives its entry only makes reads skip teaching
	// a version again, which the next write's version check does.
	taught     []atomic.Uint64
	taughtMask uint64
	// entries is how many entries the instance is sized for; growAt the
	// cost at which it is replaced by a larger one, 0 for the last.
	entries int64
	growAt  int64
	// retired is set once the instance is out of use: the evictions of its
	// closing are nobody's concern.
	retired atomic.Bool
}

const (
	// initialEntries sizes a new cache's first instance: about 1.2 MiB,
	// whatever the cache's bound.
	initialEntries = 1 << 14
	// growFactor is how much larger each instance is than the one it
	// replaces. A cache of a million entries goes through instances of 16k
	// and 128k entries: the versions it forgets on the way are at most
	// about a seventh of what it holds when full.
	growFactor = 8
	// growCheckShift samples the stores that look at the instance's fill:
	// one in 64 keys, by hash. Reading it takes ristretto's policy lock.
	growCheckShift = 58
)

// sized is the number of entries of an instance meant for n: n, or the
// cache's full size rather than a last step that would barely grow.
func (c *Cache) sized(n int64) int64 {
	if n >= c.expected/2 {
		return c.expected
	}
	return n
}

// newInstance returns an empty instance for the given number of entries.
// Every instance takes the cache's full bound as its own: only the
// accuracy of its admission policy, consulted when the cache is full,
// depends on its size.
func (c *Cache) newInstance(entries int64) (*instance, error) {
	in := &instance{entries: entries}
	if entries < c.expected {
		in.growAt = entries
		if c.byBytes {
			in.growAt *= EntryOverhead + typicalETagLen
		}
	}
	rc, err := ristretto.NewCache(&ristretto.Config[string, *slot]{
		// Ristretto's advice: ten counters per entry expected when full.
		NumCounters:        max(min(entries, math.MaxInt64/10)*10, 100),
		MaxCost:            c.maxCost,
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnEvict: func(it *ristretto.Item[*slot]) {
			in.untaught(it.Value)
			// Closing an instance empties it through the same callback;
			// that is not an eviction anybody should see in a graph.
			if !in.retired.Load() {
				c.evictions.Add(1)
			}
		},
		OnReject: func(it *ristretto.Item[*slot]) {
			in.untaught(it.Value)
			c.rejections.Add(1)
		},
		// An update of an existing key is applied at once, so a read that
		// stamped before a write could replace the write's valid entry with
		// its own dead one. Keep the newer of the two instead: entries of one
		// key share a stripe, so their generations compare.
		ShouldUpdate: func(cur, prev *slot) bool {
			c, p := cur.cur.Load(), prev.cur.Load()
			return c.hash != p.hash || c.gen >= p.gen
		},
	})
	if err != nil {
		return nil, fmt.Errorf("etagcache: %w", err)
	}
	in.rc = rc
	// One slot per entry the instance holds when full (a power of two, at
	// most 4M: 32 MiB), so that keys seldom share one.
	slots := uint64(1) << bits.Len64(uint64(min(max(entries, 1024), 1<<22))-1)
	in.taught, in.taughtMask = make([]atomic.Uint64, slots), slots-1
	return in, nil
}

// untaught clears the fingerprint of an entry that left the instance. A
// victim that ristretto's policy names after its entry was deleted comes
// without it (nil): nothing is left to clear but a fingerprint that, at
// worst, makes a read skip teaching a version again.
func (in *instance) untaught(s *slot) {
	if s != nil {
		in.taught[s.first.hash&in.taughtMask].Store(0)
	}
}

// grow replaces in, the live instance, by a larger one once it holds what it
// is sized for. The store that finds it full builds the new instance (a few
// milliseconds for a million entries); the others go on into in meanwhile.
func (c *Cache) grow(in *instance) {
	if c.maxCost-in.rc.RemainingCost() < in.growAt || !c.growing.CompareAndSwap(false, true) {
		return
	}
	defer c.growing.Store(false)
	if c.live.Load() != in {
		return // grown by another store, or closed
	}
	next, err := c.newInstance(c.sized(in.entries * growFactor))
	if err != nil {
		return // cannot happen: the first instance had the same settings
	}
	c.storing.Lock()
	swapped := c.live.CompareAndSwap(in, next)
	c.storing.Unlock()
	if !swapped {
		// Closed meanwhile; nobody else has seen next.
		next.retired.Store(true)
		next.rc.Close()
		return
	}
	c.retire(in)
}

// closeGrace is how long a lookup that began before an instance was retired
// may still run in it before it is shut down: lookups take microseconds.
const closeGrace = time.Second

// closing counts the instances still to be shut down.
var closing sync.WaitGroup

// Close releases the cache's goroutines and memory. Calls that come after it
// are harmless, and the cache then knows nothing; stores under way finish
// first, and ristretto itself is shut down closeGrace later, once lookups
// under way are done: a config reload retires a cache while requests of the
// old config still use it, and ristretto panics when used as it closes.
// From then on the Cache no longer refers to ristretto, so whatever still
// refers to the Cache keeps none of its memory. Calling Close more than
// once, even concurrently, is harmless.
func (c *Cache) Close() {
	c.storing.Lock()
	in := c.live.Swap(nil)
	c.storing.Unlock()
	if in != nil {
		c.retire(in)
	}
}

// retire shuts in down once lookups that may still be using it are done. No
// store can reach it any more: the caller took it out of live while holding
// storing exclusively.
func (c *Cache) retire(in *instance) {
	in.retired.Store(true)
	closing.Add(1)
	time.AfterFunc(closeGrace, func() {
		defer closing.Done()
		in.rc.Close()
	})
}
