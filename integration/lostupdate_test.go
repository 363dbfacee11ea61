package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// workload is many clients doing read-modify-write on a few hot resources:
// GET, append the client's own line, PUT with If-Match, and on 412 or 409
// start over. A write is acknowledged when the PUT got a 2xx.
type workload struct {
	base string // where to send requests
	// bases, when set, replace base: a client sends each request to the
	// next of them in turn, so that an edit's read and write go through
	// different servers.
	bases     []string
	resources []string
	clients   int
	perClient int           // acknowledged writes each client aims for
	think     time.Duration // between GET and PUT, as a user editing would
	deadline  time.Time

	mu    sync.Mutex
	acked map[string][]string // resource → lines whose PUT was acknowledged
	// refused counts 412/409 answers; unavailable 503s; errors transport
	// failures and other answers.
	refused, unavailable, errors atomic.Int64
	turn                         atomic.Int64
}

func (wl *workload) run(t *testing.T) {
	t.Helper()
	wl.acked = map[string][]string{}
	client := &http.Client{Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	for c := range wl.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < wl.perClient && time.Now().Before(wl.deadline); {
				res := wl.resources[(c+i)%len(wl.resources)]
				line := fmt.Sprintf("client %d write %d", c, i)
				switch wl.edit(client, res, line) {
				case http.StatusOK, http.StatusCreated, http.StatusNoContent:
					wl.mu.Lock()
					wl.acked[res] = append(wl.acked[res], line)
					wl.mu.Unlock()
					i++
				case http.StatusPreconditionFailed, http.StatusConflict:
					wl.refused.Add(1)
				case http.StatusServiceUnavailable:
					wl.unavailable.Add(1)
					time.Sleep(50 * time.Millisecond)
				default:
					wl.errors.Add(1)
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
}

// edit performs one read-modify-write and returns the status of the write,
// or 0 when the exchange failed.
func (wl *workload) edit(client *http.Client, res, line string) int {
	readBase, writeBase := wl.base, wl.base
	if len(wl.bases) > 0 {
		n := int(wl.turn.Add(1))
		readBase, writeBase = wl.bases[n%len(wl.bases)], wl.bases[(n+1)%len(wl.bases)]
	}
	resp, err := client.Get(readBase + res)
	if err != nil {
		return 0
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0
	}
	tag := resp.Header.Get("ETag")
	time.Sleep(wl.think)
	return putIfMatch(client, writeBase+res, string(body)+line+"\n", tag)
}

// putIfMatch sends a conditional PUT and returns its status, or 0 when the
// exchange failed.
func putIfMatch(client *http.Client, url, body, tag string) int {
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	req.Header.Set("If-Match", tag)
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// requireNoneLost checks a guarded run of the workload: nothing lost,
// everything acknowledged, contention seen, no overlapping writes.
func (wl *workload) requireNoneLost(t *testing.T, store *backend.Store, setup string) {
	t.Helper()
	lost, acked := wl.lost(t, store)
	t.Logf("%s: %d of %d acknowledged writes lost; %d writes refused and retried, %d errors",
		setup, lost, acked, wl.refused.Load(), wl.errors.Load())
	if lost != 0 {
		t.Errorf("%s lost %d of %d acknowledged writes", setup, lost, acked)
	}
	if want := wl.clients * wl.perClient; acked != want {
		t.Errorf("only %d of %d writes were acknowledged before the deadline", acked, want)
	}
	if wl.refused.Load() == 0 {
		t.Errorf("no write was ever refused: the workload did not contend")
	}
	if n := store.Overlaps(); n != 0 {
		t.Errorf("%d writes to one resource overlapped at the backend", n)
	}
}

// racePair sends two PUTs naming the same version at the same moment, one
// to each path, and returns their statuses.
func racePair(client *http.Client, paths [2]string, tag string, body func(writer int) string) (int, int) {
	statuses := make(chan int, 2)
	start := make(chan struct{})
	for i, path := range paths {
		go func() {
			<-start
			statuses <- putIfMatch(client, caddyBase+path, body(i), tag)
		}()
	}
	close(start)
	return <-statuses, <-statuses
}

// lost returns the acknowledged lines that are missing from the final
// documents.
func (wl *workload) lost(t *testing.T, store *backend.Store) (lost, acked int) {
	t.Helper()
	for res, lines := range wl.acked {
		final := mustBody(t, store, res)
		for _, l := range lines {
			acked++
			if !strings.Contains(final, l+"\n") {
				lost++
			}
		}
	}
	return lost, acked
}

func hotStore(resources []string) *backend.Store {
	store := backend.New()
	for _, r := range resources {
		store.Put(r, nil)
	}
	store.WriteDelay = 2 * time.Millisecond
	return store
}

// TestNoLostUpdates runs the same read-modify-write workload straight at the
// naive backend, where updates are lost, and through Caddy with write_guard,
// where none may be.
func TestNoLostUpdates(t *testing.T) {
	resources := []string{"/hot/a", "/hot/b", "/hot/c"}
	direct := hotStore(resources)
	directAddr := startBackend(t, direct)
	guarded := hotStore(resources)
	guardedAddr := startBackend(t, guarded)
	startCaddy(t, fmtSite(`
	write_guard
	reverse_proxy %s`, guardedAddr))

	newLoad := func(base string) *workload {
		return &workload{
			base: base, resources: resources,
			clients: 12, perClient: 12, think: time.Millisecond,
			deadline: time.Now().Add(60 * time.Second),
		}
	}

	unguarded := newLoad("http://" + directAddr)
	unguarded.run(t)
	lostDirect, ackedDirect := unguarded.lost(t, direct)
	t.Logf("straight at the backend: %d of %d acknowledged writes lost", lostDirect, ackedDirect)
	if lostDirect == 0 {
		t.Errorf("the unguarded workload lost nothing: the test cannot show what the guard prevents")
	}

	withGuard := newLoad(caddyBase)
	withGuard.run(t)
	withGuard.requireNoneLost(t, guarded, "through write_guard")
}

// TestSameIfMatchOnlyOneWins sends pairs of writes naming the same version at
// the same moment: exactly one may reach the backend.
func TestSameIfMatchOnlyOneWins(t *testing.T) {
	store := newStore(map[string]string{"/race": "v0"})
	store.WriteDelay = 50 * time.Millisecond
	startCaddy(t, fmtSite(`
	write_guard
	reverse_proxy %s`, startBackend(t, store)))
	client := &http.Client{Timeout: 30 * time.Second}

	for round := range 5 {
		tag := do(t, client, "GET", "/race", "").header.Get("ETag")
		before := store.Writes()
		a, b := racePair(client, [2]string{"/race", "/race"}, tag, func(i int) string { return fmt.Sprintf("round %d writer %d", round, i) })
		if !(a == 200 && b == 412 || a == 412 && b == 200) {
			t.Fatalf("round %d: statuses %d and %d, want one 200 and one 412", round, a, b)
		}
		if got := store.Writes() - before; got != 1 {
			t.Fatalf("round %d: %d writes reached the backend, want 1", round, got)
		}
	}
}

// TestReloadDuringWrites reloads the configuration (with cache settings
// that give the new configuration a cache of its own) while writers are
// busy: the old and new configurations must share one lock manager and must
// not trust each other's stale versions.
func TestReloadDuringWrites(t *testing.T) {
	resources := []string{"/reload/a", "/reload/b"}
	store := hotStore(resources)
	store.WriteDelay = 20 * time.Millisecond
	addr := startBackend(t, store)
	config := func(ttl string) string {
		return strings.Replace(globalOptions, "grace_period 1ns", "grace_period 10s", 1) +
			fmtSite(":9080 {\n\twrite_guard {\n\t\tcache_ttl %s\n\t}\n\treverse_proxy %s\n}\n", ttl, addr)
	}
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	tester.InitServer(config("5m"), "caddyfile")

	wl := &workload{
		base: caddyBase, resources: resources,
		clients: 6, perClient: 15, think: time.Millisecond,
		deadline: time.Now().Add(60 * time.Second),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wl.run(t)
	}()
	for _, ttl := range []string{"6m", "7m", "8m"} {
		time.Sleep(300 * time.Millisecond)
		tester.InitServer(config(ttl), "caddyfile")
	}
	<-done

	lost, acked := wl.lost(t, store)
	t.Logf("%d acknowledged writes across 3 reloads, %d lost, %d refused, %d errors", acked, lost, wl.refused.Load(), wl.errors.Load())
	if lost != 0 {
		t.Errorf("%d acknowledged writes lost across reloads", lost)
	}
	if n := store.Overlaps(); n != 0 {
		t.Errorf("%d writes to one resource overlapped at the backend during reloads", n)
	}
	if acked == 0 {
		t.Error("no write was acknowledged")
	}
}
