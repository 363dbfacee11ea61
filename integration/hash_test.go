package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

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
	// one-second resolution of HTTP dates. The writes above may have left
	// versions with one date, which it cannot tell apart (dates_test.go).
	// A version written in a second of its own has a date that names it.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	current := do(t, client, "GET", "/doc", "")
	if r := do(t, client, "PUT", "/doc", `{"v":"dated"}`, "If-Match: "+current.header.Get("ETag")); r.status != 200 {
		t.Fatalf("PUT: %d %s", r.status, r.body)
	}
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

// upstreamTrailerTag is the entity-tag the upstream sends in its trailers;
// with `etags hash` it names no version the guard vouches for.
const upstreamTrailerTag = `"upstream-trailer"`

// trailerUpstream streams its answers in chunks and sends an ETag trailer
// field with them, declared in Trailer as net/http wants it, or undeclared.
func trailerUpstream() http.Handler {
	var mu sync.Mutex
	doc := "part one, part two"
	stream := func(w http.ResponseWriter, status int, body string, trailers string) {
		w.Header().Set("Content-Type", "text/plain")
		if trailers != "" {
			w.Header().Set("Trailer", trailers)
		}
		w.WriteHeader(status)
		half := len(body) / 2
		io.WriteString(w, body[:half])
		w.(http.Flusher).Flush()
		io.WriteString(w, body[half:])
		if trailers == "" {
			w.Header().Set(http.TrailerPrefix+"Etag", upstreamTrailerTag)
			return
		}
		w.Header().Set("Etag", upstreamTrailerTag)
		if strings.Contains(trailers, "X-Checksum") {
			w.Header().Set("X-Checksum", "sum-of-"+body)
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		current := doc
		mu.Unlock()
		switch {
		case r.Method == http.MethodHead:
			w.Header().Set("Content-Type", "text/plain")
		case r.Method == http.MethodPut && r.URL.Path == "/doc":
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			doc = string(b)
			mu.Unlock()
			stream(w, http.StatusOK, "saved", "Etag")
		case r.URL.Path == "/doc":
			stream(w, http.StatusOK, current, "Etag")
		case r.URL.Path == "/checksummed":
			stream(w, http.StatusOK, current, "Etag, X-Checksum")
		case r.URL.Path == "/undeclared":
			stream(w, http.StatusOK, current, "")
		case r.URL.Path == "/large":
			stream(w, http.StatusOK, strings.Repeat("large ", 1000), "Etag")
		default:
			stream(w, http.StatusNotFound, "not here", "Etag")
		}
	})
}

// rawGet sends one GET on a new connection and reads its answer off the
// wire.
func rawGet(t *testing.T, path string) rawResponse {
	t.Helper()
	c := dialCaddy(t)
	c.send("GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
	return c.readResponse(false)
}

// allETags lists every ETag field of an answer, in its header and its
// trailers.
func allETags(r rawResponse) []string {
	return append(r.header.Values("Etag"), r.trailer.Values("Etag")...)
}

// fieldTokens lists the comma-separated elements of every line of a list
// field, such as Trailer, as they came.
func fieldTokens(hdr textproto.MIMEHeader, field string) []string {
	var tokens []string
	for _, line := range hdr.Values(field) {
		for _, tok := range strings.Split(line, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				tokens = append(tokens, tok)
			}
		}
	}
	return tokens
}

func countFold(list []string, s string) int {
	n := 0
	for _, v := range list {
		if strings.EqualFold(v, s) {
			n++
		}
	}
	return n
}

// TestHashedUpstreamETagTrailer puts `etags hash` in front of an upstream
// that sends an ETag of its own as a trailer field. ETag is a singleton
// field: the client gets exactly one, the guard's, announced once in
// Trailer when it follows the body; the upstream's names no version the
// guard trusts and never reaches the client.
func TestHashedUpstreamETagTrailer(t *testing.T) {
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
		hash_max_body 1KiB
	}
	reverse_proxy %s`, startBackend(t, trailerUpstream())))

	for _, c := range []struct {
		name, path string
		status     int
		// tagged: the answer carries the guard's tag of its body.
		tagged bool
		// otherTrailers the upstream declared, which must go on.
		otherTrailers []string
	}{
		{name: "declared", path: "/doc", status: 200, tagged: true},
		{name: "declared with others", path: "/checksummed", status: 200, tagged: true, otherTrailers: []string{"X-Checksum"}},
		{name: "undeclared", path: "/undeclared", status: 200, tagged: true},
		{name: "too large to tag", path: "/large", status: 200},
		{name: "not found", path: "/missing", status: 404},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := rawGet(t, c.path)
			if r.status != c.status {
				t.Fatalf("status %d, want %d: %v", r.status, c.status, r)
			}
			tags := allETags(r)
			if c.tagged {
				if want := guardTag([]byte(r.body)); len(tags) != 1 || tags[0] != want {
					t.Errorf("ETag fields %q, want exactly one, the guard's %s: %v", tags, want, r)
				}
			} else if len(tags) != 0 {
				t.Errorf("ETag fields %q on an answer the guard does not tag: %v", tags, r)
			}
			announced := fieldTokens(r.header, "Trailer")
			if n := countFold(announced, "Etag"); n > 1 || n == 1 && r.trailer.Get("Etag") == "" && c.tagged {
				t.Errorf("Trailer announces ETag %d times (%q), trailer ETag %q", n, r.header.Values("Trailer"), r.trailer.Values("Etag"))
			}
			for _, f := range c.otherTrailers {
				if countFold(announced, f) != 1 || r.trailer.Get(f) == "" {
					t.Errorf("the upstream's %s trailer was lost: Trailer %q, trailers %v", f, r.header.Values("Trailer"), r.trailer)
				}
			}
		})
	}

	// A write's answer, held until the guard has asked for the new version,
	// carries that version's tag, and no other.
	t.Run("write", func(t *testing.T) {
		tag := rawGet(t, "/doc").trailer.Get("Etag")
		if tag == "" {
			t.Fatal("GET /doc: no trailer ETag")
		}
		const body = "part three"
		c := dialCaddy(t)
		c.send("PUT /doc HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nIf-Match: " + tag +
			"\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
		r := c.readResponse(false)
		if r.status != 200 {
			t.Fatalf("PUT: %v", r)
		}
		if tags, want := allETags(r), guardTag([]byte(body)); len(tags) != 1 || tags[0] != want {
			t.Errorf("PUT answer's ETag fields %q, want exactly one, the guard's %s: %v", tags, want, r)
		}
		if n := countFold(fieldTokens(r.header, "Trailer"), "Etag"); n != 0 && r.trailer.Get("Etag") == "" || n > 1 {
			t.Errorf("PUT answer announces ETag as a trailer %d times (%q) and sends %q", n, r.header.Values("Trailer"), r.trailer.Values("Etag"))
		}
	})
}

// withWriteAnswerBody answers writes with a short body, as most APIs do: the
// connection that carried the write stays busy until reverse_proxy has
// relayed that body.
func withWriteAnswerBody(s *backend.Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut {
			s.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		io.WriteString(w, `{"ok":true}`)
	})
}

// With one connection per upstream host, the GET that fetches the new
// version after a write must not wait for the connection the write's own
// answer still occupies.
func TestHashedWriteWithOneUpstreamConnection(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	store.ETags = backend.NoETags
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
		write_timeout 3s
	}
	reverse_proxy %s {
		transport http {
			max_conns_per_host 1
		}
	}`, startBackend(t, withWriteAnswerBody(store))))
	client := &http.Client{Timeout: 30 * time.Second}

	tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
	start := time.Now()
	put := do(t, client, "PUT", "/doc", "v2", "If-Match: "+tag)
	took := time.Since(start)
	if put.status != 200 {
		t.Fatalf("PUT: %d %s", put.status, put.body)
	}
	if took > 2*time.Second || put.header.Get("ETag") != guardTag([]byte("v2")) {
		t.Errorf("PUT took %s and answered ETag %q (want %q at once): the version fetch waited on the write's own connection until write_timeout",
			took.Round(100*time.Millisecond), put.header.Get("ETag"), guardTag([]byte("v2")))
	}
}

// cutOffReads answers GETs with a body that breaks off mid-way once cut
// is set, as an upstream that crashes while sending does.
func cutOffReads(s *backend.Store, cut *atomic.Bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !cut.Load() {
			s.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(200)
		io.WriteString(w, "v")
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})
}

// A version check that fails must answer the write with a problem, and a
// write that was applied must be answered, whatever the GET that follows it
// runs into.
func TestHashedProbeCutOffByUpstream(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	store.ETags = backend.NoETags
	var cut atomic.Bool
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
	}
	reverse_proxy %s`, startBackend(t, cutOffReads(store, &cut))))
	client := &http.Client{Timeout: 30 * time.Second}
	tag := guardTag([]byte("v1"))

	send := func(body, ifMatch string) (int, error) {
		req, _ := http.NewRequest("PUT", caddyBase+"/doc", strings.NewReader(body))
		req.Header.Set("If-Match", ifMatch)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}

	// Cache miss: the check itself is cut off.
	cut.Store(true)
	if status, err := send("v2", tag); err != nil || status != http.StatusBadGateway {
		t.Errorf("write whose version check was cut off: status %d, error %v; want a 502 problem", status, err)
	}

	// Cache hit: the write is applied, the GET after it is cut off.
	cut.Store(false)
	do(t, client, "GET", "/doc", "")
	waitLearned(t, "*/doc")
	cut.Store(true)
	status, err := send("v2", tag)
	if err != nil || status != 200 {
		t.Errorf("write applied upstream (backend holds %q): status %d, error %v; want 200", mustBody(t, store, "/doc"), status, err)
	}
}

// stallingWriteAnswer applies a PUT, sends the answer's header and first
// bytes, and then stalls until the client side gives up.
func stallingWriteAnswer(store *backend.Store, stall <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut || r.Header.Get("X-Stall") == "" {
			store.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		store.Put(r.URL.Path, body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"ok":`)
		w.(http.Flusher).Flush()
		select {
		case <-stall:
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
}

// write_timeout bounds how long a write holds its resource: with `etags
// hash` the answer is held while reverse_proxy reads it, and that read has
// no deadline, so an upstream that stalls in the body keeps the lock.
func TestHashedStalledWriteAnswerKeepsLock(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	store.ETags = backend.NoETags
	stall := make(chan struct{})
	defer close(stall)
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
		write_timeout 300ms
		lock_timeout 2s
	}
	reverse_proxy %s`, startBackend(t, stallingWriteAnswer(store, stall))))
	client := &http.Client{Timeout: 30 * time.Second}
	tag := do(t, client, "GET", "/doc", "").header.Get("ETag")

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, caddyBase+"/doc", strings.NewReader("v2"))
		req.Header.Set("If-Match", tag)
		req.Header.Set("X-Stall", "1")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	time.Sleep(700 * time.Millisecond) // the stalled write is past write_timeout
	current := guardTagOf(store, "/doc")
	r := do(t, client, "PUT", "/doc", "v3", "If-Match: "+current)
	if r.status == http.StatusConflict {
		t.Errorf("next write: 409 after lock_timeout 2s, although the stalled write passed write_timeout (300ms) long before")
	}
}

func guardTagOf(store *backend.Store, path string) string {
	b, _ := store.Get(path)
	return guardTag(b)
}

// cutOffAnswers sends the header and first bytes of every GET, and of
// PUTs after applying them, then drops the connection, as an upstream
// that crashes while sending does.
func cutOffAnswers(store *backend.Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Cut") == "" {
			store.ServeHTTP(w, r)
			return
		}
		if r.Method == http.MethodPut {
			body, _ := io.ReadAll(r.Body)
			store.Put(r.URL.Path, body)
		}
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "the first bytes")
		w.(http.Flusher).Flush()
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	})
}

// The crash this looks for takes the whole process with it, so the
// scenario runs in a child process and the parent reports how it ended.
// The child's Caddy has ports of its own: caddytest keeps one Caddy per
// process, and an earlier test of the parent may have left it running on
// the usual ones, where the child's config would land in the parent.
const (
	cutOffChildEnv   = "WRITE_GUARD_CUT_OFF_CHILD"
	cutOffAdminPort  = 2998
	cutOffHTTPPort   = 9082
	cutOffChildStart = `{
	skip_install_trust
	admin localhost:2998
	http_port 9082
	https_port 9444
	grace_period 1ns
}
:9082 {
	write_guard {
		etags hash
	}
	reverse_proxy %s
}
`
)

// slowReads sends the header and first bytes of a GET marked X-Slow, and
// the rest only after a pause.
func slowReads(store *backend.Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Slow") == "" {
			cutOffAnswers(store).ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Length", "20")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "first ten ")
		w.(http.Flusher).Flush()
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
		io.WriteString(w, "and the rest")
	})
}

// A held GET whose body stops coming makes reverse_proxy flush and then
// panic(http.ErrAbortHandler): when the upstream breaks off, and when the
// client hangs up before the body is complete. Caddy must survive both and
// keep serving.
func TestHashedReadCutOffKeepsCaddyRunning(t *testing.T) {
	if scenario := os.Getenv(cutOffChildEnv); scenario != "" {
		store := newStore(map[string]string{"/doc": "v1"})
		addr := startBackend(t, slowReads(store))
		tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: cutOffAdminPort, TestRequestTimeout: 30 * time.Second})
		tester.InitServer(fmtSite(cutOffChildStart, addr), "caddyfile")
		if t.Failed() {
			t.FailNow()
		}
		base := fmtSite("http://localhost:%d/doc", cutOffHTTPPort)
		client := &http.Client{Timeout: 10 * time.Second}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base, nil)
		if scenario == "upstream" {
			req.Header.Set("X-Cut", "1")
		} else {
			req.Header.Set("X-Slow", "1")
		}
		if resp, err := client.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		time.Sleep(700 * time.Millisecond)
		resp, err := client.Get(base)
		if err != nil {
			t.Fatalf("GET after the cut-off read: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET after the cut-off read: %d", resp.StatusCode)
		}
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, scenario := range []string{"upstream", "client"} {
		t.Run(scenario, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, exe, "-test.run=^TestHashedReadCutOffKeepsCaddyRunning$", "-test.count=1")
			cmd.Env = append(os.Environ(), cutOffChildEnv+"="+scenario)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("Caddy did not survive a held read cut off by the %s (%v):\n%s", scenario, err, crashExcerpt(out))
			}
		})
	}
}

// crashExcerpt keeps the panic and the first frames of a child's output.
func crashExcerpt(out []byte) []byte {
	if i := bytes.Index(out, []byte("panic:")); i >= 0 {
		out = out[i:]
	}
	if len(out) > 2000 {
		out = out[:2000]
	}
	return out
}

// With `etags hash` the write's answer is held, so when its body breaks
// off nothing has reached the client and it can be told: 502
// upstream-failed, as for any fault after the write may have been applied.
func TestHashedWriteAnswerCutOffGetsProblem(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	store.ETags = backend.NoETags
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
	}
	reverse_proxy %s`, startBackend(t, cutOffAnswers(store))))
	client := &http.Client{Timeout: 30 * time.Second}
	tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
	req, _ := http.NewRequest(http.MethodPut, caddyBase+"/doc", strings.NewReader("v2"))
	req.Header.Set("If-Match", tag)
	req.Header.Set("X-Cut", "1")
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, io.EOF) || strings.Contains(err.Error(), "EOF") {
			t.Fatalf("write whose answer was cut off: the connection was dropped without an answer (%v); want a 502 upstream-failed problem", err)
		}
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	r := response{status: resp.StatusCode, header: resp.Header, body: string(b)}
	if r.status != http.StatusBadGateway {
		t.Fatalf("write whose answer was cut off: %d %s, want 502", r.status, r.body)
	}
	if p := problemOf(t, r); !strings.HasSuffix(p.Type, "#upstream-failed") {
		t.Errorf("problem type %s", p.Type)
	}
}
