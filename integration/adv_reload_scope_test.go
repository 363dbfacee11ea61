package integration

import (
	"net/http"
	"testing"
)

// scopedConfig guards only the paths under scope; the rest of the site goes
// to the same backend unguarded.
func scopedConfig(addr, scope string) string {
	return globalOptions +
		fmtSite(":9080 {\n\thandle %s {\n\t\twrite_guard\n\t\treverse_proxy %s\n\t}\n\thandle {\n\t\treverse_proxy %s\n\t}\n}\n", scope, addr, addr)
}

// A reload that stops guarding a path (the guard stays for other paths)
// and one that guards it again: writes made meanwhile did not go through
// the guard, and the version it cached before must not come back, as it
// does not when the guard is removed altogether.
func TestGuardScopeNarrowedAndBackRevivesNoVersion(t *testing.T) {
	store := newStore(map[string]string{"/items/1": `{"v":1}`})
	addr := startBackend(t, store)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	client := &http.Client{}

	tester.InitServer(scopedConfig(addr, "/items/*"), "caddyfile")
	v1 := do(t, client, http.MethodGet, "/items/1", "").header.Get("Etag")
	waitLearned(t, "*/items/1")

	tester.InitServer(scopedConfig(addr, "/other/*"), "caddyfile")
	do(t, client, http.MethodGet, "/other/x", "")
	if r := do(t, client, http.MethodPut, "/items/1", `{"v":"unguarded"}`); r.status != http.StatusOK {
		t.Fatalf("write while /items is not guarded: %d %s", r.status, r.body)
	}

	tester.InitServer(scopedConfig(addr, "/items/*"), "caddyfile")
	r := do(t, client, http.MethodPut, "/items/1", `{"v":"stale"}`, "If-Match: "+v1)
	if got := mustBody(t, store, "/items/1"); r.status != http.StatusPreconditionFailed || got != `{"v":"unguarded"}` {
		t.Fatalf("stale write once /items is guarded again: %d, backend holds %s; want 412 and the change made meanwhile kept", r.status, got)
	}
}
