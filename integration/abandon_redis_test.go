package integration

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// heldLateStore applies the PUTs carrying X-Late only once release is
// closed, long after the guard gave up on them, as a legacy backend that
// ignores a closed connection does; applied is closed once it did.
type heldLateStore struct {
	store   http.Handler
	release chan struct{}
	applied chan struct{}
	once    sync.Once
}

func (l *heldLateStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut || r.Header.Get("X-Late") == "" {
		l.store.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	<-l.release
	replay, _ := http.NewRequest(http.MethodPut, r.URL.String(), strings.NewReader(string(body)))
	l.store.ServeHTTP(discardWriter{}, replay)
	l.once.Do(func() { close(l.applied) })
}

// With store redis, a write abandoned by one instance and applied late by
// the upstream must not be overwritten through another instance by a write
// naming a version from before it landed: every instance checks that
// resource's writes with the upstream for revalidate_abandoned, as the
// abandoning one does.
func TestAbandonedWriteLandingLateIsNotOverwrittenThroughAnotherInstance(t *testing.T) {
	srv := redistest.Start(t)
	store := newStore(map[string]string{"/doc": `{"v":0}`})
	late := &heldLateStore{store: store, release: make(chan struct{}), applied: make(chan struct{})}
	upstream := startBackend(t, late)
	site := guardSite(upstream, redisOpts(srv, "\t\twrite_timeout 300ms"))
	a, b := startInstance(t, site), startInstance(t, site)

	v0 := send(t, http.MethodGet, a.base+"/doc", "").header.Get("Etag")
	if r := send(t, http.MethodPut, a.base+"/doc", `{"v":"late"}`, "If-Match: "+v0, "X-Late: 1"); r.status != http.StatusGatewayTimeout {
		t.Fatalf("abandoned write through A: %d %s, want 504", r.status, r.body)
	}
	// Before the late write lands, a write through B is checked against
	// the upstream, which still has v0.
	r := send(t, http.MethodPut, b.base+"/doc", `{"v":"b"}`, "If-Match: "+v0)
	if r.status != http.StatusOK {
		t.Fatalf("write through B before the late write landed: %d %s", r.status, r.body)
	}
	vb := r.header.Get("Etag")
	close(late.release)
	select {
	case <-late.applied:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never applied the late write")
	}
	// vb is not the current version any more.
	if r := send(t, http.MethodPut, b.base+"/doc", `{"v":"stale"}`, "If-Match: "+vb); r.status != http.StatusPreconditionFailed {
		t.Errorf("write through B naming the version the late write replaced: %d %s, want 412", r.status, r.body)
	}
	if got := mustBody(t, store, "/doc"); got != `{"v":"late"}` {
		t.Errorf("backend holds %s, want the late write", got)
	}
}
