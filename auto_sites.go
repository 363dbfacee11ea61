package writeguard

import (
	"hash/maphash"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// With `etags auto` the guard trusts a site's upstream entity-tags until a
// write shows that they do not name versions: the tag after the write is
// one the guard saw replaced. The switch is per site (the site's first
// name, see site.go), because the tags of one site come from one
// application, whose other resources tag the same way: waiting for the
// evidence once per resource would cost every resource one refused write.
// It lasts for as long as any configuration uses the guard, so that a
// reload keeps it; an instance sharing a Redis store adopts it for a
// resource when it finds that resource's version tagged by the guard for
// this reason (Version.TagsReused).

// reusedTags is the sites whose upstream tags are no longer trusted, one
// list for every handler in the process.
type reusedTags struct {
	// any is set once a site is in the list: until then, the read path
	// asks nothing else.
	any   atomic.Bool
	mu    sync.Mutex
	sites sync.Map // site → *tagReuse
	// asked lists the sites whose mark in the Redis store this process
	// has read (autoVersions.consult).
	asked sync.Map // site → struct{}
	// bodies tells a write that left its tag unchanged because it wrote
	// the body the previous write did from one whose tag should have
	// changed.
	bodies writtenBodies
}

// writtenBodies remembers, for the resources last written by PUT, digests
// of the bodies of their last few PUTs and the tags the upstream gave the
// versions they made. A write whose tag comes back (the one it was checked
// against, or an earlier one), and whose body is the one that made the
// version with that tag, changed nothing that tag does not name: a form
// saved twice, a toggle set back. That is no evidence against the
// upstream's tags. It is a table of fixed size in which resources that
// share a slot push each other out: forgetting only costs a false alarm,
// which costs hashing.
type writtenBodies struct {
	once  sync.Once
	seed  maphash.Seed
	mu    sync.Mutex
	slots []writtenBody
}

// writtenBody holds a resource's last bodies, newest first.
type writtenBody struct {
	key  uint64
	n    int
	sums [writtenBodiesKept]uint64
	tags [writtenBodiesKept]string
}

const (
	writtenBodySlots  = 1 << 13
	writtenBodiesKept = 4
)

func (b *writtenBodies) slot(key string) (*writtenBody, uint64) {
	b.once.Do(func() {
		b.seed = maphash.MakeSeed()
		b.slots = make([]writtenBody, writtenBodySlots)
	})
	h := maphash.String(b.seed, key) | 1
	return &b.slots[h%writtenBodySlots], h
}

// note records that a PUT of a body with digest sum made key's version
// tagged tag.
func (b *writtenBodies) note(key string, sum uint64, tag string) {
	s, h := b.slot(key)
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.key != h {
		*s = writtenBody{key: h}
	}
	copy(s.sums[1:], s.sums[:writtenBodiesKept-1])
	copy(s.tags[1:], s.tags[:writtenBodiesKept-1])
	s.sums[0], s.tags[0] = sum, tag
	s.n = min(s.n+1, writtenBodiesKept)
}

// same reports whether a version of key tagged tag was made by a PUT of a
// body with digest sum.
func (b *writtenBodies) same(key string, sum uint64, tag string) bool {
	if tag == "" {
		return false
	}
	s, h := b.slot(key)
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.key != h {
		return false
	}
	for i := range s.n {
		if s.tags[i] == tag && s.sums[i] == sum {
			return true
		}
	}
	return false
}

// digest digests a body for writtenBodies.
func (b *writtenBodies) digest(body io.Reader) (uint64, bool) {
	b.slot("")
	var d maphash.Hash
	d.SetSeed(b.seed)
	if _, err := io.Copy(&d, body); err != nil {
		return 0, false
	}
	return d.Sum64(), true
}

// tagReuse is the evidence that switched a site.
type tagReuse struct {
	Site string `json:"site"`
	// Source is who names the site's versions now: "guard".
	Source string `json:"source"`
	// Key and ETag are the resource and the tag that the upstream gave
	// again; Seen says where: "answer" (the write's answer), "check" (the
	// version check after the write) or "store" (found in the Redis store,
	// recorded by another instance).
	Key   string    `json:"key"`
	ETag  string    `json:"etag"`
	Seen  string    `json:"seen"`
	Since time.Time `json:"since"`
}

// untrusted reports whether site's upstream tags are no longer trusted.
func (t *reusedTags) untrusted(site string) bool {
	if !t.any.Load() {
		return false
	}
	_, ok := t.sites.Load(site)
	return ok
}

// distrust stops trusting the upstream tags of the site whose names are
// sites (its first name, then its others: a reload may put another first),
// on the evidence of key's tag etag. It reports whether the site was
// trusted until now; the first time, the switch is logged at Warn and
// counted.
func (t *reusedTags) distrust(logger *zap.Logger, sites []string, key, etag, seen string) bool {
	site := sites[0]
	if t.untrusted(site) {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.sites.Load(site); ok {
		return false
	}
	reuse := &tagReuse{Site: site, Source: "guard", Key: key, ETag: etag, Seen: seen, Since: time.Now().UTC()}
	for _, name := range sites {
		t.sites.LoadOrStore(name, reuse)
	}
	t.any.Store(true)
	guardMetrics().etagSwitches.Inc()
	if logger != nil {
		logger.Warn("upstream entity-tags do not name versions; the guard tags this site's representations itself from now on",
			zap.String("site", site), zap.String("key", key), zap.String("etag", etag), zap.String("seen", seen),
			zap.String("why", whySeen(seen)))
	}
	return true
}

func whySeen(seen string) string {
	switch seen {
	case "answer":
		return "a write's answer carried a tag that an earlier version of the resource had"
	case "check":
		return "the version check after a write showed a tag that an earlier version of the resource had"
	}
	return "another instance sharing the Redis store found this site's tags reused"
}

// trust trusts site's upstream tags again, under every name the switch
// was recorded for; it reports whether they were distrusted.
func (t *reusedTags) trust(site string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	reuse, ok := t.sites.Load(site)
	if !ok {
		return false
	}
	t.sites.Range(func(name, v any) bool {
		if v == reuse {
			t.sites.Delete(name)
			t.asked.Delete(name)
		}
		return true
	})
	return true
}

// names returns the names a site's switch was recorded under.
func (t *reusedTags) names(site string) []string {
	reuse, ok := t.sites.Load(site)
	if !ok {
		return nil
	}
	var names []string
	t.sites.Range(func(name, v any) bool {
		if v == reuse {
			names = append(names, name.(string))
		}
		return true
	})
	return names
}

// list returns the evidence for every distrusted site, by site.
func (t *reusedTags) list() []tagReuse {
	out := []tagReuse{}
	seen := map[*tagReuse]bool{}
	t.sites.Range(func(_, v any) bool {
		if r := v.(*tagReuse); !seen[r] {
			seen[r] = true
			out = append(out, *r)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Site < out[j].Site })
	return out
}

// attachReusedTags returns the process's list of distrusted sites.
func attachReusedTags() (*reusedTags, string, error) {
	const key = "write_guard.reused_tags"
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return pooledReusedTags{new(reusedTags)}, nil
	})
	if err != nil {
		return nil, "", err
	}
	return v.(pooledReusedTags).reusedTags, key, nil
}

type pooledReusedTags struct{ *reusedTags }

func (pooledReusedTags) Destruct() error { return nil }

// currentReusedTags is the process's list while a configuration uses
// it, for the admin API; nil otherwise.
func currentReusedTags() *reusedTags {
	var found *reusedTags
	pool.Range(func(_, value any) bool {
		if v, ok := value.(pooledReusedTags); ok {
			found = v.reusedTags
			return false
		}
		return true
	})
	return found
}
