// Package etagcache remembers what is known of upstream resources: whether
// each exists, its entity-tag and its modification time. A write guard uses it
// to judge conditional requests without asking the upstream first.
//
// # Forget, never lie
//
// The cache may lose any entry at any moment, but once a write has been
// recorded with [Cache.Record] (or [Cache.Forget]), [Cache.Get] returns that
// write's version or nothing, never an older one. That has to hold although
//
//   - responses to reads feed the cache with [Cache.Learn] without taking any
//     lock, so a slow read that began before a write can try to store the
//     pre-write version after the write was recorded;
//   - ristretto inserts a new key later, from another goroutine, while a
//     present key's entry is replaced in place at once (a key's slot holds
//     its entry behind an atomic pointer), so stores do not take effect in
//     the order they were made; ristretto may also drop or reject any
//     insertion;
//   - several caches (an old and a new configuration during a reload) can hold
//     entries for the same resource at the same time, and a write recorded in
//     one of them must invalidate what the others know.
//
// Ordering the stores is hopeless under those conditions, so every entry
// validates itself instead. [Generations] is a process-wide array of striped
// counters indexed by a hash of the key, shared by all caches. Writing a key
// bumps its stripe. A reader takes a [Stamp] (the stripe and its counter)
// before it asks the upstream, and the entry it stores carries that stamp;
// Get accepts an entry only while the stripe still holds the stamped value.
// Any write recorded after the stamp was taken, in any cache sharing the
// Generations, therefore makes the entry unusable, whenever and in whatever
// order ristretto gets around to storing it. A write to an unrelated key of
// the same stripe invalidates entries too; that is forgetting, which is
// allowed, and the number of stripes keeps it rare.
//
// The package knows nothing of HTTP: keys are opaque strings, and what a
// version means is up to the caller.
package etagcache
