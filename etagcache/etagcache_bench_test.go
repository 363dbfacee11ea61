package etagcache

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// The benchmarks draw keys at random from a million resources, all of them
// cached, so that memory latency weighs as it does in a full cache; every
// figure must be read against the bare ristretto baseline of the same run.
const benchN = 1_000_000

const benchTTL = time.Hour

var benchVersion = Version{Exists: true, ETag: `"5d41402abc4b2a76b9719d911017c592"`, LastModified: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}

var benchKeys = sync.OnceValue(func() []string {
	keys := make([]string, benchN)
	for i := range keys {
		keys[i] = fmt.Sprintf("example.com/api/items/%06d", i)
	}
	return keys
})

// benchOrder is a random permutation of the key indexes: reading it in
// sequence is cheap, the keys it points at are not.
var benchOrder = sync.OnceValue(func() []uint32 {
	order := make([]uint32, benchN)
	for i := range order {
		order[i] = uint32(i)
	}
	r := rand.New(rand.NewPCG(1, 2))
	r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	return order
})

// benchCache is a full Cache shared by the benchmarks that leave every entry
// valid: filling it takes seconds.
var benchCache = sync.OnceValue(fullCache)

// recordCache is BenchmarkRecord's own: a write invalidates the entries of
// other keys in its stripe, which would turn later Gets into misses.
var recordCache = sync.OnceValue(fullCache)

func fullCache() *Cache {
	c, err := New(Config{MaxEntries: benchN, TTL: benchTTL, Generations: NewGenerations(DefaultStripes)})
	if err != nil {
		panic(err)
	}
	// Learned, not recorded: a write would invalidate the entries of the
	// keys already stored in its stripe. The cache forgets what it holds
	// each time it grows: later passes learn what the first one lost.
	for pass := 0; pass < 3 && c.Stats().Cost < benchN; pass++ {
		for i, k := range benchKeys() {
			c.Learn(k, c.Stamp(k), benchVersion)
			if i%10_000 == 0 {
				c.Wait()
			}
		}
		c.Wait()
	}
	// The instances it outgrew are shut down a moment later.
	closing.Wait()
	return c
}

// baselineValue stands for what a bare ristretto cache would hold: a
// pointer to a version.
type baselineValue struct {
	v Version
}

// benchBaseline is a bare ristretto cache configured and filled as
// benchCache is. BenchmarkGetVsBaseline needs two, lest one of its baselines
// find the other's data in the CPU cache.
var (
	benchBaseline  = sync.OnceValue(fullBaseline)
	benchBaseline2 = sync.OnceValue(fullBaseline)
)

func fullBaseline() *ristretto.Cache[string, *baselineValue] {
	rc, err := ristretto.NewCache(&ristretto.Config[string, *baselineValue]{
		NumCounters:        10 * benchN,
		MaxCost:            benchN,
		BufferItems:        64,
		IgnoreInternalCost: true,
	})
	if err != nil {
		panic(err)
	}
	for i, k := range benchKeys() {
		rc.SetWithTTL(k, &baselineValue{v: benchVersion}, 1, benchTTL)
		if i%10_000 == 0 {
			rc.Wait()
		}
	}
	rc.Wait()
	return rc
}

// reportHits makes a benchmark that silently measured misses visible.
func reportHits(b *testing.B, hits, total uint64) {
	if total > 0 {
		b.ReportMetric(float64(hits)/float64(total), "hits/op")
	}
}

var sinkVersion Version

func BenchmarkGet(b *testing.B) {
	c, keys, order := benchCache(), benchKeys(), benchOrder()
	b.ReportAllocs()
	var hits, i uint64
	for b.Loop() {
		v, ok := c.Get(keys[order[i%benchN]])
		if ok {
			hits++
			sinkVersion = v
		}
		i++
	}
	reportHits(b, hits, i)
}

var sinkPtr *baselineValue

func BenchmarkBaselineRistrettoGet(b *testing.B) {
	rc, keys, order := benchBaseline(), benchKeys(), benchOrder()
	b.ReportAllocs()
	var hits, i uint64
	for b.Loop() {
		p, ok := rc.Get(keys[order[i%benchN]])
		if ok {
			hits++
			sinkPtr = p
		}
		i++
	}
	reportHits(b, hits, i)
}

// BenchmarkBaselineRistrettoGetValue also reads the value the pointer leads
// to, as any user of the bare cache would.
func BenchmarkBaselineRistrettoGetValue(b *testing.B) {
	rc, keys, order := benchBaseline(), benchKeys(), benchOrder()
	b.ReportAllocs()
	var hits, i uint64
	for b.Loop() {
		p, ok := rc.Get(keys[order[i%benchN]])
		if ok {
			hits++
			sinkVersion = p.v
		}
		i++
	}
	reportHits(b, hits, i)
}

func BenchmarkGetParallel(b *testing.B) {
	c, keys, order := benchCache(), benchKeys(), benchOrder()
	b.ReportAllocs()
	var hits, total, seed atomic.Uint64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var h, n uint64
		i := seed.Add(benchN / 7)
		for pb.Next() {
			if _, ok := c.Get(keys[order[i%benchN]]); ok {
				h++
			}
			i++
			n++
		}
		hits.Add(h)
		total.Add(n)
	})
	reportHits(b, hits.Load(), total.Load())
}

func BenchmarkBaselineRistrettoGetParallel(b *testing.B) {
	rc, keys, order := benchBaseline(), benchKeys(), benchOrder()
	b.ReportAllocs()
	var hits, total, seed atomic.Uint64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var h, n uint64
		i := seed.Add(benchN / 7)
		for pb.Next() {
			if _, ok := rc.Get(keys[order[i%benchN]]); ok {
				h++
			}
			i++
			n++
		}
		hits.Add(h)
		total.Add(n)
	})
	reportHits(b, hits.Load(), total.Load())
}

func BenchmarkStamp(b *testing.B) {
	c, keys, order := benchCache(), benchKeys(), benchOrder()
	b.ReportAllocs()
	var i uint64
	for b.Loop() {
		c.Stamp(keys[order[i%benchN]])
		i++
	}
}

// learnAlways is Learn without its lookup: it stores whatever it is given.
func learnAlways(c *Cache, key string, s Stamp, v Version) {
	h := c.gens.hash(key)
	if s.ctr != &c.gens.stripes[h&c.gens.mask] || !s.current() {
		return
	}
	c.store(key, newEntry(h, s.gen, v))
}

func BenchmarkLearn(b *testing.B) {
	keys, order := benchKeys(), benchOrder()
	learners := []struct {
		name  string
		learn func(c *Cache, key string, s Stamp, v Version)
	}{
		{"lookup-first", (*Cache).Learn},
		{"always-store", learnAlways},
	}

	// A read that learns what the cache already knows: the common case.
	for _, l := range learners {
		b.Run("same/"+l.name, func(b *testing.B) {
			c := benchCache()
			b.ReportAllocs()
			var i uint64
			for b.Loop() {
				k := keys[order[i%benchN]]
				l.learn(c, k, c.Stamp(k), benchVersion)
				i++
			}
		})
	}

	// A read of a resource the cache does not hold yet. Every million
	// operations the cache is replaced by an empty one, off the clock.
	for _, l := range learners {
		b.Run("new/"+l.name, func(b *testing.B) {
			b.ReportAllocs()
			var c *Cache
			var i uint64
			for b.Loop() {
				if i%benchN == 0 {
					b.StopTimer()
					if c != nil {
						c.Close()
					}
					var err error
					if c, err = New(Config{MaxEntries: benchN, TTL: benchTTL}); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				k := keys[order[i%benchN]]
				l.learn(c, k, c.Stamp(k), benchVersion)
				i++
			}
			b.StopTimer()
			c.Wait()
			s := c.Stats()
			b.ReportMetric(float64(s.Drops)/float64(b.N), "drops/op")
			c.Close()
		})
	}
}

func BenchmarkRecord(b *testing.B) {
	c, keys, order := recordCache(), benchKeys(), benchOrder()
	b.ReportAllocs()
	var i uint64
	for b.Loop() {
		c.Record(keys[order[i%benchN]], benchVersion)
		i++
	}
}

// BenchmarkGetVsBaseline interleaves short blocks of Cache.Get, of a bare
// ristretto Get, and of a bare ristretto Get that also reads the value it
// found, all on the same keys, and reports the ratios of their times: on a
// shared machine, drift between two separate benchmarks easily exceeds the
// difference being measured.
func BenchmarkGetVsBaseline(b *testing.B) {
	c, rc, rc2, keys, order := benchCache(), benchBaseline(), benchBaseline2(), benchKeys(), benchOrder()
	const block = 1024
	var spent [3]time.Duration
	var hits [3]uint64
	run := func(which, from int) {
		t := time.Now()
		switch which {
		case 0:
			for j := from; j < from+block; j++ {
				if _, ok := c.Get(keys[order[j%benchN]]); ok {
					hits[0]++
				}
			}
		case 1:
			for j := from; j < from+block; j++ {
				if _, ok := rc.Get(keys[order[j%benchN]]); ok {
					hits[1]++
				}
			}
		case 2:
			for j := from; j < from+block; j++ {
				if p, ok := rc2.Get(keys[order[j%benchN]]); ok && p.v.Exists {
					hits[2]++
				}
			}
		}
		spent[which] += time.Since(t)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += block {
		// Whichever runs after the first finds the keys in the CPU cache:
		// rotate the order.
		for k := range 3 {
			run((i/block+k)%3, i)
		}
	}
	n := float64((b.N + block - 1) / block * block)
	b.ReportMetric(float64(spent[0])/n, "get-ns/op")
	b.ReportMetric(float64(spent[1])/n, "bare-ns/op")
	b.ReportMetric(float64(spent[2])/n, "bare+read-ns/op")
	b.ReportMetric(float64(spent[0])/float64(spent[1]), "ratio-bare")
	b.ReportMetric(float64(spent[0])/float64(spent[2]), "ratio-bare+read")
	if hits[0] != hits[1] || hits[1] != hits[2] {
		b.Errorf("hits %v differ", hits)
	}
}
