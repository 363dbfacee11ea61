package lockmgr

import (
	"context"
	"fmt"
	"hash/maphash"
	"math/bits"
	"sync"
	"sync/atomic"
	"testing"
)

const benchKeyCount = 1_000_000

// benchKeys is built once: a million distinct resource paths, spread
// through memory as a server's request paths would be.
var benchKeys = sync.OnceValue(func() []string {
	keys := make([]string, benchKeyCount)
	for i := range keys {
		keys[i] = fmt.Sprintf("/api/items/%06d", i)
	}
	return keys
})

// seq hands each parallel benchmark goroutine a distinct RNG seed.
var seq atomic.Uint64

// rng is a wyrand generator: a multiply and an add, far cheaper than the
// operations measured, and no shared state between goroutines.
type rng uint64

func newRNG() rng { return rng(seq.Add(1) * 0x9e3779b97f4a7c15) }

// index returns a uniform index below benchKeyCount.
func (r *rng) index() int {
	*r += 0xa0761d6478bd642f
	hi, lo := bits.Mul64(uint64(*r), uint64(*r^0xe7037ed1a0b428db))
	n, _ := bits.Mul64(hi^lo, benchKeyCount)
	return int(n)
}

func BenchmarkLockUnlockHotKey(b *testing.B) {
	m := New()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Lock(ctx, "/api/items/42", 0); err != nil {
			b.Fatal(err)
		}
		m.Unlock("/api/items/42")
	}
}

func BenchmarkLockUnlockRandomKeys(b *testing.B) {
	keys := benchKeys()
	m := New()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := newRNG()
		for pb.Next() {
			key := keys[r.index()]
			if err := m.Lock(ctx, key, 0); err != nil {
				b.Fatal(err)
			}
			m.Unlock(key)
		}
	})
}

// BenchmarkBaselineShardedMutexMap is the floor for the benchmark above: the
// same keys, hash and shard layout, and the same two trips to the shard that
// Lock and Unlock make (insert an entry, then delete it), but no pool,
// semaphore or counters. Comparing the two isolates what lockmgr adds.
func BenchmarkBaselineShardedMutexMap(b *testing.B) {
	keys := benchKeys()
	var base struct {
		shards [numShards]shard
		seed   maphash.Seed
	}
	base.seed = maphash.MakeSeed()
	for i := range base.shards {
		base.shards[i].m = make(map[string]*entry)
	}
	e := new(entry)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := newRNG()
		for pb.Next() {
			key := keys[r.index()]
			s := &base.shards[maphash.String(base.seed, key)%numShards]

			s.mu.Lock()
			if s.m[key] == nil {
				s.m[key] = e
			}
			s.mu.Unlock()

			s.mu.Lock()
			if s.m[key] != nil {
				delete(s.m, key)
			}
			s.mu.Unlock()
		}
	})
}
