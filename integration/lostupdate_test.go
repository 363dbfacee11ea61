package integration

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

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
