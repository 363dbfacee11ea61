package integration

import (
	"bytes"
	"net/http"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"
)

// TestReloadReleasesCacheMemory reloads the configuration ten times, each
// time with a cache_size that gives the new configuration a cache of its
// own (a number of entries, then a size, in turn), and reads and writes a
// resource after each reload over a keep-alive connection that stays open.
// What an old configuration leaves behind (its idle upstream connection
// keeps its handler, and so its cache, reachable for minutes) must not
// keep its retired cache's memory or goroutines alive.
func TestReloadReleasesCacheMemory(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	addr := startBackend(t, store)
	config := func(i int) string {
		size := fmtSite("%d", 1_000_000-i)
		if i%2 == 1 {
			size = fmtSite("%dMiB", 64+i)
		}
		return globalOptions + fmtSite(":9080 {\n\twrite_guard {\n\t\tcache_size %s\n\t}\n\treverse_proxy %s\n}\n", size, addr)
	}
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))

	// One client, and so one connection, per configuration, none closed
	// before the test ends.
	var transports []*http.Transport
	t.Cleanup(func() {
		for _, tr := range transports {
			tr.CloseIdleConnections()
		}
	})
	edit := func(i int) {
		tr := &http.Transport{}
		transports = append(transports, tr)
		c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		r := do(t, c, "GET", "/doc", "")
		if r.status != http.StatusOK {
			t.Fatalf("GET /doc: %d %s", r.status, r.body)
		}
		if r := do(t, c, "PUT", "/doc", fmtSite("v%d", i+2), "If-Match: "+r.header.Get("ETag")); r.status != http.StatusOK {
			t.Fatalf("PUT /doc: %d %s", r.status, r.body)
		}
	}

	const reloads = 10
	tester.InitServer(config(0), "caddyfile")
	edit(0)
	// Caches that earlier tests' configurations retired may still be
	// shutting down: their memory is not this test's. Ristretto runs two
	// goroutines per cache, and one cache is in use.
	for i := 0; i < 100 && cacheGoroutines() > 2; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	heap0, caches0 := liveHeap(), cacheGoroutines()
	goroutines0 := runtime.NumGoroutine()
	for i := 1; i <= reloads; i++ {
		tester.InitServer(config(i), "caddyfile")
		edit(i)
	}
	// A retired cache lets requests that were still using it finish
	// before it lets its memory go: wait for that, within a bound far
	// beyond it. Each retired cache used to keep the 56 MiB that its
	// default size of a million entries allocated up front; ten that kept
	// even the 1.2 MiB a cache starts with would exceed the bound.
	const bound = 6 << 20
	var heap uint64
	var caches int
	for range 100 {
		heap, caches = liveHeap(), cacheGoroutines()
		if heap < heap0+bound && caches <= caches0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The other goroutines that remain are mostly Caddy's: each old
	// configuration's reverse_proxy keeps its idle upstream connection
	// (three goroutines, with the backend's end) until its keep-alive
	// timeout, guard or no guard.
	t.Logf("after %d reloads: live heap %.1f MiB (from %.1f), goroutines %d (from %d), of them in the version caches %d (from %d)",
		reloads, float64(heap)/(1<<20), float64(heap0)/(1<<20), runtime.NumGoroutine(), goroutines0, caches, caches0)
	if heap >= heap0+bound {
		t.Errorf("live heap grew by %.1f MiB over %d reloads", (float64(heap)-float64(heap0))/(1<<20), reloads)
	}
	if caches > caches0 {
		t.Errorf("%d goroutines of the version caches run, %d before the reloads", caches, caches0)
	}
	if got := mustBody(t, store, "/doc"); got != fmtSite("v%d", reloads+2) {
		t.Errorf("backend holds %q after the last write", got)
	}
}

// liveHeap is the heap that survives a collection.
func liveHeap() uint64 {
	// Two collections: what only a sync.Pool still held (ristretto's
	// buffers refer to its cache) goes with the second.
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// cacheGoroutines counts the goroutines that run inside ristretto.
func cacheGoroutines() int {
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
