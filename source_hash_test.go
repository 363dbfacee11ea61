package writeguard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/encode"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/encode/gzip"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

func TestBodyHash(t *testing.T) {
	tag := func(limit int64, parts ...string) string {
		b := newBodyHash(limit)
		for _, p := range parts {
			b.Write([]byte(p))
		}
		return b.etag()
	}
	if got := tag(100, "hello ", "world"); got != hashTag("hello world") {
		t.Errorf("tag of two writes = %s, want %s", got, hashTag("hello world"))
	}
	if tag(100, "a") == tag(100, "b") {
		t.Error("different bodies got the same tag")
	}
	if got := tag(100); got != hashTag("") {
		t.Errorf("empty body: %s", got)
	}
	if got := tag(5, "12345"); got == "" {
		t.Error("a body of exactly the limit must be tagged")
	}
	if got := tag(5, "123", "456"); got != "" {
		t.Errorf("a body over the limit got tag %s", got)
	}
}

func TestHashedGetReplacesUpstreamTag(t *testing.T) {
	for _, style := range []backend.ETagStyle{backend.NoETags, backend.StrongETags, backend.WeakETags, backend.MTimeETags} {
		store := newHashStore(style, map[string]string{"/doc": "v1"})
		h := newTestHandler(t, &Handler{ETags: "hash"})
		w := serve(t, h, storeHandler(store), "GET", "/doc", "")
		if w.Code != 200 || w.Body.String() != "v1" {
			t.Fatalf("style %d: GET = %d %q", style, w.Code, w.Body)
		}
		if got := w.Header().Get("Etag"); got != hashTag("v1") {
			t.Errorf("style %d: ETag %q, want %q", style, got, hashTag("v1"))
		}
		if w.Header().Get("Last-Modified") == "" {
			t.Errorf("style %d: Last-Modified was dropped", style)
		}
		h.cache.Wait()
		if v, ok := h.cache.Get("example.com/doc"); !ok || v.ETag != hashTag("v1") {
			t.Errorf("style %d: cache holds %+v, %v", style, v, ok)
		}
	}
}

func TestHashedConditionalGet(t *testing.T) {
	store := newHashStore(backend.NoETags, map[string]string{"/doc": "v1"})
	var sawConditional atomic.Bool
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		for _, f := range []string{"If-None-Match", "If-Match", "If-Modified-Since", "If-Range", "Range"} {
			if r.Header.Get(f) != "" {
				sawConditional.Store(true)
			}
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	tag := hashTag("v1")

	for _, c := range []struct {
		name   string
		header []string
		status int
	}{
		{"matching tag", []string{"If-None-Match: " + tag}, http.StatusNotModified},
		{"weak form", []string{"If-None-Match: W/" + tag}, http.StatusNotModified},
		{"in a list", []string{`If-None-Match: "other", ` + tag}, http.StatusNotModified},
		{"star", []string{"If-None-Match: *"}, http.StatusNotModified},
		{"other tag", []string{`If-None-Match: "other"`}, http.StatusOK},
		{"with an old If-Modified-Since", []string{"If-None-Match: " + tag, "If-Modified-Since: " + httpDateOf(time.Unix(0, 0))}, http.StatusNotModified},
		{"If-Range with Range", []string{"If-Range: " + tag, "Range: bytes=0-0"}, http.StatusOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			sawConditional.Store(false)
			w := serve(t, h, next, "GET", "/doc", "", c.header...)
			if w.Code != c.status {
				t.Fatalf("status %d, want %d", w.Code, c.status)
			}
			if got := w.Header().Get("Etag"); got != tag {
				t.Errorf("ETag %q, want %q", got, tag)
			}
			if c.status == http.StatusNotModified && (w.Body.Len() != 0 || w.Header().Get("Content-Length") != "" || w.Header().Get("Content-Type") != "") {
				t.Errorf("304 with body %q and header %v", w.Body, w.Header())
			}
			if c.status == http.StatusOK && w.Body.String() != "v1" {
				t.Errorf("body %q", w.Body)
			}
			if sawConditional.Load() {
				t.Error("the upstream was sent a validator that names the guard's tags")
			}
		})
	}
}

// A body too large to hold is streamed as it comes, and its tag follows in
// a trailer field.
func TestHashedGetStreamsLargeBodies(t *testing.T) {
	chunk := strings.Repeat("x", 48<<10)
	var rec *httptest.ResponseRecorder
	var sentBeforeEnd bool
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(200)
		for i := 0; i < 4; i++ {
			w.Write([]byte(chunk))
			http.NewResponseController(w).Flush()
		}
		// Still inside the upstream: what has the client received?
		sentBeforeEnd = rec.Body.Len() >= 2*len(chunk)
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	rec = httptest.NewRecorder()
	if err := serveTo(rec, newRequest("GET", "/big", nil), h, next); err != nil {
		t.Fatal(err)
	}
	if !sentBeforeEnd {
		t.Error("the body was held back instead of streamed")
	}
	res := rec.Result()
	if res.Header.Get("Etag") != "" {
		t.Errorf("a streamed response has ETag %q in its header", res.Header.Get("Etag"))
	}
	want := hashTag(strings.Repeat(chunk, 4))
	if got := res.Trailer.Get("Etag"); got != want {
		t.Errorf("trailer ETag %q, want %q", got, want)
	}
	if rec.Body.Len() != 4*len(chunk) {
		t.Errorf("body of %d bytes", rec.Body.Len())
	}
	h.cache.Wait()
	if v, ok := h.cache.Get("example.com/big"); !ok || v.ETag != want {
		t.Errorf("cache holds %+v, %v", v, ok)
	}

	// The flushes of a small body do not push its tag into a trailer.
	small := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Write([]byte("part1 "))
		http.NewResponseController(w).Flush()
		w.Write([]byte("part2"))
		http.NewResponseController(w).Flush()
		return nil
	})
	// Result's Header is the header as sent, without trailers.
	res = serve(t, h, small, "GET", "/small", "").Result()
	if got := res.Header.Get("Etag"); got != hashTag("part1 part2") || len(res.Trailer) != 0 {
		t.Errorf("small flushed body: ETag %q, trailers %v", got, res.Trailer)
	}
}

func TestHashedGetTooLargeIsUntagged(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "0123456789"})
	h := newTestHandler(t, &Handler{ETags: "hash", HashMaxBody: 5})
	w := serve(t, h, storeHandler(store), "GET", "/doc", "")
	if w.Code != 200 || w.Body.String() != "0123456789" {
		t.Fatalf("GET = %d %q", w.Code, w.Body)
	}
	if got := w.Header().Get("Etag"); got != "" {
		t.Errorf("a body over hash_max_body got ETag %q", got)
	}
	// The write cannot name a version by tag; it gets told what to use.
	pw := serve(t, h, storeHandler(store), "PUT", "/doc", "new", "If-Match: "+store.ETagOf([]byte("0123456789")))
	if pw.Code != http.StatusPreconditionFailed || !strings.Contains(pw.Body.String(), "hash_max_body") {
		t.Errorf("PUT = %d %s", pw.Code, pw.Body)
	}
	// If-Unmodified-Since still works.
	last := w.Header().Get("Last-Modified")
	if pw := serve(t, h, storeHandler(store), "PUT", "/doc", "new", "If-Unmodified-Since: "+last); pw.Code != 200 {
		t.Errorf("PUT with If-Unmodified-Since = %d %s", pw.Code, pw.Body)
	}
}

func TestHashedPartialContentUntagged(t *testing.T) {
	h := newTestHandler(t, &Handler{ETags: "hash"})
	partial := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Range", "bytes 0-0/2")
		w.Header().Set("Etag", `"upstream"`)
		w.WriteHeader(http.StatusPartialContent)
		w.Write([]byte("v"))
		return nil
	})
	w := serve(t, h, partial, "GET", "/doc", "", "Range: bytes=0-0")
	if w.Code != http.StatusPartialContent || w.Header().Get("Etag") != "" || !bytes.Equal(w.Body.Bytes(), []byte("v")) {
		t.Errorf("206: %d ETag %q body %q", w.Code, w.Header().Get("Etag"), w.Body)
	}
	h.cache.Wait()
	if _, ok := h.cache.Get("example.com/doc"); ok {
		t.Error("a part was learned as the representation")
	}
}

// An upstream that fails before its response is complete leaves nothing
// sent, so Caddy can still answer with an error.
func TestHashedGetUpstreamError(t *testing.T) {
	h := newTestHandler(t, &Handler{ETags: "hash"})
	failing := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(200)
		w.Write([]byte("partial"))
		return caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("upstream went away"))
	})
	rec := httptest.NewRecorder()
	err := serveTo(rec, newRequest("GET", "/doc", nil), h, failing)
	if err == nil {
		t.Fatal("the upstream's error was swallowed")
	}
	if rec.Body.Len() != 0 || rec.Code != 200 || rec.Flushed {
		t.Errorf("something was sent: %d %q", rec.Code, rec.Body)
	}
	h.cache.Wait()
	if _, ok := h.cache.Get("example.com/doc"); ok {
		t.Error("an incomplete body was learned")
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
	if err := serveTo(rec, newRequest("GET", "/doc", nil), h, failing); err == nil {
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

// lateWriter records calls made on a response writer after the handler
// that owned it has returned, as net/http forbids.
type lateWriter struct {
	*httptest.ResponseRecorder
	mu       sync.Mutex
	returned bool
	late     []string
}

func (lw *lateWriter) note(call string) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.returned {
		lw.late = append(lw.late, call)
	}
}

func (lw *lateWriter) WriteHeader(status int) {
	lw.note("WriteHeader")
	lw.ResponseRecorder.WriteHeader(status)
}

func (lw *lateWriter) Write(p []byte) (int, error) {
	lw.note("Write")
	return lw.ResponseRecorder.Write(p)
}

func (lw *lateWriter) Flush() {
	lw.note("Flush")
	lw.ResponseRecorder.Flush()
}

// abortingUpstream behaves as reverse_proxy does when the upstream's body
// breaks off: header and the first bytes passed on, a flush, then
// panic(http.ErrAbortHandler) (Caddy's finalizeResponse).
var abortingUpstream = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodPut {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return nil
	}
	w.Header().Set("Content-Length", "100")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, "the first ten")
	http.NewResponseController(w).Flush()
	panic(http.ErrAbortHandler)
})

// After a held read breaks off, nothing may touch the client's response
// writer once the handler is gone: on net/http's HTTP/1 connection the
// buffered writer is released by then, and a write from a timer goroutine
// is a nil dereference that no handler can recover, so the process dies.
func TestHashedReadAbortLeavesNoLateWrites(t *testing.T) {
	h := newTestHandler(t, &Handler{ETags: "hash"})
	lw := &lateWriter{ResponseRecorder: httptest.NewRecorder()}
	func() {
		defer func() {
			if rec := recover(); rec != nil && rec != http.ErrAbortHandler {
				t.Errorf("unexpected panic: %v", rec)
			}
		}()
		serveTo(lw, newRequest("GET", "/doc", nil), h, abortingUpstream)
	}()
	lw.mu.Lock()
	lw.returned = true
	lw.mu.Unlock()
	time.Sleep(3 * heldFlushDelay)
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if len(lw.late) > 0 {
		t.Errorf("after the handler returned, the guard called %v on the client's response writer", lw.late)
	}
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

func TestHashedHeadCarriesKnownTag(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	next := storeHandler(store)
	if w := serve(t, h, next, "HEAD", "/doc", ""); w.Header().Get("Etag") != "" {
		t.Errorf("HEAD before any GET: ETag %q (the upstream's must not pass)", w.Header().Get("Etag"))
	}
	serve(t, h, next, "GET", "/doc", "")
	h.cache.Wait()
	w := serve(t, h, next, "HEAD", "/doc", "")
	if got := w.Header().Get("Etag"); got != hashTag("v1") {
		t.Errorf("HEAD after GET: ETag %q, want %q", got, hashTag("v1"))
	}
	if w := serve(t, h, next, "HEAD", "/doc", "", "If-None-Match: "+hashTag("v1")); w.Code != http.StatusNotModified {
		t.Errorf("conditional HEAD: %d", w.Code)
	}
	if w := serve(t, h, next, "HEAD", "/doc?x=1", ""); w.Header().Get("Etag") != "" {
		t.Errorf("HEAD of another URL got the keyed resource's tag %q", w.Header().Get("Etag"))
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
	err := serveTo(rec, newRequest("GET", "/big.txt", nil, "Accept-Encoding: gzip"), enc, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
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

// Under the lock, a cache miss is resolved by hashing the current
// representation; after a write the client gets the new tag and can chain.
func TestHashedWrites(t *testing.T) {
	store := newHashStore(backend.NoETags, map[string]string{"/doc": "v1"})
	var gets atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			gets.Add(1)
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})

	if w := serve(t, h, next, "PUT", "/doc", "x", `If-Match: "stale"`); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("stale If-Match on a cache miss: %d %s", w.Code, w.Body)
	}
	w := serve(t, h, next, "PUT", "/doc", "v2", "If-Match: "+hashTag("v1"))
	if w.Code != 200 {
		t.Fatalf("If-Match with the hash of the current body: %d %s", w.Code, w.Body)
	}
	if got := w.Header().Get("Etag"); got != hashTag("v2") {
		t.Fatalf("write response ETag %q, want the new version's %q", got, hashTag("v2"))
	}
	// Chain without reading: the recorded tag is used, no probe needed
	// (once ristretto has applied the store of a key it did not hold).
	h.cache.Wait()
	before := gets.Load()
	w = serve(t, h, next, "PUT", "/doc", "v3", "If-Match: "+hashTag("v2"))
	if w.Code != 200 || w.Header().Get("Etag") != hashTag("v3") {
		t.Fatalf("chained write: %d ETag %q", w.Code, w.Header().Get("Etag"))
	}
	if n := gets.Load() - before; n != 1 {
		t.Errorf("chained write made %d GETs upstream, want 1 (the new version's)", n)
	}
	if w := serve(t, h, next, "PUT", "/doc", "v4", "If-Match: "+hashTag("v2")); w.Code != http.StatusPreconditionFailed {
		t.Errorf("write with the previous tag: %d", w.Code)
	}
	if got := mustGet(t, store, "/doc"); got != "v3" {
		t.Errorf("backend holds %q", got)
	}
	if w := serve(t, h, next, "DELETE", "/doc", "", "If-Match: "+hashTag("v3")); w.Code != http.StatusNoContent || w.Header().Get("Etag") != "" {
		t.Errorf("DELETE: %d ETag %q", w.Code, w.Header().Get("Etag"))
	}
	if w := serve(t, h, next, "PUT", "/doc", "v1", "If-None-Match: *"); w.Code != http.StatusCreated || w.Header().Get("Etag") != hashTag("v1") {
		t.Errorf("create: %d ETag %q", w.Code, w.Header().Get("Etag"))
	}
}

// With `etags hash` a write's answer is held, so when the upstream breaks
// off in its body nothing has reached the client yet and the guard can
// still say what happened, as it promises for faults: 502 upstream-failed.
func TestHashedWriteAbortIsAnsweredWithProblem(t *testing.T) {
	h := newTestHandler(t, &Handler{ETags: "hash"})
	probeOK := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			io.WriteString(w, "v1")
			return nil
		}
		return abortingUpstream(w, r)
	})
	w, panicked := serveCatching(t, h, probeOK, "PUT", "/doc", "v2", "If-Match: "+hashTag("v1"))
	if panicked != nil {
		t.Fatalf("the guard let reverse_proxy's abort through (%v): the client's connection is dropped without an answer although nothing was sent", panicked)
	}
	if w.Code != http.StatusBadGateway || problemType(t, w.Body.Bytes()) != problemUpstreamFailed {
		t.Errorf("write whose answer broke off: %d %s, want 502 upstream-failed", w.Code, w.Body)
	}
	if h.locks.Len() != 0 {
		t.Error("lock still held")
	}
}

// An upstream that sends the header of a write's answer and then stalls
// in its body must not keep the resource locked past write_timeout: with
// `etags hash` the answer is held while reverse_proxy reads it, and
// reverse_proxy reads with no deadline of its own.
func TestHashedWriteAnswerStallHoldsLockPastWriteTimeout(t *testing.T) {
	store := newHashStore(backend.NoETags, map[string]string{"/doc": "v1"})
	stall := make(chan struct{})
	var stalledWrite sync.WaitGroup
	defer stalledWrite.Wait()
	defer close(stall)
	var once sync.Once
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodPut {
			store.ServeHTTP(w, r)
			return nil
		}
		stalled := false
		once.Do(func() { stalled = true })
		if !stalled {
			store.ServeHTTP(w, r)
			return nil
		}
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"ok":`)
		http.NewResponseController(w).Flush()
		select { // the rest of the body never comes, until the test ends
		case <-stall:
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
		return nil
	})
	h := newTestHandler(t, &Handler{
		ETags:        "hash",
		WriteTimeout: caddy.Duration(100 * time.Millisecond),
		LockTimeout:  caddy.Duration(700 * time.Millisecond),
	})
	stalledWrite.Go(func() { serve(t, h, next, "PUT", "/doc", "v2", "If-Match: "+hashTag("v1")) })
	deadline := time.Now().Add(2 * time.Second)
	for h.locks.Held() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // past write_timeout
	w := serve(t, h, next, "PUT", "/doc", "v3", "If-Match: "+hashTag("v1"))
	if w.Code == http.StatusConflict {
		t.Errorf("second write: 409 after lock_timeout (700ms), although write_timeout (100ms) had long passed: the stalled answer still holds the lock")
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

// A backend whose tag is mtime+size gives two same-length versions written
// within one second the same tag: trusted, it lets a stale write through.
func TestHashCatchesSameSecondRewrites(t *testing.T) {
	for _, mode := range []string{"upstream", "hash"} {
		t.Run(mode, func(t *testing.T) {
			store := newHashStore(backend.MTimeETags, map[string]string{"/doc": "aa"})
			h := newTestHandler(t, &Handler{ETags: mode})
			next := storeHandler(store)
			var tag string
			upstreamTag := func() string {
				rec := httptest.NewRecorder()
				store.ServeHTTP(rec, httptest.NewRequest("HEAD", "/doc", nil))
				return rec.Header().Get("Etag")
			}
			for {
				// The race needs the write to leave the upstream's tag as it
				// was: both versions from within one second.
				before := upstreamTag()
				tag = serve(t, h, next, "GET", "/doc", "").Header().Get("Etag")
				w := serve(t, h, next, "PUT", "/doc", "bb", "If-Match: "+tag)
				if w.Code != 200 {
					t.Fatalf("first write: %d %s", w.Code, w.Body)
				}
				if upstreamTag() == before {
					break
				}
				store.Put("/doc", []byte("aa"))
			}
			// Another client read "aa" and now writes with its tag.
			stale := serve(t, h, next, "PUT", "/doc", "cc", "If-Match: "+tag)
			lost := stale.Code == 200
			// Trusted, the upstream's tag lets it through: the case hash is for.
			if want := mode == "upstream"; lost != want {
				t.Errorf("stale write answered %d; lost update: %v, want %v", stale.Code, lost, want)
			}
		})
	}
}
