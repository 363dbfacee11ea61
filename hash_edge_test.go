package writeguard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/encode"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/encode/gzip"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// overrideHonouring is a backend that applies the method named in
// X-HTTP-Method-Override whatever the request's own method, as the guard's
// own override handling assumes a backend may (it guards "GET as DELETE").
func overrideHonouring(s *backend.Store) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if m := r.Header.Get("X-HTTP-Method-Override"); m != "" {
			r = r.Clone(r.Context())
			r.Method = strings.ToUpper(m)
		}
		s.ServeHTTP(w, r)
		return nil
	})
}

// The version check is a read: it must not carry the fields through which
// the client asked the backend to apply a write, or the check itself
// performs the write before its precondition is evaluated.
func TestProbeDropsMethodOverrideFields(t *testing.T) {
	for _, mode := range []string{"upstream", "hash"} {
		t.Run(mode, func(t *testing.T) {
			store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
			h := newTestHandler(t, &Handler{ETags: mode})
			w := serve(t, h, overrideHonouring(store), "POST", "/doc", "", "X-HTTP-Method-Override: DELETE", `If-Match: "stale"`)
			if w.Code != http.StatusPreconditionFailed {
				t.Fatalf("stale overridden DELETE: %d %s", w.Code, w.Body)
			}
			if _, ok := store.Get("/doc"); !ok {
				t.Fatal("a write refused with 412 deleted the resource: the version check carried X-HTTP-Method-Override")
			}
		})
	}
}

// constantETagBackend names every version `"1"`: the kind of upstream whose
// tags make an operator switch to `etags hash`.
type constantETagBackend struct {
	mu   sync.Mutex
	body string
}

func (b *constantETagBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("ETag", `"1"`)
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		io.WriteString(w, b.get())
	case http.MethodPut:
		data, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.body = string(data)
		b.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}
	return nil
}

func (b *constantETagBackend) get() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.body
}

// During a reload from `etags upstream` to `etags hash` both configurations
// run and, with the same cache settings, share one cache. What the old one
// learned is an upstream tag; the new one must not take it for one of its
// own, which is exactly the tag the switch was meant to stop trusting.
func TestHashModeDoesNotTrustUpstreamTagsFromSharedCache(t *testing.T) {
	be := &constantETagBackend{body: "v1"}
	old := newTestHandler(t, &Handler{})
	hashed := newTestHandler(t, &Handler{ETags: "hash"})
	if old.cache == hashed.cache {
		t.Error("a guard with etags hash shares its cache with one that trusts the upstream's tags")
	}
	// Clients A and B both read v1 through the old configuration.
	tag := serve(t, old, caddyhttp.HandlerFunc(be.ServeHTTP), "GET", "/reload-doc", "").Header().Get("Etag")
	old.cache.Wait()
	// B's write goes through; the upstream names v2 `"1"` too.
	if w := serve(t, old, caddyhttp.HandlerFunc(be.ServeHTTP), "PUT", "/reload-doc", "v2 by B", "If-Match: "+tag); w.Code != 200 {
		t.Fatalf("B's write: %d %s", w.Code, w.Body)
	}
	old.cache.Wait()
	// The new configuration takes over; A writes, based on v1.
	w := serve(t, hashed, caddyhttp.HandlerFunc(be.ServeHTTP), "PUT", "/reload-doc", "v3 by A", "If-Match: "+tag)
	if w.Code != http.StatusPreconditionFailed {
		t.Errorf("write naming an upstream tag under etags hash: %d, want 412; backend now holds %q (B's v2 lost)", w.Code, be.get())
	}
}

// serveCatching is serve for handlers that may panic.
func serveCatching(t *testing.T, h *Handler, next caddyhttp.Handler, method, target, body string, headers ...string) (w *httptest.ResponseRecorder, panicked any) {
	t.Helper()
	defer func() { panicked = recover() }()
	return serve(t, h, next, method, target, body, headers...), nil
}

// reverse_proxy panics with http.ErrAbortHandler when the upstream's body
// breaks off after the header was passed on; net/http then drops the
// client's connection without an answer.
func TestHashedProbeOfBrokenBodyAnswersTheWrite(t *testing.T) {
	store := newHashStore(backend.NoETags, map[string]string{"/doc": "v1"})
	var mu sync.Mutex
	broken := false
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		mu.Lock()
		b := broken
		mu.Unlock()
		if r.Method == http.MethodGet && b {
			w.WriteHeader(200)
			w.Write([]byte("v"))
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	tag := hashTag("v1")

	t.Run("before the write", func(t *testing.T) {
		mu.Lock()
		broken = true
		mu.Unlock()
		w, p := serveCatching(t, h, next, "PUT", "/doc", "v2", "If-Match: "+tag)
		if p != nil {
			t.Fatalf("the version check's failure escaped as a panic (%v): the client gets no answer instead of 502", p)
		}
		if w.Code != http.StatusBadGateway {
			t.Errorf("status %d, want 502", w.Code)
		}
	})
	t.Run("after the write", func(t *testing.T) {
		mu.Lock()
		broken = false
		mu.Unlock()
		serve(t, h, next, "GET", "/doc", "")
		h.cache.Wait()
		mu.Lock()
		broken = true
		mu.Unlock()
		w, p := serveCatching(t, h, next, "PUT", "/doc", "v2", "If-Match: "+tag)
		if p != nil {
			t.Fatalf("the write was applied (backend holds %q) but its client gets no answer: %v", mustGet(t, store, "/doc"), p)
		}
		if w.Code != 200 {
			t.Errorf("status %d, want 200", w.Code)
		}
	})
}

// runGuard serves h in front of next on a real loopback server, so that
// flushing and hijacking behave as they do in Caddy.
func runGuard(t *testing.T, h *Handler, next caddyhttp.Handler, errorLog *log.Logger, served chan<- struct{}) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
		if err := h.ServeHTTP(w, r, next); err != nil {
			t.Errorf("%s %s: %v", r.Method, r.URL, err)
		}
		if served != nil {
			served <- struct{}{}
		}
	}))
	srv.Config.ErrorLog = errorLog
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// A streamed response without Content-Length that is not text/event-stream
// (NDJSON, a watch, a log tail) is flushed by reverse_proxy after every
// write; its client must see each line as it comes, not after 64 KiB.
func TestHashedStreamWithoutLengthReachesClient(t *testing.T) {
	done := make(chan struct{})
	defer close(done)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(200)
		io.WriteString(w, `{"event":1}`+"\n")
		http.NewResponseController(w).Flush()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	srv := runGuard(t, h, next, nil, nil)

	got := make(chan string, 1)
	go func() {
		resp, err := srv.Client().Get(srv.URL + "/events")
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		got <- line
	}()
	select {
	case line := <-got:
		if !strings.Contains(line, `"event":1`) {
			t.Errorf("first line %q", line)
		}
	case <-time.After(3 * time.Second):
		t.Error("the first event of a flushed stream did not reach the client within 3s: it is held back until 64 KiB")
	}
}

// A GET answered 101 (a WebSocket upgrade) hands the connection over; what
// follows is no representation, and nothing may be written on the hijacked
// connection afterwards.
func TestHashedUpgradeIsNotTagged(t *testing.T) {
	var logged bytes.Buffer
	var logMu sync.Mutex
	errorLog := log.New(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logged.Write(p)
	}), "", 0)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Connection", "Upgrade")
		w.WriteHeader(http.StatusSwitchingProtocols)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return err
		}
		brw.Flush()
		conn.Close()
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	served := make(chan struct{}, 1)
	srv := runGuard(t, h, next, errorLog, served)

	req, _ := http.NewRequest("GET", srv.URL+"/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	if resp, err := srv.Client().Do(req); err == nil {
		resp.Body.Close()
	}
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler did not return")
	}
	h.cache.Wait()
	host := strings.TrimPrefix(srv.URL, "http://")
	if v, ok := h.cache.Get(host + "/ws"); ok {
		t.Errorf("a protocol switch was learned as a version of the resource: %+v", v)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logged.String(), "hijacked") {
		t.Errorf("a header was written on the hijacked connection: %s", logged.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// If-Match on a ranged GET asks for a part of that version only (RFC 9110
// section 13.1.1); the guard takes If-Match away from the upstream, so it
// must not hand out a part of another version in its place.
func TestHashedRangeWithIfMatchIsNotAPartOfAnotherVersion(t *testing.T) {
	store := newHashStore(backend.NoETags, map[string]string{"/doc": "version one"})
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		body, _ := store.Get(r.URL.Path)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	oldTag := hashTag("version one")
	store.Put("/doc", []byte("VERSION TWO"))
	w := serve(t, h, next, "GET", "/doc", "", "Range: bytes=8-", "If-Match: "+oldTag)
	if w.Code == http.StatusPartialContent {
		t.Errorf("ranged GET with If-Match of another version: 206 %q (a part of %q, to be spliced onto %q)", w.Body, "VERSION TWO", "version one")
	}
}

// A 304 that the upstream answered to If-Modified-Since says nothing about
// which bytes the client holds; labelled with the guard's strong tag of
// whatever is current, it tells the client its copy is that version.
func TestHashedUpstream304IsNotLabelledWithCurrentTag(t *testing.T) {
	store := newHashStore(backend.NoETags, map[string]string{"/doc": "aa"})
	next := storeHandler(store)
	// Conditional GETs answered from the upstream's Last-Modified, at the
	// one-second resolution of HTTP dates, as http.ServeContent does.
	conditional := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			if ims, err := http.ParseTime(r.Header.Get("If-Modified-Since")); err == nil {
				rec := httptest.NewRecorder()
				store.ServeHTTP(rec, r)
				if lm, err := http.ParseTime(rec.Header().Get("Last-Modified")); err == nil && !lm.After(ims) {
					w.Header().Set("Last-Modified", rec.Header().Get("Last-Modified"))
					w.WriteHeader(http.StatusNotModified)
					return nil
				}
			}
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	var first *httptest.ResponseRecorder
	for i := 0; i < 5; i++ {
		// A reads "aa"; B rewrites it within the same second.
		start := time.Now()
		first = serve(t, h, next, "GET", "/doc", "")
		if w := serve(t, h, next, "PUT", "/doc", "bb", "If-Match: "+first.Header().Get("Etag")); w.Code != 200 {
			t.Fatalf("B's write: %d %s", w.Code, w.Body)
		}
		if time.Now().Unix() == start.Unix() {
			break
		}
		store.Put("/doc", []byte("aa"))
	}
	h.cache.Wait()
	// A revalidates its copy of "aa" by date only.
	w := serve(t, h, conditional, "GET", "/doc", "", "If-Modified-Since: "+first.Header().Get("Last-Modified"))
	if w.Code != http.StatusNotModified {
		t.Skipf("upstream answered %d", w.Code)
	}
	if got := w.Header().Get("Etag"); got == hashTag("bb") {
		t.Errorf("304 for A's copy of %q carries the tag of %q: A's next write with it overwrites B's", "aa", "bb")
	}
}

// RFC 9110 lets a GET whose If-None-Match names the current tag be
// answered 304; the README promises it for every tagged representation.
func TestHashedLargeConditionalGetIsNotModified(t *testing.T) {
	body := strings.Repeat("x", 100<<10)
	store := newHashStore(backend.NoETags, map[string]string{"/big": body})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	w := serve(t, h, storeHandler(store), "GET", "/big", "", "If-None-Match: "+hashTag(body))
	if w.Code != http.StatusNotModified {
		t.Errorf("If-None-Match naming the current tag of a %d KiB body: %d with %d bytes of body, want 304", len(body)>>10, w.Code, w.Body.Len())
	}
}

// A guarded POST that creates a member of a collection is answered 201
// with the new member's Location; an ETag in that answer names the created
// resource (RFC 9110 section 8.8), not the collection it was posted to.
func TestHashedCreateByPostGetsNoCollectionTag(t *testing.T) {
	store := newHashStore(backend.NoETags, map[string]string{"/notes": "[]"})
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodPost {
			body, _ := io.ReadAll(r.Body)
			store.Put("/notes/17", body)
			store.Put("/notes", []byte(`["/notes/17"]`))
			w.Header().Set("Location", "/notes/17")
			w.WriteHeader(http.StatusCreated)
			return nil
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash", Methods: []string{"POST", "PUT", "PATCH", "DELETE"}})
	w := serve(t, h, next, "POST", "/notes", "note", "If-Match: "+hashTag("[]"))
	if w.Code != http.StatusCreated {
		t.Fatalf("POST: %d %s", w.Code, w.Body)
	}
	if got := w.Header().Get("Etag"); got != "" && got != hashTag("note") {
		t.Errorf("201 with Location /notes/17 carries ETag %s, the tag of the collection /notes", got)
	}
}

// encode appends its coding to a strong ETag in the header so that the
// gzip and identity representations do not share one strong tag (RFC 9110
// section 8.8.3.3). A tag sent as a trailer escapes that, so the guard has
// to do it for a body that encode compressed.
func TestHashedTrailerTagDistinguishesContentCoding(t *testing.T) {
	ctx, cancel := newCaddyContext()
	defer cancel()
	enc := &encode.Encode{EncodingsRaw: caddy.ModuleMap{"gzip": json.RawMessage(`{}`)}}
	if err := enc.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	body := strings.Repeat("some text ", 10<<10)
	h := newTestHandler(t, &Handler{ETags: "hash"})
	upstream := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
		return nil
	})
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "http://example.com/big.txt", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, nil)
	err := enc.ServeHTTP(rec, req, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return h.ServeHTTP(w, r, upstream)
	}))
	if err != nil {
		t.Fatal(err)
	}
	res := rec.Result()
	if res.Header.Get("Content-Encoding") != "gzip" {
		t.Skipf("encode did not compress: %v", res.Header)
	}
	if got := res.Trailer.Get("Etag"); got == hashTag(body) {
		t.Errorf("gzip-coded body carries the identity representation's strong tag %s in its trailer", got)
	}
}

// A HEAD is labelled with the tag the cache learned from an earlier GET.
// When the HEAD's own Last-Modified shows that the resource changed since
// (a writer that bypasses the proxy, which `revalidate always` is set for),
// that tag names another version, and a conditional HEAD must not be told
// that nothing changed.
func TestHashedHeadDoesNotVouchForChangedResource(t *testing.T) {
	var mu sync.Mutex
	body, modified := "v1", time.Unix(1_700_000_000, 0)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		mu.Lock()
		b, m := body, modified
		mu.Unlock()
		w.Header().Set("Last-Modified", httpDateOf(m))
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		if r.Method == http.MethodGet {
			io.WriteString(w, b)
		}
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash", Revalidate: "always"})
	tag := serve(t, h, next, "GET", "/doc", "").Header().Get("Etag")
	h.cache.Wait()
	mu.Lock()
	body, modified = "v2", modified.Add(time.Hour)
	mu.Unlock()
	w := serve(t, h, next, "HEAD", "/doc", "", "If-None-Match: "+tag)
	if w.Code == http.StatusNotModified || w.Header().Get("Etag") == tag {
		t.Errorf("HEAD answered %d with ETag %q although its Last-Modified is an hour past the version that tag names", w.Code, w.Header().Get("Etag"))
	}
}

// A held response that fails is not sent, so that Caddy can answer the
// error; that answer goes out with whatever the header map holds, and the
// failed response's framing and coding fields do not describe it.
func TestHashedGetErrorLeavesNoUpstreamFraming(t *testing.T) {
	h := newTestHandler(t, &Handler{ETags: "hash"})
	failing := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Length", "100")
		w.Header().Set("Content-Encoding", "gzip")
		w.WriteHeader(200)
		w.Write([]byte("partial"))
		return caddyhttp.Error(http.StatusBadGateway, io.ErrUnexpectedEOF)
	})
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "http://example.com/doc", nil)
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, nil)
	if err := h.ServeHTTP(rec, req, failing); err == nil {
		t.Fatal("the upstream's error was swallowed")
	}
	// Caddy's answer to an error when no handle_errors route takes it.
	rec.WriteHeader(http.StatusBadGateway)
	for _, f := range []string{"Content-Length", "Content-Encoding"} {
		if v := rec.Header().Get(f); v != "" {
			t.Errorf("the 502 answering the failure carries the failed response's %s: %s", f, v)
		}
	}
}

// trailingUpstream answers as reverse_proxy passes on an upstream that
// sends an ETag of its own as a trailer field: the trailers it announced
// go into Trailer before the header is written, their values into the
// header map after the body; trailers it did not announce get
// http.TrailerPrefix.
func trailingUpstream(announce string, status int, body string) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodPut {
			io.Copy(io.Discard, r.Body)
		}
		if announce != "" {
			w.Header().Add("Trailer", announce)
		}
		w.WriteHeader(status)
		io.WriteString(w, body[:len(body)/2])
		http.NewResponseController(w).Flush()
		io.WriteString(w, body[len(body)/2:])
		http.NewResponseController(w).Flush()
		if announce == "" {
			w.Header().Add(http.TrailerPrefix+"Etag", `"upstream"`)
			return nil
		}
		w.Header().Add("Etag", `"upstream"`)
		if strings.Contains(announce, "X-Checksum") {
			w.Header().Add("X-Checksum", "sum")
		}
		return nil
	})
}

// ETag is a singleton field. With `etags hash` a response carries one, the
// guard's, in the header or announced once as a trailer; an upstream's ETag
// trailer names no version the guard trusts and is not passed on.
func TestHashedDropsUpstreamETagTrailer(t *testing.T) {
	h := newTestHandler(t, &Handler{ETags: "hash", HashMaxBody: 1 << 10})
	large := strings.Repeat("large ", 1000)
	for _, c := range []struct {
		name, announce, method string
		status                 int
		body                   string
		want                   string // the one ETag expected, "" for none
		others                 []string
	}{
		{name: "announced", announce: "Etag", method: "GET", status: 200, body: "streamed", want: hashTag("streamed")},
		{name: "announced with others", announce: "Etag, X-Checksum", method: "GET", status: 200, body: "streamed", want: hashTag("streamed"), others: []string{"X-Checksum"}},
		{name: "announced in other case", announce: "ETag", method: "GET", status: 200, body: "streamed", want: hashTag("streamed")},
		{name: "not announced", method: "GET", status: 200, body: "streamed", want: hashTag("streamed")},
		{name: "too large to tag", announce: "Etag", method: "GET", status: 200, body: large},
		{name: "not found", announce: "Etag", method: "GET", status: 404, body: "not here"},
		{name: "write answer", announce: "Etag", method: "PUT", status: 200, body: "saved", want: hashTag("streamed")},
		{name: "write answer not announced", method: "PUT", status: 200, body: "saved", want: hashTag("streamed")},
	} {
		t.Run(c.name, func(t *testing.T) {
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				if r.Method == http.MethodGet && c.method == http.MethodPut {
					// The guard's request for the version the write made.
					return trailingUpstream(c.announce, 200, "streamed").ServeHTTP(w, r)
				}
				return trailingUpstream(c.announce, c.status, c.body).ServeHTTP(w, r)
			})
			res := serve(t, h, next, c.method, "/"+strings.ReplaceAll(c.name, " ", "-"), "new", "If-Match: *").Result()
			io.ReadAll(res.Body)
			if res.StatusCode != c.status {
				t.Fatalf("status %d", res.StatusCode)
			}
			tags := append(res.Header.Values("Etag"), res.Trailer.Values("Etag")...)
			if c.want == "" && len(tags) != 0 || c.want != "" && (len(tags) != 1 || tags[0] != c.want) {
				t.Errorf("ETag fields %q (header %q, trailers %q), want exactly %q", tags, res.Header.Values("Etag"), res.Trailer.Values("Etag"), c.want)
			}
			var announced []string
			for _, line := range res.Header.Values("Trailer") {
				for _, name := range strings.Split(line, ",") {
					announced = append(announced, http.CanonicalHeaderKey(strings.TrimSpace(name)))
				}
			}
			n := 0
			for _, name := range announced {
				if name == "Etag" {
					n++
				}
			}
			if n > 1 || n == 1 && c.want == "" && c.status != 200 {
				t.Errorf("Trailer %q announces ETag %d times", res.Header.Values("Trailer"), n)
			}
			for _, f := range c.others {
				if res.Trailer.Get(f) == "" {
					t.Errorf("the upstream's %s trailer was lost: Trailer %q, trailers %v", f, res.Header.Values("Trailer"), res.Trailer)
				}
			}
		})
	}
}
