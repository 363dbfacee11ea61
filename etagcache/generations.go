package etagcache

import (
	"hash/maphash"
	"math/bits"
	"sync/atomic"
)

// DefaultStripes is the number of counters of the Generations that New
// creates when Config.Generations is nil, and a sensible size for the one
// shared Generations of a process. 1<<18 counters take 2 MiB; with a million
// cached resources, a write invalidates about four unrelated entries.
const DefaultStripes = 1 << 18

// maxStripes keeps a mistaken size from allocating the machine away.
const maxStripes = 1 << 30

// Generations is a fixed array of counters, one of which every key maps to by
// hash. A write to a key advances its counter, which invalidates every entry
// stamped with an earlier value of that counter, in every Cache sharing the
// Generations. It never shrinks nor grows, so memory does not depend on the
// number of keys ever written.
//
// The counters are not padded to cache lines: reads of unrelated stripes
// vastly outnumber writes here, and a dense array keeps more of it in the CPU
// cache for the loads that Get does on every hit (see BenchmarkGet and
// BenchmarkGetPaddedStripes).
type Generations struct {
	seed    maphash.Seed
	mask    uint64
	stripes []atomic.Uint64
}

// NewGenerations returns Generations with the given number of stripes rounded
// up to a power of two (at least one, at most 1<<30).
func NewGenerations(stripes int) *Generations {
	n := min(max(stripes, 1), maxStripes)
	n = 1 << bits.Len(uint(n-1))
	return &Generations{
		seed:    maphash.MakeSeed(),
		mask:    uint64(n - 1),
		stripes: make([]atomic.Uint64, n),
	}
}

// Len reports the number of stripes.
func (g *Generations) Len() int { return len(g.stripes) }

// stripe returns the counter that key maps to.
func (g *Generations) stripe(key string) *atomic.Uint64 {
	return &g.stripes[g.hash(key)&g.mask]
}

// hash is key's hash, whose low bits choose its stripe.
func (g *Generations) hash(key string) uint64 { return maphash.String(g.seed, key) }

// Stamp captures the current generation of key. Take it before asking the
// upstream for the resource, and store the answer with Cache.Learn: if a
// write is recorded in between, the answer will never be served.
func (g *Generations) Stamp(key string) Stamp {
	ctr := g.stripe(key)
	return Stamp{ctr: ctr, gen: ctr.Load()}
}

// Stamp is the generation of one key's stripe at one moment. The zero Stamp
// is never valid: Learn ignores it. A Stamp is only meaningful for the key it
// was taken for and in caches sharing the Generations it came from; Learn
// ignores it otherwise.
type Stamp struct {
	ctr *atomic.Uint64
	gen uint64
}

// current reports whether no write to the stamp's stripe happened since it
// was taken.
func (s Stamp) current() bool {
	return s.ctr != nil && s.ctr.Load() == s.gen
}

// AdvanceAll advances every counter, which invalidates every entry of every
// Cache sharing the Generations: for the rare event that makes everything
// cached suspect. It takes about a millisecond for DefaultStripes.
func (g *Generations) AdvanceAll() {
	for i := range g.stripes {
		g.stripes[i].Add(1)
	}
}
