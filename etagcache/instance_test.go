package etagcache

import (
	"bytes"
	"fmt"
	"runtime"
	"runtime/pprof"
	"slices"
	"testing"
	"time"
)

// newSizedCache is newCache with a first instance of the given size, so
// that tests see the cache grow without filling it with thousands of keys.
func newSizedCache(t testing.TB, cfg Config, initial int64) *Cache {
	t.Helper()
	c, err := newSized(cfg, initial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// mib formats a number of bytes.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// TestCloseReleasesMemory: a handler of a retired config keeps its Cache
// for as long as its idle connections live, so a closed Cache must not keep
// ristretto's memory, which a cache grown to its default size of a million
// entries allocated.
func TestCloseReleasesMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a large cache")
	}
	// Enough resources to outgrow the first instances (16k and 128k
	// entries) and reach the one sized for the full million.
	const n = 200_000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("example.com/api/items/%06d", i)
	}
	gens := NewGenerations(DefaultStripes)
	closing.Wait()
	goroutines := ristrettoGoroutinesBecome(0)
	before := settledHeap()

	c, err := New(Config{Generations: gens})
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		c.Learn(k, c.Stamp(k), numbered(1))
		if i%1000 == 0 {
			c.Wait()
		}
	}
	c.Wait()
	closing.Wait()
	held := int64(settledHeap()) - int64(before)
	entries := c.Stats().Cost

	c.Close()
	closing.Wait()
	retained := int64(settledHeap()) - int64(before)
	t.Logf("%d entries: the cache held %s, after Close %s", entries, mib(held), mib(retained))
	// ristretto's structures for a million entries alone take 48 MiB.
	if held < 40<<20 {
		t.Fatalf("the cache held only %s: it never grew to its full size, and the test shows nothing", mib(held))
	}
	if retained > 5<<20 {
		t.Errorf("a closed cache still holds %s of the %s it took", mib(retained), mib(held))
	}
	if got := ristrettoGoroutinesBecome(goroutines) - goroutines; got != 0 {
		t.Errorf("%d goroutines of ristretto run after Close", got)
	}
	runtime.KeepAlive(c)
	runtime.KeepAlive(keys)
}

// ristrettoGoroutinesBecome waits until want goroutines run inside
// ristretto, and returns how many do: a goroutine that ristretto's Close
// stopped may still be on its way out when Close returns.
func ristrettoGoroutinesBecome(want int) int {
	n := ristrettoGoroutines()
	for i := 0; i < 500 && n != want; i++ {
		time.Sleep(10 * time.Millisecond)
		n = ristrettoGoroutines()
	}
	return n
}

// ristrettoGoroutines counts the goroutines that run inside ristretto.
func ristrettoGoroutines() int {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	n := 0
	for _, g := range bytes.Split(buf.Bytes(), []byte("\n\n")) {
		if bytes.Contains(g, []byte("github.com/dgraph-io/ristretto")) {
			n++
		}
	}
	return n
}

// TestGrowth follows a cache through its instances: each is larger than the
// last, up to the cache's size; the versions the smaller ones held are
// forgotten but never come back older than the last write; the instances
// outgrown stop their goroutines; and emptying them counts as no eviction.
func TestGrowth(t *testing.T) {
	closing.Wait()
	goroutines := ristrettoGoroutinesBecome(0)
	const size = 10_000
	c := newSizedCache(t, Config{MaxEntries: size}, 100)
	sizes := []int64{c.live.Load().entries}

	stale := c.Stamp("/doc")
	c.Record("/doc", numbered(2))
	c.Wait()
	wantVersion(t, c, "/doc", numbered(2))

	for i := 0; i < 5*size && c.live.Load().growAt != 0; i++ {
		k := fmt.Sprintf("/k/%d", i)
		c.Learn(k, c.Stamp(k), numbered(1))
		if i%100 == 0 {
			c.Wait()
		}
		if e := c.live.Load().entries; e != sizes[len(sizes)-1] {
			sizes = append(sizes, e)
		}
	}
	// 100, 800, then the full size rather than 6,400.
	if want := []int64{100, 800, size}; !slices.Equal(sizes, want) {
		t.Fatalf("instances of %v entries, want %v", sizes, want)
	}

	// The first instance, and the version of the write it held, are gone;
	// the read that began before the write cannot bring back its older
	// version into the new instance, a read after the write can.
	wantMiss(t, c, "/doc")
	c.Learn("/doc", stale, numbered(1))
	c.Wait()
	wantMiss(t, c, "/doc")
	c.Learn("/doc", c.Stamp("/doc"), numbered(2))
	c.Wait()
	wantVersion(t, c, "/doc", numbered(2))

	closing.Wait()
	if got := ristrettoGoroutinesBecome(goroutines+2) - goroutines; got != 2 {
		t.Errorf("%d goroutines of ristretto run for a cache that outgrew two instances, want the 2 of the live one", got)
	}
	s := c.Stats()
	if s.Evictions != 0 || s.MaxCost != size {
		t.Errorf("Stats() = %+v: want no eviction in a cache that never filled, and its bound of %d", s, size)
	}

	c.Close()
	closing.Wait()
	if got := ristrettoGoroutinesBecome(goroutines) - goroutines; got != 0 {
		t.Errorf("%d goroutines of ristretto run after Close", got)
	}
}

// TestGrowthSteps: a cache bounded by entries or by bytes outgrows each
// instance once it holds what the instance is sized for, not before, and
// ends with one sized for its bound, which it fills up to the bound: every
// instance takes the cache's bound as its own.
func TestGrowthSteps(t *testing.T) {
	for _, cfg := range []Config{{MaxEntries: 5000}, {MaxBytes: 5000 * (EntryOverhead + typicalETagLen)}} {
		c := newSizedCache(t, cfg, 64)
		type step struct{ entries, learned int64 }
		steps := []step{{c.live.Load().entries, 0}}
		for i := range 20_000 {
			k := fmt.Sprintf("/k/%d", i)
			// Tags of the typical length: a cache bounded by bytes then
			// holds as many as one bounded by entries.
			c.Learn(k, c.Stamp(k), Version{Exists: true, ETag: fmt.Sprintf(`"%022d"`, i)})
			if i%16 == 0 {
				c.Wait()
			}
			if e := c.live.Load().entries; e != steps[len(steps)-1].entries {
				steps = append(steps, step{e, 0})
			}
			steps[len(steps)-1].learned++
		}
		c.Wait()
		var sizes []int64
		for _, st := range steps {
			sizes = append(sizes, st.entries)
		}
		if want := []int64{64, 512, 5000}; !slices.Equal(sizes, want) {
			t.Fatalf("%+v: instances of %v entries, want %v", cfg, sizes, want)
		}
		// One key in 64 looks at the fill, and ristretto applies stores a
		// little later: an instance takes somewhat more than its size
		// (past 2048 more, with odds below e^-32).
		for _, st := range steps[:len(steps)-1] {
			if st.learned < st.entries || st.learned > 2*st.entries+2048 {
				t.Errorf("%+v: the instance of %d entries was outgrown after %d resources", cfg, st.entries, st.learned)
			}
		}
		if in := c.live.Load(); in.growAt != 0 {
			t.Errorf("%+v: the last instance would grow at %d", cfg, in.growAt)
		}
		if s := c.Stats(); s.MaxCost != c.maxCost || s.Cost > s.MaxCost || s.Cost < s.MaxCost/2 {
			t.Errorf("%+v: Stats() = %+v, want a cost near but not above its bound", cfg, s)
		}
	}
}

// TestEmptyCacheMemory measures what a cache costs before it holds
// anything, whatever its bound: its first instance, not the structures its
// bound would need.
func TestEmptyCacheMemory(t *testing.T) {
	gens := NewGenerations(DefaultStripes)
	for _, cfg := range []Config{
		{},
		{MaxEntries: 10_000_000},
		{MaxBytes: 64 << 20},
		{MaxBytes: 1 << 30},
	} {
		cfg.Generations = gens
		closing.Wait()
		before := settledHeap()
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		empty := int64(settledHeap()) - int64(before)
		c.Close()
		t.Logf("%+v: %s", cfg, mib(empty))
		if empty > 4<<20 {
			t.Errorf("an empty cache bounded at %d entries or %d bytes takes %s", cfg.MaxEntries, cfg.MaxBytes, mib(empty))
		}
		runtime.KeepAlive(c)
	}
}

// ristretto names victims of its policy whose entry was deleted already
// (Forget deletes at once, and tells the policy later) without a value:
// that is no reason to panic on its goroutine.
func TestVictimWithoutEntry(t *testing.T) {
	c := newCache(t, Config{MaxEntries: 8})
	for i := range 5000 {
		c.Record(fmt.Sprint("/doc/", i), Version{Exists: true, ETag: `"v"`})
		c.Forget(fmt.Sprint("/doc/", i-3))
	}
	c.Wait()
	// What the policy hands over for such a victim.
	c.live.Load().untaught(nil)
}
