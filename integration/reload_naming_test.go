package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// holdingStore holds the PUTs that carry X-Hold at the backend until
// release is closed, telling arrived when the first comes in.
type holdingStore struct {
	store   http.Handler
	once    sync.Once
	arrived chan struct{}
	release chan struct{}
}

func newHoldingStore(store http.Handler) *holdingStore {
	return &holdingStore{store: store, arrived: make(chan struct{}), release: make(chan struct{})}
}

func (h *holdingStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut && r.Header.Get("X-Hold") != "" {
		h.once.Do(func() { close(h.arrived) })
		<-h.release
	}
	h.store.ServeHTTP(w, r)
}

// put sends a PUT from a goroutine other than the test's: errors are
// reported as status 0.
func put(url, body string, headers ...string) response {
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Set(name, strings.TrimSpace(value))
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return response{body: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// A write that the old configuration is still receiving when a reload
// changes the key must still be serialized with the new configuration's
// writes of the same resource: the old configuration is stopped at once,
// but its requests under way are not.
func TestWriteStillUploadingAcrossKeyChangeIsSerialized(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v0"})
	hold := newHoldingStore(store)
	addr := startBackend(t, hold)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	tester.InitServer(keyedConfig(addr, pathKey, "10s"), "caddyfile")
	client := &http.Client{}
	if r := do(t, client, http.MethodPut, "/warm-up", "x", "If-None-Match: *"); r.status != http.StatusCreated {
		t.Fatalf("warm-up write: %d %s", r.status, r.body)
	}
	v0 := do(t, client, http.MethodGet, "/doc", "").header.Get("Etag")

	// A client of the old configuration sends half its body.
	slow := dialCaddy(t)
	const body = "from-slow-client"
	slow.send(fmt.Sprintf("PUT /doc HTTP/1.1\r\nHost: localhost:9080\r\nIf-Match: %s\r\nContent-Length: %d\r\n\r\n%s", v0, len(body), body[:5]))

	tester.InitServer(keyedConfig(addr, "", "10s"), "caddyfile")
	time.Sleep(200 * time.Millisecond) // the old configuration's watcher sees it stopped

	// A client of the new configuration writes from the same version; the
	// backend holds its write while the slow client finishes its body.
	fast := make(chan response, 1)
	go func() { fast <- put(caddyBase+"/doc", "from-fast-client", "If-Match: "+v0, "X-Hold: 1") }()
	select {
	case <-hold.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the new configuration's write never reached the backend")
	}
	slow.send(body[5:])
	slowDone := make(chan rawResponse, 1)
	go func() { slowDone <- slow.readResponse(false) }()
	var slowAnswer rawResponse
	select {
	case slowAnswer = <-slowDone:
	case <-time.After(2 * time.Second):
		// Waiting for the write ahead of it, as it should.
	}
	close(hold.release)
	fastAnswer := <-fast
	if slowAnswer.status == 0 {
		slowAnswer = <-slowDone
	}
	if slowAnswer.status/100 == 2 && fastAnswer.status/100 == 2 {
		t.Errorf("both writes from %s acknowledged (old configuration %d, new %d): backend holds %q, the other change is lost",
			v0, slowAnswer.status, fastAnswer.status, mustBody(t, store, "/doc"))
	}
}

// A configuration that served no guarded write (only reads, and a POST
// the guard forgets versions after) between two that key alike must not
// let the third trust what the first cached: the POST forgot the
// resource under the second's key only.
func TestKeyChangedAndBackWithOnlyAPostBetween(t *testing.T) {
	store := newStore(map[string]string{"/items/1": `{"v":1}`})
	addr := startBackend(t, store)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	client := &http.Client{}

	tester.InitServer(keyedConfig(addr, pathKey, "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPut, "/warm-up", "x", "If-None-Match: *"); r.status != http.StatusCreated {
		t.Fatalf("warm-up write: %d %s", r.status, r.body)
	}
	v1 := do(t, client, http.MethodGet, "/items/1", "").header.Get("Etag")
	waitLearned(t, "/items/1")

	tester.InitServer(keyedConfig(addr, "", "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPost, "/items/1", `{"v":"post"}`); r.status != http.StatusOK {
		t.Fatalf("POST under the second key: %d %s", r.status, r.body)
	}

	tester.InitServer(keyedConfig(addr, pathKey, "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPut, "/items/1", `{"v":"stale"}`, "If-Match: "+v1); r.status != http.StatusPreconditionFailed {
		t.Errorf("stale write after the key came back: %d %s, want 412", r.status, r.body)
	}
	if got := mustBody(t, store, "/items/1"); got != `{"v":"post"}` {
		t.Errorf("backend holds %s: the POST's change was lost", got)
	}
}

// With store redis, versions live in Redis under the keys of the
// configuration that wrote them: a reload that changes the key and one
// that changes it back must not revive them either.
func TestKeyChangedAndBackRevivesNoRedisVersion(t *testing.T) {
	srv := redistest.Start(t)
	store := newStore(map[string]string{"/items/1": `{"v":1}`})
	addr := startBackend(t, store)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	client := &http.Client{}
	redis := "\n" + redisOpts(srv, "")

	tester.InitServer(keyedConfig(addr, redis, "1ns"), "caddyfile")
	v1 := do(t, client, http.MethodGet, "/items/1", "").header.Get("Etag")
	r := do(t, client, http.MethodPut, "/items/1", `{"v":2}`, "If-Match: "+v1)
	if r.status != http.StatusOK {
		t.Fatalf("write under the first key: %d %s", r.status, r.body)
	}
	v2 := r.header.Get("Etag")

	tester.InitServer(keyedConfig(addr, pathKey+redis, "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPut, "/items/1", `{"v":"b"}`, "If-Match: "+v2); r.status != http.StatusOK {
		t.Fatalf("write under the second key: %d %s", r.status, r.body)
	}

	tester.InitServer(keyedConfig(addr, redis, "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPut, "/items/1", `{"v":"stale"}`, "If-Match: "+v2); r.status != http.StatusPreconditionFailed {
		t.Errorf("stale write after the key came back: %d %s, want 412", r.status, r.body)
	}
	if got := mustBody(t, store, "/items/1"); got != `{"v":"b"}` {
		t.Errorf("backend holds %s: the change made under the second key was lost", got)
	}
}
