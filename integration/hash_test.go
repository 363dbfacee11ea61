package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// guardTag is the tag write_guard's `etags hash` gives body, computed here
// independently of the handler.
func guardTag(body []byte) string {
	sum := sha256.Sum256(body)
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:18]) + `"`
}

// TestHashModeWithoutUpstreamETags puts `etags hash` in front of a backend
// that sends no ETag at all, and walks through what a client does.
func TestHashModeWithoutUpstreamETags(t *testing.T) {
	store := newStore(map[string]string{"/doc": `{"v":1}`})
	store.ETags = backend.NoETags
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
	}
	reverse_proxy %s`, startBackend(t, store)))
	client := &http.Client{Timeout: 30 * time.Second}

	get := do(t, client, "GET", "/doc", "")
	tag := get.header.Get("ETag")
	if get.status != 200 || tag != guardTag([]byte(`{"v":1}`)) {
		t.Fatalf("GET: %d ETag %q, want a strong tag %q", get.status, tag, guardTag([]byte(`{"v":1}`)))
	}
	if r := do(t, client, "GET", "/doc", "", "If-None-Match: "+tag); r.status != http.StatusNotModified || r.body != "" || r.header.Get("ETag") != tag {
		t.Errorf("conditional GET: %d ETag %q body %q, want 304 with the tag", r.status, r.header.Get("ETag"), r.body)
	}
	if r := do(t, client, "GET", "/doc", "", `If-None-Match: "old"`); r.status != 200 || r.body != `{"v":1}` {
		t.Errorf("conditional GET with another tag: %d %q", r.status, r.body)
	}
	if got := headTag(t, client, "/doc"); got != tag {
		t.Errorf("HEAD: ETag %q, want %q", got, tag)
	}

	put := do(t, client, "PUT", "/doc", `{"v":2}`, "If-Match: "+tag)
	next := put.header.Get("ETag")
	if put.status != 200 || next != guardTag([]byte(`{"v":2}`)) {
		t.Fatalf("PUT: %d ETag %q, want 200 with the new version's tag", put.status, next)
	}
	// Chain on the tag the write returned, without reading.
	if r := do(t, client, "PUT", "/doc", `{"v":3}`, "If-Match: "+next); r.status != 200 {
		t.Fatalf("chained PUT: %d %s", r.status, r.body)
	}
	stale := do(t, client, "PUT", "/doc", `{"v":"lost"}`, "If-Match: "+tag)
	if stale.status != http.StatusPreconditionFailed {
		t.Fatalf("stale PUT: %d", stale.status)
	}
	problemOf(t, stale)
	if got := mustBody(t, store, "/doc"); got != `{"v":3}` {
		t.Errorf("backend holds %s", got)
	}

	// If-Unmodified-Since works from the upstream's Last-Modified, at the
	// one-second resolution of HTTP dates.
	lm := do(t, client, "GET", "/doc", "").header.Get("Last-Modified")
	modified, err := http.ParseTime(lm)
	if err != nil {
		t.Fatalf("Last-Modified %q: %v", lm, err)
	}
	if r := do(t, client, "PUT", "/doc", `{"v":"old date"}`, "If-Unmodified-Since: "+httpDate(modified.Add(-time.Second))); r.status != http.StatusPreconditionFailed {
		t.Errorf("PUT with a date before Last-Modified: %d", r.status)
	}
	if r := do(t, client, "PUT", "/doc", `{"v":4}`, "If-Unmodified-Since: "+lm); r.status != 200 {
		t.Errorf("PUT with If-Unmodified-Since = Last-Modified: %d %s", r.status, r.body)
	}
}

// headTag returns the ETag of a HEAD response. A HEAD carries the tag the
// cache learned from a GET, and ristretto applies the store of a new key
// asynchronously: ask a few times.
func headTag(t *testing.T, client *http.Client, path string) string {
	t.Helper()
	var tag string
	for range 100 {
		if tag = do(t, client, "HEAD", path, "").header.Get("ETag"); tag != "" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return tag
}

// TestHashModeNoLostUpdates runs the read-modify-write workload through
// `etags hash` in front of a backend with no ETags.
func TestHashModeNoLostUpdates(t *testing.T) {
	resources := []string{"/hot/a", "/hot/b", "/hot/c"}
	store := hotStore(resources)
	store.ETags = backend.NoETags
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
	}
	reverse_proxy %s`, startBackend(t, store)))

	wl := &workload{
		base: caddyBase, resources: resources,
		clients: 12, perClient: 12, think: time.Millisecond,
		deadline: time.Now().Add(60 * time.Second),
	}
	wl.run(t)
	wl.requireNoneLost(t, store, "etags hash, backend without ETags")
}

// counterWorkload increments fixed-width counters: every version of a
// resource has the same length, so a backend whose ETag is mtime+size gives
// all versions written within one second the same tag.
type counterWorkload struct {
	base      string
	resources []string
	clients   int
	perClient int
	deadline  time.Time

	acked    sync.Map // resource → *atomic.Int64
	refused  atomic.Int64
	failures atomic.Int64
}

func (cw *counterWorkload) run() {
	client := &http.Client{Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	for c := range cw.clients {
		wg.Go(func() {
			for i := 0; i < cw.perClient && time.Now().Before(cw.deadline); {
				res := cw.resources[(c+i)%len(cw.resources)]
				switch status := cw.increment(client, res); status {
				case http.StatusOK, http.StatusNoContent:
					n, _ := cw.acked.LoadOrStore(res, new(atomic.Int64))
					n.(*atomic.Int64).Add(1)
					i++
				case http.StatusPreconditionFailed, http.StatusConflict:
					cw.refused.Add(1)
				default:
					cw.failures.Add(1)
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
}

func (cw *counterWorkload) increment(client *http.Client, res string) int {
	resp, err := client.Get(cw.base + res)
	if err != nil {
		return 0
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	n, err := strconv.Atoi(string(body))
	if resp.StatusCode != 200 || err != nil {
		return 0
	}
	return putIfMatch(client, cw.base+res, fmt.Sprintf("%08d", n+1), resp.Header.Get("ETag"))
}

// lost counts acknowledged increments missing from the final counters.
func (cw *counterWorkload) lost(t *testing.T, store *backend.Store) (lost, acked int64) {
	cw.acked.Range(func(res, n any) bool {
		final, err := strconv.Atoi(mustBody(t, store, res.(string)))
		if err != nil {
			t.Fatal(err)
		}
		a := n.(*atomic.Int64).Load()
		acked += a
		lost += a - int64(final)
		return true
	})
	return lost, acked
}

// TestMTimeETagsNeedHash shows that a backend whose ETag is mtime+size loses
// updates behind `etags upstream` (the guard cannot tell versions apart that
// the upstream labels alike) and loses none behind `etags hash`.
func TestMTimeETagsNeedHash(t *testing.T) {
	resources := []string{"/counter/a", "/counter/b"}
	for _, mode := range []string{"upstream", "hash"} {
		t.Run(mode, func(t *testing.T) {
			store := backend.New()
			store.ETags = backend.MTimeETags
			store.WriteDelay = time.Millisecond
			for _, r := range resources {
				store.Put(r, []byte("00000000"))
			}
			startCaddy(t, fmtSite(`
	write_guard {
		etags %s
	}
	reverse_proxy %s`, mode, startBackend(t, store)))
			cw := &counterWorkload{
				base: caddyBase, resources: resources,
				clients: 8, perClient: 10,
				deadline: time.Now().Add(60 * time.Second),
			}
			cw.run()
			lost, acked := cw.lost(t, store)
			t.Logf("etags %s, mtime+size ETags: %d of %d acknowledged increments lost; %d refused and retried, %d errors",
				mode, lost, acked, cw.refused.Load(), cw.failures.Load())
			if want := int64(cw.clients * cw.perClient); acked != want {
				t.Errorf("only %d of %d increments acknowledged", acked, want)
			}
			switch {
			case mode == "hash" && lost != 0:
				t.Errorf("etags hash lost %d increments", lost)
			case mode == "upstream" && lost == 0:
				t.Error("trusting mtime+size ETags lost nothing: the test does not show what hash prevents")
			}
		})
	}
}

// TestHashModeStreamsLargeBodies serves a 5 MB representation that the
// upstream produces slowly: the client must get its first bytes while the
// upstream is still writing, and the tag at the end.
func TestHashModeStreamsLargeBodies(t *testing.T) {
	const size = 5 << 20
	for _, withLength := range []bool{false, true} {
		t.Run(fmt.Sprintf("Content-Length %v", withLength), func(t *testing.T) {
			doc := bytes.Repeat([]byte("0123456789abcdef"), size/16)
			var (
				mu        sync.Mutex
				gate      = make(chan struct{})
				timedOut  atomic.Bool
				firstGets atomic.Int32
			)
			upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				body := doc
				mu.Unlock()
				switch r.Method {
				case http.MethodGet:
				case http.MethodHead:
					w.Header().Set("Content-Length", strconv.Itoa(len(body)))
					return
				case http.MethodPut:
					b, _ := io.ReadAll(r.Body)
					mu.Lock()
					doc = b
					mu.Unlock()
					w.WriteHeader(http.StatusNoContent)
					return
				}
				if withLength {
					w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				}
				w.Header().Set("Content-Type", "application/octet-stream")
				w.Write(body[:1<<20])
				w.(http.Flusher).Flush()
				if firstGets.Add(1) == 1 {
					// Hold the rest back until the client has seen data.
					select {
					case <-gate:
					case <-time.After(10 * time.Second):
						timedOut.Store(true)
					}
				}
				w.Write(body[1<<20:])
			})
			startCaddy(t, fmtSite(`
	write_guard {
		etags hash
	}
	reverse_proxy %s`, startBackend(t, upstream)))
			client := &http.Client{Timeout: 30 * time.Second}

			resp, err := client.Get(caddyBase + "/big")
			if err != nil {
				t.Fatal(err)
			}
			first := make([]byte, 1)
			if _, err := io.ReadFull(resp.Body, first); err != nil {
				t.Fatal(err)
			}
			if timedOut.Load() {
				t.Error("the first byte reached the client only after the upstream had finished")
			}
			close(gate)
			rest, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if got := append(first, rest...); !bytes.Equal(got, doc) {
				t.Fatalf("received %d bytes, not the %d sent", len(got), len(doc))
			}
			tag := resp.Trailer.Get("ETag")
			if tag != guardTag(doc) {
				t.Fatalf("trailer ETag %q, want %q (header ETag %q)", tag, guardTag(doc), resp.Header.Get("ETag"))
			}

			if got := headTag(t, client, "/big"); got != tag {
				t.Errorf("HEAD: ETag %q, want %q", got, tag)
			}
			newDoc := bytes.Repeat([]byte("fedcba9876543210"), size/16)
			put := do(t, client, "PUT", "/big", string(newDoc), "If-Match: "+tag)
			if put.status != http.StatusNoContent || put.header.Get("ETag") != guardTag(newDoc) {
				t.Errorf("PUT with the streamed tag: %d ETag %q, want 204 and %q", put.status, put.header.Get("ETag"), guardTag(newDoc))
			}
			if r := do(t, client, "PUT", "/big", "late", "If-Match: "+tag); r.status != http.StatusPreconditionFailed {
				t.Errorf("PUT with the old tag: %d", r.status)
			}
		})
	}
}
