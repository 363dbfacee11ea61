package etagcache

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

func newCache(t testing.TB, cfg Config) *Cache {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// numbered is version n of a resource in the tests below.
func numbered(n uint64) Version {
	return Version{Exists: true, ETag: `"` + strconv.FormatUint(n, 10) + `"`}
}

// number is the n of numbered(n), or 0 for anything else.
func number(v Version) uint64 {
	n, _ := strconv.ParseUint(strings.Trim(v.ETag, `"`), 10, 64)
	return n
}

// sameVersion reports whether v and w describe the same state. Times
// compare as instants: the cache returns them in UTC.
func sameVersion(v, w Version) bool {
	return v.Exists == w.Exists && v.ETag == w.ETag && v.LastModified.Equal(w.LastModified) && slices.Equal(v.Superseded, w.Superseded)
}

func wantVersion(t *testing.T, c *Cache, key string, want Version) {
	t.Helper()
	got, ok := c.Get(key)
	if !ok {
		t.Fatalf("Get(%q) missed, want %+v", key, want)
	}
	if !sameVersion(got, want) {
		t.Fatalf("Get(%q) = %+v, want %+v", key, got, want)
	}
}

func wantMiss(t *testing.T, c *Cache, key string) {
	t.Helper()
	if got, ok := c.Get(key); ok {
		t.Fatalf("Get(%q) = %+v, want a miss", key, got)
	}
}

func TestLearnGet(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 1000})
	const key = "example.com/api/items/1"
	wantMiss(t, c, key)

	v1 := Version{Exists: true, ETag: `W/"abc"`, LastModified: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}
	c.Learn(key, c.Stamp(key), v1)
	c.Wait()
	wantVersion(t, c, key, v1)

	// A later read with an unchanged stamp may see a change made behind the
	// cache's back; what it saw replaces the entry.
	v2 := Version{Exists: true, ETag: `"def"`}
	c.Learn(key, c.Stamp(key), v2)
	c.Wait()
	wantVersion(t, c, key, v2)

	if s := c.Stats(); s.Hits != 2 || s.Misses != 1 || s.Cost != 1 {
		t.Errorf("Stats() = %+v, want 2 hits, 1 miss, cost 1", s)
	}
}

func TestAbsent(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 1000})
	gone := Version{Exists: false}

	c.Learn("never-was", c.Stamp("never-was"), gone)
	c.Record("deleted", gone)
	c.Wait()
	for _, key := range []string{"never-was", "deleted"} {
		got, ok := c.Get(key)
		if !ok || got.Exists {
			t.Errorf("Get(%q) = %+v, %v; want known absent", key, got, ok)
		}
	}
}

func TestTTL(t *testing.T) {
	const ttl = 300 * time.Millisecond
	c := newCache(t, Config{TTL: ttl})
	start := time.Now()
	c.Learn("k", c.Stamp("k"), numbered(1))
	c.Wait()
	if _, ok := c.Get("k"); !ok && time.Since(start) < ttl/2 {
		t.Fatal("entry missing long before its TTL")
	}
	for deadline := start.Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, ok := c.Get("k"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("entry still served %v after it was learned with a TTL of %v", time.Since(start), ttl)
		}
	}
}

func TestForget(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 1000})
	before := c.Stamp("k")
	c.Learn("k", before, numbered(1))
	c.Wait()
	wantVersion(t, c, "k", numbered(1))

	c.Forget("k")
	wantMiss(t, c, "k") // at once, not only after ristretto caught up
	c.Learn("k", before, numbered(1))
	c.Wait()
	wantMiss(t, c, "k")

	c.Learn("k", c.Stamp("k"), numbered(2))
	c.Wait()
	wantVersion(t, c, "k", numbered(2))
}

// TestNeverSuperseded plays a read that stamped before a write and stores its
// stale answer at different moments relative to the write's Record, including
// the one Learn cannot see coming: ristretto applying the read's store after
// the write's.
func TestNeverSuperseded(t *testing.T) {
	const key = "example.com/api/items/7"
	old, recorded := numbered(1), numbered(2)

	type step func(c *Cache, s Stamp)
	learn := func(c *Cache, s Stamp) { c.Learn(key, s, old) }
	record := func(c *Cache, s Stamp) { c.Record(key, recorded) }
	wait := func(c *Cache, s Stamp) { c.Wait() }
	// lateStore is a store of the read's answer that ristretto applies only
	// now, after Learn's own checks passed long ago.
	lateStore := func(c *Cache, s Stamp) { c.store(key, newEntry(c.gens.hash(key), s.gen, old)) }

	for _, tc := range []struct {
		name  string
		steps []step
		// kept: the recorded version must survive, not merely the old one
		// stay hidden. Ristretto may legitimately lose it in the other cases.
		kept bool
	}{
		{"learn, record", []step{learn, record}, false},
		{"learn, wait, record", []step{learn, wait, record}, true},
		{"record, learn", []step{record, learn}, false},
		{"record, wait, learn", []step{record, wait, learn}, true},
		{"late store, record", []step{lateStore, record}, false},
		{"record, late store", []step{record, lateStore}, false},
		{"record, wait, late store", []step{record, wait, lateStore}, true},
		{"late store, wait, record", []step{lateStore, wait, record}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCache(t, Config{MaxEntries: 100})
			s := c.Stamp(key)
			for _, step := range tc.steps {
				step(c, s)
			}
			check := func() {
				t.Helper()
				got, ok := c.Get(key)
				if ok && !sameVersion(got, recorded) {
					t.Fatalf("Get = %+v after the write recorded %+v", got, recorded)
				}
				if tc.kept && !ok {
					t.Fatalf("Get missed; the recorded %+v was lost", recorded)
				}
			}
			check()
			c.Wait()
			check()
		})
	}
}

func TestSharedGenerations(t *testing.T) {
	gens := NewGenerations(1024)
	a := newCache(t, Config{Generations: gens, MaxEntries: 10})
	b := newCache(t, Config{Generations: gens, MaxEntries: 10})

	const key = "example.com/api/items/9"
	b.Learn(key, b.Stamp(key), numbered(1))
	b.Wait()
	wantVersion(t, b, key, numbered(1))

	a.Record(key, numbered(2))
	wantMiss(t, b, key)
	a.Wait()
	b.Wait()
	wantMiss(t, b, key)
	wantVersion(t, a, key, numbered(2))

	// Stamps are interchangeable between caches sharing Generations.
	s := a.Stamp(key)
	b.Learn(key, s, numbered(2))
	b.Wait()
	wantVersion(t, b, key, numbered(2))
	b.Forget(key)
	wantMiss(t, a, key)
}

func TestForeignStamp(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 1000})
	other := newCache(t, Config{MaxEntries: 1000}) // its own Generations
	for name, s := range map[string]Stamp{
		"zero":               {},
		"other key":          c.Stamp("another key"),
		"other generations":  other.Stamp("k"),
		"other key and gens": other.Stamp("another key"),
	} {
		c.Learn("k", s, numbered(1))
		c.Wait()
		if got, ok := c.Get("k"); ok {
			t.Errorf("Learn with a %s stamp stored %+v", name, got)
		}
	}
}

// TestNeverOlderUnderLoad runs writers, readers and a flood of reads of other
// resources against two caches sharing Generations, small enough that
// ristretto drops and rejects stores, and checks every Get against the last
// version recorded before it began.
func TestNeverOlderUnderLoad(t *testing.T) {
	// Run at least this long, and longer (up to the limit) on a machine too
	// slow to produce enough hits, drops and rejections in that time.
	minDuration, maxDuration := 2*time.Second, 25*time.Second
	if testing.Short() {
		minDuration = 300 * time.Millisecond
	}
	const (
		minChecked = 100
		nKeys      = 64
		nWriters   = 4
		nReaders   = 6
		nFlood     = 8
	)
	// Few stripes, so that writes also invalidate neighbours' entries.
	gens := NewGenerations(256)
	caches := []*Cache{
		newCache(t, Config{Generations: gens, MaxEntries: 200}),
		newCache(t, Config{Generations: gens, MaxEntries: 100}),
		// One that the flood makes outgrow its instances, 64 entries to
		// 512 to 4096 to 32,768, while writers and readers use it.
		newSizedCache(t, Config{Generations: gens, MaxEntries: 1 << 15}, 64),
	}
	growing := caches[2]
	keys := make([]string, nKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("example.com/api/items/%d", i)
	}
	var (
		upstream [nKeys]atomic.Uint64 // the resource as the upstream has it
		recorded [nKeys]atomic.Uint64 // the last version whose write was recorded
		stop     atomic.Bool
		checked  atomic.Uint64 // Gets that returned a version for a written key
		failures atomic.Uint64
		wg       sync.WaitGroup
	)
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 5 {
			t.Errorf(format, args...)
		}
	}

	for w := range nWriters {
		wg.Go(func() {
			// Writer w alone writes keys w, w+nWriters, ...: serialized per
			// key as under the write lock.
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for !stop.Load() {
				i := w + nWriters*r.IntN(nKeys/nWriters)
				v := upstream[i].Add(1)
				switch c := caches[r.IntN(len(caches))]; r.IntN(10) {
				case 0:
					c.Forget(keys[i])
				default:
					c.Record(keys[i], numbered(v))
				}
				recorded[i].Store(v)
				if r.IntN(2) == 0 {
					// Leave readers time to learn and find valid entries.
					time.Sleep(100 * time.Microsecond)
				}
			}
		})
	}
	for rd := range nReaders {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(rd), 2))
			for !stop.Load() {
				i := r.IntN(nKeys)
				c := caches[r.IntN(len(caches))]
				if r.IntN(2) == 0 {
					s := c.Stamp(keys[i])
					v := upstream[i].Load()
					if r.IntN(8) == 0 {
						runtime.Gosched() // a slow upstream
					}
					c.Learn(keys[i], s, numbered(v))
					continue
				}
				floor := recorded[i].Load()
				if got, ok := c.Get(keys[i]); ok {
					checked.Add(1)
					if n := number(got); n < floor {
						fail("Get(%q) = version %d, but version %d had been recorded before", keys[i], n, floor)
					}
				}
			}
		})
	}
	for f := range nFlood {
		// Keys made beforehand: under the race detector, on a machine
		// busy with other tests, formatting them would leave the flood too
		// slow to overflow ristretto's buffer.
		floodKeys := make([]string, 1<<15)
		for n := range floodKeys {
			floodKeys[n] = fmt.Sprintf("example.com/other/%d/%d", f, n)
		}
		wg.Go(func() {
			for n := 0; !stop.Load(); n++ {
				c := caches[n%len(caches)]
				key := floodKeys[n%len(floodKeys)]
				c.Learn(key, c.Stamp(key), numbered(uint64(1+n/len(floodKeys))))
			}
		})
	}
	refused := func() (drops, rejections uint64) {
		for _, c := range caches {
			s := c.Stats()
			drops += s.Drops
			rejections += s.Rejections
		}
		return drops, rejections
	}
	start := time.Now()
	for {
		time.Sleep(50 * time.Millisecond)
		elapsed := time.Since(start)
		drops, rejections := refused()
		grown := growing.live.Load().growAt == 0
		enough := checked.Load() >= minChecked && drops > 0 && rejections > 0 && grown
		if elapsed >= maxDuration || elapsed >= minDuration && enough {
			break
		}
	}
	stop.Store(true)
	wg.Wait()

	drops, rejections := refused()
	t.Logf("checked %d hits in %v; ristretto dropped %d and rejected %d stores",
		checked.Load(), time.Since(start).Round(time.Millisecond), drops, rejections)
	if checked.Load() < minChecked {
		t.Errorf("only %d Gets returned a version: the check proved little", checked.Load())
	}
	if rejections == 0 {
		t.Error("ristretto rejected no store: the test did not exercise admission")
	}
	if drops == 0 {
		t.Error("ristretto dropped no store: the test did not overflow its buffer")
	}
	if in := growing.live.Load(); in.growAt != 0 {
		t.Errorf("the growing cache is still at its instance of %d entries: the test did not exercise growth", in.entries)
	}
	for _, c := range caches {
		if s := c.Stats(); s.Cost > s.MaxCost {
			t.Errorf("cost %d above the bound %d", s.Cost, s.MaxCost)
		}
	}
}

func TestMaxBytes(t *testing.T) {
	const maxBytes = 50_000
	c := newCache(t, Config{MaxBytes: maxBytes})
	etag := `"` + strings.Repeat("e", 98) + `"`
	const perEntry = EntryOverhead + 100
	for i := range 5000 {
		key := fmt.Sprintf("example.com/api/items/%d", i)
		c.Learn(key, c.Stamp(key), Version{Exists: true, ETag: etag})
		if i%100 == 0 {
			c.Wait()
		}
	}
	c.Wait()
	s := c.Stats()
	if s.MaxCost != maxBytes || s.Cost > maxBytes || s.Cost <= maxBytes/2 {
		t.Errorf("Stats() = %+v, want a cost near but not above %d", s, maxBytes)
	}
	present := 0
	for i := range 5000 {
		if _, ok := c.Get(fmt.Sprintf("example.com/api/items/%d", i)); ok {
			present++
		}
	}
	if present == 0 || present > maxBytes/perEntry {
		t.Errorf("%d entries of %d bytes present, want between 1 and %d", present, perEntry, maxBytes/perEntry)
	}
}

// settledHeap collects garbage until the live heap stops shrinking, and
// returns it.
func settledHeap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	for range 100 {
		prev := m.HeapAlloc
		time.Sleep(10 * time.Millisecond)
		runtime.GC()
		runtime.ReadMemStats(&m)
		if m.HeapAlloc+m.HeapAlloc/200 >= prev {
			break
		}
	}
	return m.HeapAlloc
}

// TestEntryOverhead checks that a cache bounded by bytes really uses about
// that much memory.
func TestEntryOverhead(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a large cache")
	}
	const n = 100_000
	keys := make([]string, n)
	etags := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("example.com/api/items/%06d", i)
		etags[i] = fmt.Sprintf(`"%022x"`, i)
	}
	gens := NewGenerations(DefaultStripes)
	// Caches closed by earlier tests release their memory a moment later,
	// once ristretto's goroutines have seen the close: on a busy machine,
	// after several collections.
	closing.Wait()
	before := settledHeap()
	c := newCache(t, Config{MaxBytes: n * (EntryOverhead + 24), Generations: gens})
	// The cache starts small and forgets what it holds each time it grows:
	// a second pass records what the first one lost.
	for range 2 {
		for i := range keys {
			if _, ok := c.Peek(keys[i]); !ok {
				c.Record(keys[i], Version{Exists: true, ETag: etags[i]})
			}
			if i%1000 == 0 {
				c.Wait()
			}
		}
		c.Wait()
	}
	// The smaller instances it outgrew are shut down a moment later.
	closing.Wait()
	after := settledHeap()
	// The ETags existed before the cache did; count them as the cache's.
	heap := float64(after) - float64(before) + float64(n*24)
	s := c.Stats()
	ratio := heap / float64(s.Cost)
	t.Logf("%d entries, cost %d, heap %.0f bytes: %.2f bytes of heap per unit of cost", s.Cost/(EntryOverhead+24), s.Cost, heap, ratio)
	if ratio < 0.7 || ratio > 1.4 {
		t.Errorf("heap per unit of cost %.2f: EntryOverhead %d is off", ratio, EntryOverhead)
	}
	runtime.KeepAlive(keys)
	runtime.KeepAlive(etags)
}

func TestCloseIdempotent(t *testing.T) {
	c, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	c.Record("k", numbered(1))
	c.Wait()

	// Ristretto's own Close deadlocks or panics when called concurrently.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(c.Close)
	}
	wg.Wait()
	c.Close()

	// Calls after Close are harmless and know nothing.
	wantMiss(t, c, "k")
	c.Learn("k", c.Stamp("k"), numbered(2))
	c.Record("k", numbered(3))
	c.Forget("k")
	c.Wait()
	wantMiss(t, c, "k")
	_ = c.Stats()
}

func TestConfig(t *testing.T) {
	for _, cfg := range []Config{
		{MaxEntries: -1},
		{MaxBytes: -1},
		{MaxBytes: EntryOverhead - 1},
		{TTL: -time.Second},
	} {
		if c, err := New(cfg); err == nil {
			c.Close()
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	c := newCache(t, Config{})
	if s := c.Stats(); s.MaxCost != DefaultMaxEntries {
		t.Errorf("default MaxCost %d, want %d", s.MaxCost, DefaultMaxEntries)
	}
	if c.ttl != DefaultTTL {
		t.Errorf("default TTL %v, want %v", c.ttl, DefaultTTL)
	}
	c = newCache(t, Config{MaxEntries: 10, MaxBytes: 1 << 20})
	if s := c.Stats(); s.MaxCost != 1<<20 {
		t.Errorf("MaxCost %d with MaxBytes set, want %d", s.MaxCost, 1<<20)
	}
}

func TestNewGenerations(t *testing.T) {
	for _, tc := range []struct{ in, want int }{
		{-5, 1}, {0, 1}, {1, 1}, {2, 2}, {3, 4}, {1000, 1024}, {1 << 18, 1 << 18},
	} {
		if got := NewGenerations(tc.in).Len(); got != tc.want {
			t.Errorf("NewGenerations(%d).Len() = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// A config reload retires a cache while requests of the old config may
// still record into it: Close must not race their stores into a panic, nor
// the growth that their stores set off.
func TestCloseRacingStores(t *testing.T) {
	for round := range 20 {
		c, err := newSized(Config{MaxEntries: 1000}, 16)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var progress atomic.Int64
		start := make(chan struct{})
		for g := range 4 {
			wg.Go(func() {
				<-start
				for i := range 500 {
					key := fmt.Sprintf("r%d/g%d/k%d", round, g, i%250)
					c.Record(key, Version{Exists: true, ETag: `"x"`})
					c.Learn(key, c.Stamp(key), Version{Exists: true, ETag: `"y"`})
					if i%4 == 0 {
						c.Forget(key)
					}
					progress.Add(1)
				}
			})
		}
		close(start)
		// Close at a different point of each round: before the first
		// store, while the cache grows, once it has.
		for progress.Load() < int64(round*100) {
			runtime.Gosched()
		}
		c.Close()
		wg.Wait()
	}
}

// A write recorded right after a read taught a new key must not be lost to
// ristretto's queue of new keys.
func TestRecordRightAfterLearn(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 1000})
	for i := 0; i < 200; i++ {
		key := fmt.Sprintf("/doc/%d", i)
		c.Learn(key, c.Stamp(key), Version{Exists: true, ETag: `"v1"`})
		c.Record(key, Version{Exists: true, ETag: `"v2"`})
		c.Wait()
		if v, ok := c.Get(key); !ok || v.ETag != `"v2"` {
			t.Fatalf("%s: Get = %+v, %v after Record of v2", key, v, ok)
		}
	}
}

func TestPeekDoesNotCount(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 100})
	c.Record("k", Version{Exists: true, ETag: `"a"`})
	c.Wait()
	if v, ok := c.Peek("k"); !ok || v.ETag != `"a"` {
		t.Fatalf("Peek = %+v, %v", v, ok)
	}
	if _, ok := c.Peek("absent"); ok {
		t.Fatal("Peek found an absent key")
	}
	if s := c.Stats(); s.Hits != 0 || s.Misses != 0 {
		t.Errorf("Peek counted: %+v", s)
	}
	c.Forget("k")
	if _, ok := c.Peek("k"); ok {
		t.Error("Peek returned a forgotten version")
	}
}

func TestSupersede(t *testing.T) {
	for _, tc := range []struct {
		old   string
		older []string
		new   string
		want  []string
	}{
		{`"a"`, nil, `"b"`, []string{`"a"`}},
		{`"b"`, []string{`"a"`}, `"c"`, []string{`"b"`, `"a"`}},
		// A write that kept the content keeps the tag current.
		{`"a"`, nil, `"a"`, nil},
		// Back to an earlier content: that tag is current again.
		{`"b"`, []string{`"a"`}, `"a"`, []string{`"b"`}},
		{`"a"`, []string{`"b"`, `"a"`}, `"c"`, []string{`"a"`, `"b"`}},
		// No tag to remember (created, or a version known only by date).
		{"", []string{`"a"`}, `"b"`, []string{`"a"`}},
		{"", nil, `"b"`, nil},
		{`"f"`, []string{`"e"`, `"d"`, `"c"`, `"b"`}, `"g"`, []string{`"f"`, `"e"`, `"d"`, `"c"`}},
	} {
		got := Supersede(tc.old, tc.older, tc.new)
		if !slices.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("Supersede(%s, %q, %s) = %q, want %q", tc.old, tc.older, tc.new, got, tc.want)
		}
	}
}

// Superseded tags count towards a cache bounded by bytes, and come back
// from Get as recorded.
func TestSupersededIsStoredAndCosted(t *testing.T) {
	c, err := New(Config{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Record("plain", Version{Exists: true, ETag: `"b"`})
	c.Record("history", Version{Exists: true, ETag: `"b"`, Superseded: []string{`"a"`, `"0"`}})
	c.Wait()
	v, ok := c.Get("history")
	if !ok || !slices.Equal(v.Superseded, []string{`"a"`, `"0"`}) {
		t.Fatalf("Get = %+v, %v", v, ok)
	}
	if cost := c.Stats().Cost; cost != 2*(EntryOverhead+3)+2*(3+16) {
		t.Errorf("cost %d", cost)
	}
}

// Update replaces a known entry as Record does: reads that stamped before
// it cannot put their older version back.
func TestUpdateInvalidatesEarlierReads(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 100})
	c.Record("/doc", Version{Exists: true, ETag: `"v1"`})
	c.Wait()
	if _, ok := c.Get("/doc"); !ok {
		t.Fatal("recorded version not found")
	}
	_, held, _ := c.Find("/doc")
	before := c.Stamp("/doc")
	c.Update("/doc", held, Version{Exists: true, ETag: `"v2"`})
	c.Learn("/doc", before, Version{Exists: true, ETag: `"v1"`})
	c.Wait()
	if v, ok := c.Get("/doc"); !ok || v.ETag != `"v2"` {
		t.Fatalf("after Update and an earlier read: %+v, %v", v, ok)
	}
}

// Reads that teach what is already known skip the lookup; the shortcut must
// never hide a different version, nor outlive an eviction.
func TestTaughtVersionShortcut(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 100})
	v1, v2 := Version{Exists: true, ETag: `"v1"`}, Version{Exists: true, ETag: `"v2"`}
	c.Learn("/doc", c.Stamp("/doc"), v1)
	c.Wait()
	c.Learn("/doc", c.Stamp("/doc"), v1) // skipped
	if v, ok := c.Get("/doc"); !ok || v.ETag != `"v1"` {
		t.Fatalf("Get = %+v, %v", v, ok)
	}
	// Changed behind the proxy's back: a read shows another version.
	c.Learn("/doc", c.Stamp("/doc"), v2)
	c.Wait()
	if v, ok := c.Get("/doc"); !ok || v.ETag != `"v2"` {
		t.Fatalf("after a read of another version: %+v, %v", v, ok)
	}
	// Gone from ristretto (as by eviction): the next read teaches it again.
	s := c.Stamp("/doc")
	in := c.live.Load()
	in.rc.Del("/doc")
	c.Wait()
	in.taught[c.gens.hash("/doc")&in.taughtMask].Store(0) // Del is no eviction; OnEvict clears it
	c.Learn("/doc", s, v2)
	c.Wait()
	if _, ok := c.Get("/doc"); !ok {
		t.Fatal("a read did not teach a version the cache had lost")
	}
}

// An evicted entry's stripe forgets what it taught.
func TestEvictionClearsTaught(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 10})
	for i := range 2000 {
		k := "/k/" + strconv.Itoa(i)
		c.Learn(k, c.Stamp(k), Version{Exists: true, ETag: `"v"`})
		if i%100 == 0 {
			c.Wait()
		}
	}
	c.Wait()
	// Every key that is not in the cache must not be marked as taught.
	in := c.live.Load()
	for i := range 2000 {
		k := "/k/" + strconv.Itoa(i)
		h := c.gens.hash(k)
		fp := c.fingerprint(h, c.Stamp(k).gen, Version{Exists: true, ETag: `"v"`})
		if _, ok := c.Peek(k); !ok && in.taught[h&in.taughtMask].Load() == fp {
			t.Fatalf("%s is gone but marked as taught", k)
		}
	}
}

// TestEntryKeepsVersion: the compact form the cache stores gives back every
// version it was given, whatever its times.
func TestEntryKeepsVersion(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	for _, v := range []Version{
		{},
		{Exists: true},
		{Exists: true, ETag: `W/"x"`},
		{Exists: true, ETag: `"a"`, LastModified: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)},
		{Exists: true, LastModified: time.Date(2024, 5, 1, 14, 0, 0, 0, paris)},
		{Exists: true, LastModified: time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC)},
		{Exists: true, LastModified: time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC)},
		{Exists: true, LastModified: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).Add(-time.Second)},
		{Exists: true, LastModified: time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)},
		{Exists: true, LastModified: time.Unix(0, 0)},
		{Exists: false, ETag: `"gone"`, Superseded: []string{`"3"`}},
		{Exists: true, ETag: `"5"`, Superseded: []string{`"4"`, `"3"`, `"2"`, `"1"`}},
	} {
		e := newEntry(42, 7, v)
		got := e.version()
		if !sameVersion(got, v) || got.LastModified.IsZero() != v.LastModified.IsZero() {
			t.Errorf("version %+v came back as %+v", v, got)
		}
		if !e.holds(v) {
			t.Errorf("entry of %+v does not hold it", v)
		}
		if !v.LastModified.IsZero() && got.LastModified.Location() != time.UTC {
			t.Errorf("LastModified of %+v came back in %v, want UTC", v, got.LastModified.Location())
		}
		other := v
		other.LastModified = v.LastModified.Add(time.Nanosecond)
		if e.holds(other) {
			t.Errorf("entry of %+v holds %+v", v, other)
		}
		other = v
		other.Exists = !v.Exists
		if e.holds(other) {
			t.Errorf("entry of %+v holds %+v", v, other)
		}
	}
}

// TestEntrySize: ristretto keeps entries inline in its map, and Get slows by
// about a third when they grow from 56 bytes to a Version's size plus
// bookkeeping (BenchmarkGetVsBaseline).
func TestEntrySize(t *testing.T) {
	if size := unsafe.Sizeof(entry{}); size > 56 {
		t.Errorf("entry takes %d bytes, want at most 56", size)
	}
}

// The write that found a key's entry replaces it in place: one allocation
// (the entry), no store in ristretto, which would cost its item as well.
func TestUpdateReplacesInPlace(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 100})
	c.Record("/doc", Version{Exists: true, ETag: `"v0"`})
	c.Wait()
	i := 0
	allocs := testing.AllocsPerRun(100, func() {
		_, held, ok := c.Find("/doc")
		if !ok {
			t.Fatal("recorded version not found")
		}
		i++
		c.Update("/doc", held, Version{Exists: true, ETag: `"v1"`})
	})
	if allocs != 1 {
		t.Errorf("Find and Update allocated %v times, want 1", allocs)
	}
	// No Wait: the version is in place at once.
	if v, ok := c.Get("/doc"); !ok || v.ETag != `"v1"` {
		t.Fatalf("after Update: %+v, %v", v, ok)
	}
}

// A slot never goes back to an older version of its key: a read that
// stamped before a write and lands after it leaves the write's version.
func TestSlotKeepsTheNewerVersion(t *testing.T) {
	newer := newEntry(7, 2, Version{Exists: true, ETag: `"v2"`})
	s := newSlot(newer)
	older := newEntry(7, 1, Version{Exists: true, ETag: `"v1"`})
	s.replace(&older)
	if got := s.cur.Load(); got.etag != `"v2"` {
		t.Fatalf("slot holds %q, want the newer \"v2\"", got.etag)
	}
	newest := newEntry(7, 3, Version{Exists: true, ETag: `"v3"`})
	s.replace(&newest)
	if got := s.cur.Load(); got.etag != `"v3"` {
		t.Fatalf("slot holds %q, want \"v3\"", got.etag)
	}
}

// A Held of an instance the cache has since replaced (it grew, or closed
// and reopened) is not written to: the version goes to the live instance.
func TestUpdateAfterGrowthStoresInTheLiveInstance(t *testing.T) {
	c := newSizedCache(t, Config{MaxEntries: 100_000}, 16)
	c.Record("/doc", Version{Exists: true, ETag: `"v1"`})
	c.Wait()
	_, held, ok := c.Find("/doc")
	if !ok {
		t.Fatal("recorded version not found")
	}
	next, err := c.newInstance(1024)
	if err != nil {
		t.Fatal(err)
	}
	old := c.live.Swap(next)
	c.retire(old)
	c.Update("/doc", held, Version{Exists: true, ETag: `"v2"`})
	c.Wait()
	if v, ok := c.Get("/doc"); !ok || v.ETag != `"v2"` {
		t.Fatalf("after Update with a stale Held: %+v, %v", v, ok)
	}
}

// A cache bounded by bytes stores every version anew, so that its cost
// counts what the version takes: a write that adds superseded tags grows
// the cost.
func TestUpdateByBytesCountsTheNewVersion(t *testing.T) {
	c := newCache(t, Config{MaxBytes: 1 << 20})
	c.Record("/doc", Version{Exists: true, ETag: `"a"`})
	c.Wait()
	_, held, _ := c.Find("/doc")
	c.Update("/doc", held, Version{Exists: true, ETag: `"b"`, Superseded: []string{`"a"`}})
	c.Wait()
	if cost := c.Stats().Cost; cost != EntryOverhead+3+3+16 {
		t.Errorf("cost %d, want %d", cost, EntryOverhead+3+3+16)
	}
}

// A read that shows another version of a key the cache holds replaces the
// entry in place, as a write does.
func TestLearnReplacesInPlace(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 100})
	c.Learn("/doc", c.Stamp("/doc"), Version{Exists: true, ETag: `"v1"`})
	c.Wait()
	in := c.live.Load()
	before, _ := in.rc.Get("/doc")
	c.Learn("/doc", c.Stamp("/doc"), Version{Exists: true, ETag: `"v2"`})
	after, _ := in.rc.Get("/doc")
	if before != after {
		t.Error("a read of another version stored a new slot")
	}
	if v, ok := c.Get("/doc"); !ok || v.ETag != `"v2"` {
		t.Fatalf("after the read: %+v, %v", v, ok)
	}
}

// A read that shows the version a write recorded keeps what only the write
// knew (the tags it replaced, a crowded date, reused tags), and a read that
// shows the date of the version the write replaced again makes it crowded.
func TestReadsKeepWhatWritesKnew(t *testing.T) {
	for _, byBytes := range []bool{false, true} {
		cfg := Config{MaxEntries: 1000}
		if byBytes {
			cfg = Config{MaxBytes: 1 << 20}
		}
		c := newCache(t, cfg)
		lm := time.Unix(1_700_000_000, 0).UTC()
		c.Record("a", Version{Exists: true, ETag: `"2"`, LastModified: lm, Crowded: true, TagsReused: true, Guard: true, Superseded: []string{`"1"`}})
		c.Record("b", Version{Exists: true, ETag: `"2"`, ReplacedDate: lm})
		c.Wait()
		c.Learn("a", c.Stamp("a"), Version{Exists: true, ETag: `"2"`, LastModified: lm.Add(time.Second), Guard: true})
		c.Learn("b", c.Stamp("b"), Version{Exists: true, ETag: `"2"`, LastModified: lm})
		c.Wait()
		a, _ := c.Get("a")
		if !a.Crowded || !a.TagsReused || len(a.Superseded) != 1 || !a.LastModified.Equal(lm.Add(time.Second)) {
			t.Errorf("bytes %v: a read forgot what the write knew: %+v", byBytes, a)
		}
		b, _ := c.Get("b")
		if !b.Crowded || !b.LastModified.Equal(lm) {
			t.Errorf("bytes %v: the date of the replaced version came back and the version is not crowded: %+v", byBytes, b)
		}
		// Another version learned by a read keeps nothing of the old one.
		c.Learn("a", c.Stamp("a"), Version{Exists: true, ETag: `"3"`, LastModified: lm, Guard: true})
		c.Wait()
		if a, _ := c.Get("a"); a.Crowded || a.TagsReused || a.Superseded != nil {
			t.Errorf("bytes %v: another version inherited the old one's: %+v", byBytes, a)
		}
	}
}
