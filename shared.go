package writeguard

import (
	"fmt"
	"sync"

	"github.com/caddyserver/caddy/v2"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/lockmgr"
)

// pool holds the state that must outlive a config reload. During a reload
// the old and the new configuration serve side by side: if each had its own
// lock manager, two writes to one resource could pass at once.
var pool = caddy.NewUsagePool()

// The lock manager and the version stamps are one per process, for its
// whole life: every handler in every configuration serializes on the same
// locks, and a write recorded through any cache invalidates what the others
// hold for that key. They are not in the pool: a reload to a configuration
// without the guard and back would otherwise build a second lock manager
// while writes of the first configuration still run past grace_period. Both
// cost nothing while unused: lock entries live only while a write holds
// or waits for them.
type sharedState struct {
	locks       *lockmgr.Manager
	generations *etagcache.Generations
}

// generationStripes sizes the process-wide version stamps (8 bytes each).
const generationStripes = 1 << 18

var processState = sync.OnceValue(func() *sharedState {
	return &sharedState{
		locks:       lockmgr.New(),
		generations: etagcache.NewGenerations(generationStripes),
	}
})

type sharedCache struct {
	*etagcache.Cache
	etags string // whose tags it holds: "upstream" or "hash"
}

// Destruct runs when no configuration uses the cache any more. Requests of a
// retired configuration may still be finishing; the cache's Close waits for
// their stores and makes later ones harmless. The retired handlers keep
// their *etagcache.Cache for as long as Caddy keeps them (an old
// configuration's idle upstream connections do, for minutes), but a closed
// Cache no longer holds its memory.
func (c sharedCache) Destruct() error {
	retireCacheStats(c.Stats())
	c.Close()
	return nil
}

// attachCache returns the cache for cfg, shared by every handler with the
// same cache settings, so a reload that keeps them keeps what was learned.
// Tags of the upstream and the guard's own (etags) never share a cache: a
// guard that hashes must not take an upstream tag for a version.
func attachCache(cfg etagcache.Config, etags string) (*etagcache.Cache, string, error) {
	key := fmt.Sprintf("write_guard.cache/%s/%d/%d/%s", etags, cfg.MaxEntries, cfg.MaxBytes, cfg.TTL)
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		c, err := etagcache.New(cfg)
		if err != nil {
			return nil, err
		}
		return sharedCache{c, etags}, nil
	})
	if err != nil {
		return nil, "", err
	}
	return v.(sharedCache).Cache, key, nil
}

// attachAbandoned returns the list of resources whose write was abandoned
// lately, one for every handler while any configuration uses the guard, so
// that a reload keeps it whatever else it changes.
func attachAbandoned() (*abandonedWrites, string, error) {
	const key = "write_guard.abandoned"
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return pooledAbandoned{new(abandonedWrites)}, nil
	})
	if err != nil {
		return nil, "", err
	}
	return v.(pooledAbandoned).abandonedWrites, key, nil
}

type pooledAbandoned struct{ *abandonedWrites }

func (pooledAbandoned) Destruct() error { return nil }
