package writeguard

import (
	"time"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/redisstore"
)

// A store is where a handler keeps the locks and the versions that decide
// its writes: this process's (memoryStore), or Redis, shared by every
// instance that uses it (redisStore, store_redis.go). Provision chooses
// one; the write path calls it without asking which it has.
//
// Every write first takes the resource's lock in this process (lockmgr):
// writes that meet in one process wait there, not in Redis. The store's
// lock, taken next, is what serializes the write with other instances.
type store interface {
	// lock takes the resource's lock in the store once the process's is
	// held. A refusal answers the write instead; deadline bounds the wait.
	lock(wr *write, deadline time.Time) *refusal
	// found returns the version the store holds for the write's resource,
	// when it has one to decide the write on.
	found(wr *write) (etagcache.Version, bool)
	// refusesSuperseded reports whether a write may be refused before its
	// lock, on the process's cache alone, for naming only versions that
	// writes through the guard replaced (see write.refuseSuperseded).
	refusesSuperseded() bool
	// commit ends a forwarded write: made is the version it made, nil when
	// unknown. The process's cache has been told already.
	commit(wr *write, made *etagcache.Version)
	// release ends a write that was not forwarded: what the store held
	// stays, or the version the write found is put back.
	release(wr *write)
	// forget makes key's version unknown to every writer, after a write
	// that was not serialized (a method the guard lets through).
	forget(key string)
	// distrust makes every writer ask the upstream for key's version, for
	// d: a write of it was abandoned, and may still be applied.
	distrust(key string, d time.Duration)
	// shared is the Redis store, nil in memory.
	shared() *redisstore.Store
}

// memoryStore keeps locks and versions in this process: the lock manager's
// lock is the whole lock, and the version cache decides writes.
type memoryStore struct{ cache *etagcache.Cache }

func (memoryStore) lock(*write, time.Time) *refusal { return nil }

func (s memoryStore) found(wr *write) (etagcache.Version, bool) {
	// Found under the lock: the next version replaces it in place
	// (etagcache.Cache.Update).
	v, held, ok := s.cache.Find(wr.key)
	wr.held = held
	return v, ok
}

func (memoryStore) refusesSuperseded() bool           { return true }
func (memoryStore) commit(*write, *etagcache.Version) {}
func (memoryStore) release(*write)                    {}
func (memoryStore) forget(string)                     {}
func (memoryStore) distrust(string, time.Duration)    {}
func (memoryStore) shared() *redisstore.Store         { return nil }
