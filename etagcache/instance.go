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

// instance is one ristretto cache and what goes with it: whatever a cache
// allocates in proportion to its size. For the number of entries it is
// given, ristretto allocates an admission sketch of ten 4-bit counters per
// entry in four rows and a bloom filter of about ten bits per counter, both
// rounded up to powers of two, and taught takes 8 bytes per entry: for a
// million entries 32, 16 and 8 MiB, 56 MiB in all before a single entry is
// stored.
type instance struct {
	rc *ristretto.Cache[string, entry]
	// taught holds, per slot (by key hash), a fingerprint of the last
	// version a read taught (key, version, generation), so that the reads
	// that learn what is already known, nearly all of them, skip the
	// lookup. An eviction or a refused store clears its slot's fingerprint;
	// a fingerprint that outlives its entry only makes reads skip teaching
	// a version again, which the next write's version check does.
	taught     []atomic.Uint64
	taughtMask uint64
	// retired is set once the instance is out of use: the evictions of its
	// closing are nobody's concern.
	retired atomic.Bool
}

// newInstance returns an empty instance for the given number of entries.
func (c *Cache) newInstance(entries int64) (*instance, error) {
	in := &instance{}
	rc, err := ristretto.NewCache(&ristretto.Config[string, entry]{
		// Ristretto's advice: ten counters per entry expected when full.
		NumCounters:        max(min(entries, math.MaxInt64/10)*10, 100),
		MaxCost:            c.maxCost,
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnEvict: func(it *ristretto.Item[entry]) {
			in.taught[it.Value.hash&in.taughtMask].Store(0)
			// Closing an instance empties it through the same callback;
			// that is not an eviction anybody should see in a graph.
			if !in.retired.Load() {
				c.evictions.Add(1)
			}
		},
		OnReject: func(it *ristretto.Item[entry]) {
			in.taught[it.Value.hash&in.taughtMask].Store(0)
			c.rejections.Add(1)
		},
		// An update of an existing key is applied at once, so a read that
		// stamped before a write could replace the write's valid entry with
		// its own dead one. Keep the newer of the two instead: entries of one
		// key share a stripe, so their generations compare.
		ShouldUpdate: func(cur, prev entry) bool { return cur.hash != prev.hash || cur.gen >= prev.gen },
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

// closeGrace is how long a lookup that began before the cache was closed
// may still run in its instance before it is shut down: lookups take
// microseconds.
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
