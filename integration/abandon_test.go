package integration

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// lateStore applies its first write long after the client (the guard) gave
// up on it, as a legacy backend that ignores a closed connection does.
// With gateway set it is a gateway in front of such a backend: it answers
// 504 at once and the backend applies the write later.
type lateStore struct {
	store   http.Handler
	delay   time.Duration
	gateway bool
	first   atomic.Bool
	applied chan struct{}
}

func (l *lateStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut || !l.first.CompareAndSwap(false, true) {
		l.store.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	apply := func() {
		time.Sleep(l.delay)
		replay, _ := http.NewRequest(http.MethodPut, r.URL.String(), strings.NewReader(string(body)))
		l.store.ServeHTTP(discardWriter{}, replay)
		close(l.applied)
	}
	if l.gateway {
		go apply()
		http.Error(w, "gateway timeout", http.StatusGatewayTimeout)
		return
	}
	apply()
}

// A write abandoned at write_timeout that the upstream applies later must
// not be overwritten by a write naming the version before it, even when a
// version check in between saw that older version.
func TestAbandonedWriteLandingLateIsNotOverwritten(t *testing.T) {
	for _, gateway := range []bool{false, true} {
		name := "abandoned at write_timeout"
		if gateway {
			name = "answered 504 by a gateway upstream"
		}
		t.Run(name, func(t *testing.T) { testLateWrite(t, gateway) })
	}
}

func testLateWrite(t *testing.T, gateway bool) {
	store := newStore(map[string]string{"/doc": `{"v":0}`})
	late := &lateStore{store: store, delay: 1500 * time.Millisecond, gateway: gateway, applied: make(chan struct{})}
	startCaddy(t, fmtSite("\twrite_guard {\n\t\twrite_timeout 300ms\n\t}\n\treverse_proxy %s\n", startBackend(t, late)))
	client := &http.Client{}

	read := do(t, client, http.MethodGet, "/doc", "")
	v0 := read.header.Get("Etag")

	// Abandoned: the client gets 504; the upstream applies it later.
	if r := do(t, client, http.MethodPut, "/doc", `{"v":"late"}`, "If-Match: "+v0); r.status != http.StatusGatewayTimeout {
		t.Fatalf("abandoned write: %d %s, want 504", r.status, r.body)
	}
	// A write with another tag is refused after a version check, which still
	// sees v0: the late write has not landed yet.
	if r := do(t, client, http.MethodPut, "/doc", `{"v":"x"}`, `If-Match: "other"`); r.status != http.StatusPreconditionFailed {
		t.Fatalf("write naming another version: %d %s, want 412", r.status, r.body)
	}
	// The version check taught the cache the version before the late write
	// (ristretto stores a new key asynchronously: wait for it).
	waitLearned(t, "*/doc")
	select {
	case <-late.applied:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never applied the late write")
	}
	// Naming v0 now would overwrite the late change.
	r := do(t, client, http.MethodPut, "/doc", `{"v":"stale"}`, "If-Match: "+v0)
	if r.status != http.StatusPreconditionFailed {
		t.Fatalf("write naming the version before the late write: %d %s, want 412", r.status, r.body)
	}
	if got := mustBody(t, store, "/doc"); got != `{"v":"late"}` {
		t.Fatalf("backend holds %s, want the late write", got)
	}
}
