package etagcache

import (
	"bytes"
	"fmt"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"
)

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
		t.Fatalf("the cache held only %s: the test shows nothing", mib(held))
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
