package writeguard

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/writeguard/caddy-writeguard/examples/backend"
	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// Helpers shared by the root package's tests and benchmarks. Fakes that
// stand for one kind of backend or client in a single test (a framework
// that upper-cases methods, a writer that records late calls) live beside
// that test instead.
//
// Every test that sends the handler a request goes through serveTo, which
// prepares it as Caddy's server does:
//
//   - serve: the usual case. It builds the request, records the response,
//     and answers an error the handler returns as Caddy's server would.
//   - serveCatching: serve for a handler that may panic; it returns what
//     the panic carried.
//   - newRequest, then serveTo: for what serve cannot do, that is a body
//     of unknown length or a context of the test's own (change the request
//     newRequest built), a response writer of the test's own, the handler's
//     error as returned, or handlers in front of the guard.
//   - runGuard: a real loopback HTTP server in front of the guard, where
//     flushing, hijacking and the connection must behave as in Caddy.
//
// newTestHandler is the one constructor: every handler a test serves is
// provisioned by it, unless provisioning is what the test is about
// (TestValidate, TestStoppedConfigurationLeaves).

// newCaddyContext is the context Caddy provisions a module with.
func newCaddyContext() (caddy.Context, context.CancelFunc) {
	return caddy.NewContext(caddy.Context{Context: context.Background()})
}

// newTestHandler provisions a handler as Caddy would.
func newTestHandler(t testing.TB, h *Handler) *Handler {
	t.Helper()
	ctx, cancel := newCaddyContext()
	// Cleanups run last first: the configuration stops, then the test waits
	// for it to leave its registry. Leaving can make every cache of the
	// process forget (reload.go), which must happen within this test, not
	// in whichever test runs next.
	t.Cleanup(func() { awaitLeft(t, h) })
	t.Cleanup(cancel)
	if h.CacheSize == 0 && h.CacheBytes == 0 {
		h.CacheSize = 10_000
	}
	// Each test's handler is a configuration of its own: writes abandoned
	// and configurations loaded by other tests are none of its business.
	if h.reg == nil {
		h.reg = new(configRegistry)
	}
	if h.abandoned == nil {
		h.abandoned = new(abandonedWrites)
	}
	if h.reused == nil {
		h.reused = new(reusedTags)
	}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Cleanup() })
	if h.store.shared() != nil && h.config != nil {
		// Serving begins with telling Redis how resources are named, which
		// may make it forget versions: let that be over before the test's
		// writes record theirs.
		h.reg.activate(h.config)
		for deadline := time.Now().Add(10 * time.Second); h.redisUnsettled.Load(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("Redis never adopted the handler's namings")
			}
		}
	}
	return h
}

// awaitLeft waits until h's configuration, stopped, has left its registry.
func awaitLeft(t testing.TB, h *Handler) {
	if h.config == nil || h.reg == nil {
		return
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		h.reg.mu.Lock()
		live := slices.Contains(h.reg.live, h.config)
		h.reg.mu.Unlock()
		if !live {
			return
		}
		if time.Now().After(deadline) {
			t.Error("a stopped configuration never left its registry")
			return
		}
	}
}

// serve sends h a request for target (a path and query on example.com)
// with body (none when empty) and headers ("Name: value"; "Host: name"
// sets the request's host), next standing for the rest of the route, and
// returns the response. An error h returns is answered as Caddy's server
// would: a caddyhttp.HandlerError sets the status, any other error fails
// the test.
func serve(t *testing.T, h *Handler, next caddyhttp.Handler, method, target, body string, headers ...string) *httptest.ResponseRecorder {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	w := httptest.NewRecorder()
	if err := serveTo(w, newRequest(method, target, rd, headers...), h, next); err != nil {
		if he, ok := err.(caddyhttp.HandlerError); ok {
			w.Code = he.StatusCode
		} else {
			// Errorf, not Fatalf: serve also runs on other goroutines.
			t.Errorf("%s %s: %v", method, target, err)
		}
	}
	return w
}

// serveCatching is serve for handlers that may panic.
func serveCatching(t *testing.T, h *Handler, next caddyhttp.Handler, method, target, body string, headers ...string) (w *httptest.ResponseRecorder, panicked any) {
	t.Helper()
	defer func() { panicked = recover() }()
	return serve(t, h, next, method, target, body, headers...), nil
}

// newRequest is the request serve sends: method and target (a path and
// query) on example.com, with body, whose length is known for a
// strings.Reader or bytes.Reader and unknown (-1) for other readers, and
// headers as serve takes them.
func newRequest(method, target string, body io.Reader, headers ...string) *http.Request {
	req := httptest.NewRequest(method, "http://example.com"+target, body)
	for _, hdr := range headers {
		name, value, _ := strings.Cut(hdr, ":")
		if name == "Host" {
			req.Host = strings.TrimSpace(value)
			continue
		}
		req.Header.Add(name, strings.TrimSpace(value))
	}
	return req
}

// serveTo prepares req as Caddy's server does and passes it to h, with w
// as the response writer and next as the rest of the route; it returns
// h's error as is. h is the guard, or a handler in front of it.
func serveTo(w http.ResponseWriter, req *http.Request, h caddyhttp.MiddlewareHandler, next caddyhttp.Handler) error {
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, nil)
	return h.ServeHTTP(w, req, next)
}

// runGuard serves h in front of next on a real loopback server, so that
// flushing and hijacking behave as they do in Caddy.
func runGuard(t *testing.T, h *Handler, next caddyhttp.Handler, errorLog *log.Logger, served chan<- struct{}) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := serveTo(w, r, h, next); err != nil {
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

// storeHandler is the next handler for a backend.Store: the upstream.
func storeHandler(s *backend.Store) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		s.ServeHTTP(w, r)
		return nil
	})
}

// newHashStore is a backend.Store tagging its documents in the given style,
// holding docs (path → body).
func newHashStore(etags backend.ETagStyle, docs map[string]string) *backend.Store {
	s := backend.New()
	s.ETags = etags
	for p, b := range docs {
		s.Put(p, []byte(b))
	}
	return s
}

// countProbes wraps next and counts the HEAD/GET requests it sees.
func countProbes(next caddyhttp.Handler) (caddyhttp.Handler, *int) {
	var mu sync.Mutex
	n := new(int)
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodHead || r.Method == http.MethodGet {
			mu.Lock()
			*n++
			mu.Unlock()
		}
		return next.ServeHTTP(w, r)
	}), n
}

// hangingWrites lets writes through to store only once release is closed,
// after telling entered.
func hangingWrites(store *backend.Store) (next caddyhttp.Handler, entered <-chan struct{}, release chan struct{}) {
	in, out := make(chan struct{}, 1), make(chan struct{})
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodPut {
			in <- struct{}{}
			<-out
		}
		store.ServeHTTP(w, r)
		return nil
	}), in, out
}

// writeVersions writes bodies to /doc one after the other, each with the
// previous body's tag, and fails the test unless every write succeeds.
func writeVersions(t *testing.T, h *Handler, next caddyhttp.Handler, store *backend.Store, bodies ...string) {
	t.Helper()
	for i := 1; i < len(bodies); i++ {
		if w := serve(t, h, next, "PUT", "/doc", bodies[i], "If-Match: "+store.ETagOf([]byte(bodies[i-1]))); w.Code != 200 {
			t.Fatalf("PUT %s: %d %s", bodies[i], w.Code, w.Body)
		}
		h.cache.Wait()
	}
}

// redisHandler is newTestHandler with store redis at srv, logging every
// level to the observer it returns.
func redisHandler(t *testing.T, srv *redistest.Server, h *Handler) (*Handler, *observer.ObservedLogs) {
	t.Helper()
	if h.Store == nil {
		h.Store = &StoreConfig{}
	}
	h.Store.Backend = "redis"
	h.Store.Addresses = []string{srv.Addr}
	h = newTestHandler(t, h)
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	return h, logs
}

// hashTag is the tag the guard gives body, computed independently.
func hashTag(body string) string {
	sum := sha256.Sum256([]byte(body))
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:18]) + `"`
}

// httpDateOf formats t as an HTTP date.
func httpDateOf(t time.Time) string { return t.UTC().Format(http.TimeFormat) }

// mustGet returns what s holds at path, failing the test if nothing.
func mustGet(t *testing.T, s *backend.Store, path string) string {
	t.Helper()
	b, ok := s.Get(path)
	if !ok {
		t.Fatalf("backend has no %s", path)
	}
	return string(b)
}

// problemType is the type of a problem body, without problemBase.
func problemType(t *testing.T, body []byte) string {
	t.Helper()
	var p struct{ Type string }
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("not a problem body: %q", body)
	}
	return strings.TrimPrefix(p.Type, problemBase)
}

// heapInUse is the heap in use after garbage collection.
func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// writerFunc is an io.Writer made of a function.
type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// siteRoute is a route to h, matching hosts when any are given.
func siteRoute(h *Handler, hosts ...string) caddyhttp.Route {
	route := caddyhttp.Route{Handlers: []caddyhttp.MiddlewareHandler{h}}
	if len(hosts) > 0 {
		route.MatcherSets = caddyhttp.MatcherSets{{caddyhttp.MatchHost(hosts)}}
	}
	return route
}

// adminView is the JSON of the resource endpoint.
type adminView struct {
	Key    string       `json:"key"`
	Tried  []string     `json:"tried"`
	Error  string       `json:"error"`
	Caches []adminEntry `json:"caches"`
	Stores []adminEntry `json:"stores"`
}

// adminEntry is what one cache or store knows of the resource.
type adminEntry struct {
	Key   string `json:"key"`
	Known bool   `json:"known"`
	ETag  string `json:"etag"`
}

// adminResource calls the resource endpoint with key, as given in its
// query parameter.
func adminResource(t *testing.T, method, key string) (int, adminView) {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(method, "http://localhost:2019/write_guard/resource?key="+url.QueryEscape(key), nil)
	if err := (adminAPI{}).handleResource(rec, req); err != nil {
		if ae, ok := err.(caddy.APIError); ok {
			t.Fatalf("%s %s: %d %v", method, key, ae.HTTPStatus, ae.Err)
		}
		t.Fatalf("%s %s: %v", method, key, err)
	}
	var v adminView
	if rec.Body.Len() > 0 {
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, key, rec.Code, rec.Body, err)
		}
	}
	return rec.Code, v
}

// upstreamStub answers like a backend that versions its resources, without
// any work of its own, so the benchmarks measure the guard.
var upstreamStub = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Etag", `"v1"`)
	w.Header().Set("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
	w.WriteHeader(http.StatusOK)
	return nil
})

// discardWriter is a response writer that keeps nothing but its header,
// so that benchmarks measure no recording.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

// benchRequests are n requests for n resources, each naming the version
// upstreamStub gives in If-Match.
func benchRequests(method string, n int) []*http.Request {
	reqs := make([]*http.Request, n)
	for i := range reqs {
		reqs[i] = httptest.NewRequest(method, "http://example.com/items/"+strconv.Itoa(i), nil)
		reqs[i].Header.Set("If-Match", `"v1"`)
	}
	return reqs
}

// newBenchHandler is newTestHandler for benchmarks: a cache large enough
// for every resource they use, and no logging.
func newBenchHandler(b *testing.B, h *Handler) *Handler {
	b.Helper()
	h.CacheSize = 100_000
	// One configuration, as a Caddy between reloads runs: the other
	// benchmarks' handlers are not a reload's overlap.
	h.reg = new(configRegistry)
	h.abandoned = new(abandonedWrites)
	h = newTestHandler(b, h)
	// Logging is not what is measured (and would interleave with results).
	h.logger = zap.NewNop()
	return h
}
