package etagcache

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Version is what is known of a resource at one moment.
type Version struct {
	Exists       bool      // false: the resource is known to be absent (404/410, or deleted)
	ETag         string    // entity-tag exactly as the upstream sent it, e.g. `"abc"` or `W/"abc"`; "" if none
	LastModified time.Time // zero if unknown
	// Superseded lists entity-tags that earlier versions had and that writes
	// through the guard replaced, newest first, at most MaxSuperseded: a
	// write that names only these is certainly stale. Only Record keeps
	// them; a version learned from a read has none.
	Superseded []string
	// Guard says ETag is the guard's own tag of the representation's bytes,
	// not the upstream's: the two are never compared with each other.
	Guard bool
	// Crowded says LastModified names more than this version: a write made
	// it within the second of the version it replaced (or the upstream's
	// date did not advance), so a client holding that date may have read
	// either.
	Crowded bool
	// ReplacedDate is, when LastModified is unknown (the write's answer gave
	// none), the Last-Modified of the version the write replaced: if the
	// upstream shows that date again, the write did not move it, and the
	// date names both versions.
	ReplacedDate time.Time
	// FromAnswer says ETag is the one a write's answer carried, which a
	// read or a version check has not shown yet. An upstream that tags its
	// answers' own bodies (a status document) gives every write's answer
	// one tag that names no version: a read that shows another tag for
	// the same version keeps the answer's among the tags replaced.
	FromAnswer bool
	// TagsReused says the guard tagged this version because the upstream
	// was seen to give a new version of its site a tag it had given an
	// earlier one: every instance that finds it stops trusting that site's
	// tags.
	TagsReused bool
}

// MaxSuperseded bounds Version.Superseded: a writer more than a few versions
// behind is rare, and its write is still refused, after one more look at the
// upstream.
const MaxSuperseded = 4

// Supersede returns the Superseded list of a version tagged newTag that a
// write made out of one tagged oldTag, whose own list was older: oldTag
// first, without newTag (a write may leave the representation, and so a
// content-derived tag, as it was) or duplicates, at most MaxSuperseded.
func Supersede(oldTag string, older []string, newTag string) []string {
	if (oldTag == "" || oldTag == newTag) && !slices.Contains(older, newTag) {
		// Nothing new was replaced: the list stays as it is, shared (lists
		// are never modified).
		return older
	}
	var out [MaxSuperseded]string
	n := 0
	if oldTag != "" && oldTag != newTag {
		out[0], n = oldTag, 1
	}
next:
	for _, t := range older {
		if n == MaxSuperseded {
			break
		}
		if t == "" || t == newTag {
			continue
		}
		for _, kept := range out[:n] {
			if kept == t {
				continue next
			}
		}
		out[n] = t
		n++
	}
	if n == 0 {
		return nil
	}
	return slices.Clone(out[:n])
}

const (
	// DefaultMaxEntries bounds a cache when neither MaxEntries nor MaxBytes
	// is set.
	DefaultMaxEntries = 1_000_000
	// DefaultTTL is how long an entry is trusted when Config.TTL is zero.
	DefaultTTL = 10 * time.Minute

	// EntryOverhead is the approximate memory, in bytes, that one cached
	// version takes besides the bytes of its entity-tag: its slot (which
	// holds the entry it was stored with), ristretto's item for it, in its expiration
	// buckets and in its admission policy, and its share of the admission
	// sketch, sized at ten counters per expected entry. Those hash maps and
	// the sketch grow in powers of two, so the true figure swings between
	// about 210 and 340 bytes with the size of the cache (64-bit Linux, Go
	// 1.26; 250 at 100,000 entries): a cache bounded by bytes takes 0.75 to
	// 1.1 times its bound.
	// TestEntryOverhead keeps the estimate honest.
	//
	// The key is not counted because it is not kept: ristretto identifies
	// an entry by two 64-bit hashes of the key, one of them seeded per
	// process.
	EntryOverhead = 300

	// typicalETagLen sizes the admission sketch of a cache bounded by bytes,
	// which has to guess how many entries it will hold.
	typicalETagLen = 24
)

// Config configures a Cache. The zero Config is usable.
type Config struct {
	// MaxEntries bounds the cache by number of entries. It is used when
	// MaxBytes is 0. Default: 1,000,000 when both are 0.
	MaxEntries int64
	// MaxBytes bounds the cache by approximate memory: EntryOverhead plus the
	// length of the entity-tag for each entry.
	MaxBytes int64
	// TTL is how long an entry is trusted after it was stored. It bounds how
	// long a change made behind the cache's back (not through Record or
	// Forget) can go unnoticed. Default: 10 minutes.
	TTL time.Duration
	// Generations is shared by every cache that may hold entries for the
	// same resources; nil gives the cache a private one, which is only right
	// when nothing else ever writes those resources.
	Generations *Generations
}

// Cache holds the latest known Version of resources. It is safe for
// concurrent use. Learn, Get and Stamp take no lock of their own; Record and
// Forget must be serialized per key by the caller, as writes are.
type Cache struct {
	// live is the ristretto instance in use, nil once the cache is closed.
	// Everything that takes memory in proportion to the cache's size hangs
	// from it, so that a closed Cache that something still refers to (a
	// handler of a retired config, kept by its idle connections) weighs a
	// few hundred bytes.
	live    atomic.Pointer[instance]
	cfg     Config
	gens    *Generations
	ttl     time.Duration
	byBytes bool
	maxCost int64
	// expected is how many entries the cache holds when full; the last
	// instance is sized for it.
	expected int64

	// storing is held shared by every store and delete, and exclusively
	// while live is replaced: ristretto panics when a store races its
	// Close, and a config reload can retire a cache while requests of the
	// old config still record their outcomes in it.
	storing sync.RWMutex
	// growing is set while a store builds the instance that replaces live.
	growing atomic.Bool

	// The counters live on cache lines of their own: Get bumps one of them
	// from every core, and the fields above are read by every call.
	hits       paddedCounter
	misses     paddedCounter
	evictions  paddedCounter
	rejections paddedCounter
	drops      paddedCounter
}

type paddedCounter struct {
	_ [64]byte
	atomic.Uint64
}

// entry is one version of a key, as the cache holds it: immutable once
// stored in its slot, so that a lookup reads it without a lock. It is kept
// small: its generation check and its fields are what a lookup reads, and
// a slot holds the first entry inline (BenchmarkGetVsBaseline measures the
// lookup against a bare ristretto Get; the figures are in BENCHMARKS.md).
type entry struct {
	hash uint64 // the key's hash: its stripe in the Generations, its slot in taught
	gen  uint64 // the stripe's value when the version was learned or recorded
	etag string
	// LastModified, when set, as Unix seconds and nanoseconds: a time.Time
	// takes 24 bytes.
	modSec  int64
	modNsec int32
	flags   uint8
	// Superseded, as its first element and length: a slice header takes
	// 24 bytes. The lists are never modified once stored.
	nSuperseded uint8
	superseded  *string
}

const (
	entryExists uint8 = 1 << iota
	entryModified
	entryGuard
	entryCrowded
	entryReused
	entryFromAnswer
	// entryReplacedDate: modSec and modNsec hold ReplacedDate, not
	// LastModified.
	entryReplacedDate
)

// slot holds a key's entry in ristretto, which keeps it by pointer: the
// write that holds the key's lock, and a read that sees another version,
// replace the entry in place (one allocation) instead of storing anew in
// ristretto, whose store of a key it holds takes its lock, its admission
// policy's lock and its TTL bookkeeping. The slot keeps ristretto's TTL of
// when it was stored: replacing the entry does not extend it, so a key
// written without pause is forgotten, and checked with the upstream once,
// every TTL.
type slot struct {
	cur atomic.Pointer[entry]
	// first is the entry the slot was stored with, allocated with it.
	first entry
}

func newSlot(e entry) *slot {
	s := &slot{first: e}
	s.cur.Store(&s.first)
	return s
}

// replace puts e in place of the slot's entry, unless the slot holds a
// newer version of the same key (a later generation of its stripe).
func (s *slot) replace(e *entry) {
	for {
		cur := s.cur.Load()
		if cur.hash == e.hash && cur.gen > e.gen {
			return
		}
		if s.cur.CompareAndSwap(cur, e) {
			return
		}
	}
}

// Held is a key's entry as Find found it, which the write holding the
// key's lock replaces in place (Update).
type Held struct {
	in *instance
	s  *slot
}

func newEntry(hash, gen uint64, v Version) entry {
	e := entry{hash: hash, gen: gen, etag: v.ETag}
	if v.Exists {
		e.flags |= entryExists
	}
	if v.Guard {
		e.flags |= entryGuard
	}
	if v.Crowded {
		e.flags |= entryCrowded
	}
	if v.TagsReused {
		e.flags |= entryReused
	}
	if v.FromAnswer {
		e.flags |= entryFromAnswer
	}
	switch {
	case !v.LastModified.IsZero():
		e.flags |= entryModified
		e.modSec, e.modNsec = v.LastModified.Unix(), int32(v.LastModified.Nanosecond())
	case !v.ReplacedDate.IsZero():
		e.flags |= entryReplacedDate
		e.modSec, e.modNsec = v.ReplacedDate.Unix(), int32(v.ReplacedDate.Nanosecond())
	}
	if n := min(len(v.Superseded), MaxSuperseded); n > 0 {
		e.nSuperseded, e.superseded = uint8(n), unsafe.SliceData(v.Superseded)
	}
	return e
}

// version returns what newEntry was given: LastModified in UTC, at most
// MaxSuperseded superseded tags, an empty list as nil.
func (e *entry) version() Version {
	v := Version{Exists: e.flags&entryExists != 0, ETag: e.etag, Guard: e.flags&entryGuard != 0,
		Crowded: e.flags&entryCrowded != 0, TagsReused: e.flags&entryReused != 0, FromAnswer: e.flags&entryFromAnswer != 0}
	switch {
	case e.flags&entryModified != 0:
		v.LastModified = time.Unix(e.modSec, int64(e.modNsec)).UTC()
	case e.flags&entryReplacedDate != 0:
		v.ReplacedDate = time.Unix(e.modSec, int64(e.modNsec)).UTC()
	}
	if e.nSuperseded > 0 {
		v.Superseded = unsafe.Slice(e.superseded, e.nSuperseded)
	}
	return v
}

// holds reports whether e holds v, as Version.same compares. What only a
// write can tell (Crowded, TagsReused, Superseded) is not compared: a read
// that shows the version a write recorded learns nothing new, and must not
// make the cache forget what the write knew.
func (e *entry) holds(v Version) bool {
	if v.Exists != (e.flags&entryExists != 0) || v.ETag != e.etag || v.Guard != (e.flags&entryGuard != 0) {
		return false
	}
	if e.flags&entryModified == 0 {
		return v.LastModified.IsZero()
	}
	return !v.LastModified.IsZero() && v.LastModified.Unix() == e.modSec && int32(v.LastModified.Nanosecond()) == e.modNsec
}

// carryOver returns v, a read's view of the version e holds, with what
// only the write that made it knew: the tags it replaced, and whether its
// date names an earlier version too.
func (e *entry) carryOver(v Version) Version {
	if e.flags&entryFromAnswer != 0 && e.flags&entryExists != 0 && v.Exists && v.ETag != "" && v.ETag != e.etag {
		// The same version, shown with another tag than its write's answer
		// gave it: that tag stays refused.
		old := e.version()
		v.Superseded = Supersede(old.ETag, old.Superseded, v.ETag)
		return v
	}
	if v.Exists != (e.flags&entryExists != 0) || v.ETag != e.etag || v.Guard != (e.flags&entryGuard != 0) {
		return v
	}
	old := e.version()
	v.Superseded, v.TagsReused = old.Superseded, old.TagsReused
	v.Crowded = old.Crowded || !old.ReplacedDate.IsZero() && !v.LastModified.IsZero() && v.LastModified.Unix() <= old.ReplacedDate.Unix()
	if v.LastModified.IsZero() {
		v.ReplacedDate = old.ReplacedDate
	}
	return v
}

// valid reports whether no write to the key's stripe happened since the
// entry's version was learned.
func (c *Cache) valid(e *entry) bool {
	return c.gens.stripes[e.hash&c.gens.mask].Load() == e.gen
}

// New returns a cache configured by cfg. Until it holds about 16,000
// versions it takes about 1.2 MiB whatever its bound; it then grows in
// steps, forgetting what it held at each (see instance).
func New(cfg Config) (*Cache, error) {
	return newSized(cfg, initialEntries)
}

// newSized is New with the size of the first instance given.
func newSized(cfg Config, initial int64) (*Cache, error) {
	switch {
	case cfg.MaxEntries < 0:
		return nil, fmt.Errorf("etagcache: negative MaxEntries %d", cfg.MaxEntries)
	case cfg.MaxBytes < 0:
		return nil, fmt.Errorf("etagcache: negative MaxBytes %d", cfg.MaxBytes)
	case cfg.MaxBytes > 0 && cfg.MaxBytes < EntryOverhead:
		return nil, fmt.Errorf("etagcache: MaxBytes %d cannot hold a single entry of about %d bytes", cfg.MaxBytes, EntryOverhead)
	case cfg.TTL < 0:
		return nil, errors.New("etagcache: negative TTL")
	}
	c := &Cache{
		cfg:  cfg,
		gens: cfg.Generations,
		ttl:  cfg.TTL,
	}
	if c.gens == nil {
		c.gens = NewGenerations(DefaultStripes)
	}
	if c.ttl == 0 {
		c.ttl = DefaultTTL
	}
	c.cfg.TTL = c.ttl
	if cfg.MaxBytes == 0 && cfg.MaxEntries == 0 {
		c.cfg.MaxEntries = DefaultMaxEntries
	}
	switch {
	case cfg.MaxBytes > 0:
		c.byBytes = true
		c.maxCost = cfg.MaxBytes
		c.expected = max(cfg.MaxBytes/(EntryOverhead+typicalETagLen), 1)
	case cfg.MaxEntries > 0:
		c.maxCost, c.expected = cfg.MaxEntries, cfg.MaxEntries
	default:
		c.maxCost, c.expected = DefaultMaxEntries, DefaultMaxEntries
	}
	in, err := c.newInstance(c.sized(initial))
	if err != nil {
		return nil, err
	}
	c.live.Store(in)
	return c, nil
}

// Config returns the configuration the cache was created with, defaults
// filled in.
func (c *Cache) Config() Config { return c.cfg }

// Stamp captures the current generation of key; see Generations.Stamp.
func (c *Cache) Stamp(key string) Stamp { return c.gens.Stamp(key) }

// Learn stores v, observed by a read that began after s was taken for key.
// The entry is only as valid as s: if a write to key (or to another key of
// its stripe) was recorded since, in any cache sharing the Generations, v is
// not stored, or is stored but never returned.
//
// Reads learn on every response, and most of them learn what is already
// known, so Learn first looks the key up: a lookup costs a fraction of a
// store, and skipping the store keeps the entry's expiry where the first
// observation put it.
func (c *Cache) Learn(key string, s Stamp, v Version) {
	h := c.gens.hash(key)
	ctr := &c.gens.stripes[h&c.gens.mask]
	if s.ctr != ctr || !s.current() {
		return
	}
	in := c.live.Load()
	if in == nil {
		return
	}
	slot := h & in.taughtMask
	fp := c.fingerprint(h, s.gen, v)
	if in.taught[slot].Load() == fp {
		return
	}
	// Noted before the store, so that an eviction or refusal that follows
	// it clears the note. Should the store land in a newer instance, the
	// note stays behind in this one, and the next read teaches the version
	// again.
	in.taught[slot].Store(fp)
	found, ok := in.rc.Get(key)
	if ok {
		e := found.cur.Load()
		if e.hash == h && e.gen == s.gen && e.holds(v) {
			return
		}
		if e.hash == h && e.gen == s.gen {
			v = e.carryOver(v)
		}
		if !c.byBytes {
			e := newEntry(h, s.gen, v)
			found.replace(&e)
			return
		}
	}
	if !c.store(key, newEntry(h, s.gen, v)) {
		in.taught[slot].CompareAndSwap(fp, 0)
	}
}

// fingerprint condenses a key (by its hash), a generation and a version.
// Two different ones that collide make a read skip teaching its version:
// the cache forgets, it does not lie.
func (c *Cache) fingerprint(keyHash, gen uint64, v Version) uint64 {
	x := keyHash ^ bits.RotateLeft64(maphash.String(c.gens.seed, v.ETag), 23)
	x ^= gen * 0x9E3779B97F4A7C15
	x ^= uint64(v.LastModified.Unix()) * 0xC2B2AE3D27D4EB4F
	if v.Guard {
		x ^= 0x165667B19E3779F9
	}
	if v.Exists {
		x = ^x
	}
	return x | 1 // 0 is "nothing taught"
}

// Record notes that a write to key completed and left it in state v. Every
// entry for key learned before, in this cache or any other sharing the
// Generations, stops being returned before Record returns; v takes their
// place unless ristretto drops or rejects it. The caller must hold the key's
// write lock.
func (c *Cache) Record(key string, v Version) {
	c.Update(key, Held{}, v)
}

// Update is Record for a key whose entry the caller found (Find) while
// holding the key's write lock: the entry is replaced in place. Were it
// evicted meanwhile, the version is lost with it, which costs the next
// write a version check. A zero Held makes it Record.
func (c *Cache) Update(key string, held Held, v Version) {
	h := c.gens.hash(key)
	gen := c.gens.stripes[h&c.gens.mask].Add(1)
	e := newEntry(h, gen, v)
	if c.byBytes {
		// The entry's cost is counted when it is stored; a cache bounded
		// by bytes stores every version anew, so that it counts what the
		// version takes.
		if held.s == nil {
			c.settle(key)
		}
		c.store(key, e)
		return
	}
	if held.s == nil || held.in != c.live.Load() {
		held = c.held(key)
	}
	if held.s != nil {
		held.s.replace(&e)
		return
	}
	c.store(key, e)
}

// settle lets ristretto apply the stores already queued when key is not in
// its store yet. ristretto queues the store of a key it does not hold and
// rejects a second such store that reaches its queue before the first was
// applied, so a write recorded just after a probe taught the key would be
// lost, and the next write would have to ask the upstream again. Reads do
// not settle: losing one of two concurrent learns costs nothing.
func (c *Cache) settle(key string) {
	c.storing.RLock()
	defer c.storing.RUnlock()
	if in := c.live.Load(); in != nil {
		if _, ok := in.rc.Get(key); !ok {
			in.rc.Wait()
		}
	}
}

// held finds key's slot in the live instance, letting ristretto apply the
// stores already queued when key is not in its store yet (see settle).
func (c *Cache) held(key string) Held {
	c.storing.RLock()
	defer c.storing.RUnlock()
	in := c.live.Load()
	if in == nil {
		return Held{}
	}
	s, ok := in.rc.Get(key)
	if !ok {
		in.rc.Wait()
		if s, ok = in.rc.Get(key); !ok {
			return Held{}
		}
	}
	return Held{in, s}
}

// Forget makes the state of key unknown, for instance after a write whose
// outcome is uncertain. Like Record, it invalidates key in every cache sharing
// the Generations. It may be called without the key's write lock: racing a
// Record, it can only leave the key unknown or leave the Record's newer
// version in place.
func (c *Cache) Forget(key string) {
	c.gens.stripe(key).Add(1)
	// The increment alone already hides the entry; deleting it returns the
	// memory now rather than at eviction or expiry. Del can wait for room in
	// ristretto's buffer, which only a flood of new keys fills.
	c.storing.RLock()
	defer c.storing.RUnlock()
	if in := c.live.Load(); in != nil {
		in.rc.Del(key)
	}
}

// Get returns the latest known version of key, if the cache knows it and no
// write happened since it was learned.
func (c *Cache) Get(key string) (Version, bool) {
	v, _, ok := c.Find(key)
	return v, ok
}

// Find is Get for the write that holds key's lock: held lets it replace the
// entry in place once it knows the next version (Update).
func (c *Cache) Find(key string) (Version, Held, bool) {
	e, held, ok := c.lookup(key)
	if !ok || !c.valid(e) {
		c.misses.Add(1)
		return Version{}, Held{}, false
	}
	c.hits.Add(1)
	return e.version(), held, true
}

// Peek is Get without counting: for looking at the cache from outside (an
// admin endpoint) without moving the hit and miss counters operators
// watch.
func (c *Cache) Peek(key string) (Version, bool) {
	e, _, ok := c.lookup(key)
	if !ok || !c.valid(e) {
		return Version{}, false
	}
	return e.version(), true
}

// lookup reads the live instance, if the cache is not closed. It takes no
// lock, to keep lookups free of shared writes; an instance retired just
// after a lookup loaded it is shut down closeGrace later, ample time for the
// lookup to finish.
func (c *Cache) lookup(key string) (*entry, Held, bool) {
	in := c.live.Load()
	if in == nil {
		return nil, Held{}, false
	}
	s, ok := in.rc.Get(key)
	if !ok {
		return nil, Held{}, false
	}
	return s.cur.Load(), Held{in, s}, true
}

// store reports whether ristretto took the entry (it may still refuse a
// new key later, through OnReject).
func (c *Cache) store(key string, e entry) bool {
	cost := int64(1)
	if c.byBytes {
		cost = EntryOverhead + int64(len(e.etag))
		for _, t := range unsafe.Slice(e.superseded, e.nSuperseded) {
			cost += int64(len(t)) + 16
		}
	}
	c.storing.RLock()
	in := c.live.Load()
	ok := in != nil && in.rc.SetWithTTL(key, newSlot(e), cost, c.ttl)
	c.storing.RUnlock()
	switch {
	case in == nil:
		return false
	case !ok:
		c.drops.Add(1)
		return false
	case in.growAt != 0 && e.hash>>growCheckShift == 0:
		c.grow(in)
	}
	return true
}

// Stats counts what the cache did since it was created.
type Stats struct {
	Hits   uint64 // Get calls that returned a version
	Misses uint64 // Get calls that did not, including those that found an invalidated entry
	// Evictions counts entries removed to make room or because they expired.
	Evictions uint64
	// Rejections counts stores that ristretto refused: by its admission
	// policy, because an earlier store of the same key was still queued, or
	// because the entry was older than the one it would have replaced.
	Rejections uint64
	// Drops counts stores of new keys lost because ristretto's buffer was
	// full.
	Drops uint64
	// Cost is the capacity in use: entries when the cache is bounded by
	// entries, approximate bytes when it is bounded by bytes. MaxCost is the
	// bound in the same unit.
	Cost, MaxCost int64
}

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	s := Stats{
		Hits:       c.hits.Load(),
		Misses:     c.misses.Load(),
		Evictions:  c.evictions.Load(),
		Rejections: c.rejections.Load(),
		Drops:      c.drops.Load(),
		MaxCost:    c.maxCost,
	}
	if in := c.live.Load(); in != nil {
		s.Cost = c.maxCost - in.rc.RemainingCost()
	}
	return s
}

// Wait blocks until the stores made so far have been applied or refused.
// Only tests need it: the cache is correct without it.
func (c *Cache) Wait() {
	c.storing.RLock()
	defer c.storing.RUnlock()
	if in := c.live.Load(); in != nil {
		in.rc.Wait()
	}
}
