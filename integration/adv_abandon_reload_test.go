package integration

import (
	"net/http"
	"testing"
	"time"
)

// A write abandoned under one key, and a reload that changes the key while
// the upstream still works on it: the resource must stay checked against
// the upstream under its new key, or a version learned before the late
// write lands lets a write naming it overwrite the late change.
func TestAbandonedWriteSurvivesKeyChangingReload(t *testing.T) {
	store := newStore(map[string]string{"/doc": `{"v":0}`})
	late := &lateStore{store: store, delay: 1500 * time.Millisecond, gateway: true, applied: make(chan struct{})}
	addr := startBackend(t, late)
	tester := startCaddy(t, fmtSite("\twrite_guard {\n\t\twrite_timeout 300ms\n\t}\n\treverse_proxy %s\n", addr))
	client := &http.Client{}

	v0 := do(t, client, http.MethodGet, "/doc", "").header.Get("Etag")
	if r := do(t, client, http.MethodPut, "/doc", `{"v":"late"}`, "If-Match: "+v0); r.status != http.StatusGatewayTimeout {
		t.Fatalf("abandoned write: %d %s, want 504", r.status, r.body)
	}

	// The key changes; a read under the new key sees the version before
	// the late write.
	tester.InitServer(keyedConfig(addr, "\t\twrite_timeout 300ms\n"+pathKey, "1ns"), "caddyfile")
	do(t, client, http.MethodGet, "/doc", "")
	waitLearned(t, "/doc")
	select {
	case <-late.applied:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never applied the late write")
	}
	r := do(t, client, http.MethodPut, "/doc", `{"v":"stale"}`, "If-Match: "+v0)
	if got := mustBody(t, store, "/doc"); r.status != http.StatusPreconditionFailed || got != `{"v":"late"}` {
		t.Fatalf("write naming the version before the late write, under the new key: %d, backend holds %s; want 412 and the late write kept", r.status, got)
	}
}
