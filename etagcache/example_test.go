package etagcache_test

import (
	"fmt"

	"github.com/writeguard/caddy-writeguard/etagcache"
)

func Example() {
	// One Generations per process, shared by every cache that may know the
	// same resources (during a reload, the old and the new configuration's).
	gens := etagcache.NewGenerations(etagcache.DefaultStripes)
	cache, err := etagcache.New(etagcache.Config{MaxEntries: 10_000, Generations: gens})
	if err != nil {
		panic(err)
	}
	defer cache.Close()

	const key = "example.com/api/items/42"

	// A read: stamp first, then ask the upstream, then learn its answer.
	stamp := cache.Stamp(key)
	fromUpstream := etagcache.Version{Exists: true, ETag: `"v1"`}
	cache.Learn(key, stamp, fromUpstream)
	cache.Wait() // only so that the output below is deterministic

	v, ok := cache.Get(key)
	fmt.Println(v.ETag, ok)

	// A write, under the key's lock: whatever reads that began before it
	// store later, Get never returns "v1" again.
	cache.Record(key, etagcache.Version{Exists: true, ETag: `"v2"`})
	cache.Learn(key, stamp, fromUpstream) // a slow read arriving late
	cache.Wait()

	v, ok = cache.Get(key)
	fmt.Println(v.ETag, ok)
	// Output:
	// "v1" true
	// "v2" true
}
