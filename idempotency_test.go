package writeguard

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/writeguard/caddy-writeguard/examples/backend"
	"github.com/writeguard/caddy-writeguard/idempotency"
)

// orders is a backend that creates a record on every POST, as most REST
// applications do, and knows nothing of Idempotency-Key.
type orders struct {
	created atomic.Int64
	// hold, when set, is waited for before answering a POST.
	hold chan struct{}
	// entered is told of every POST.
	entered chan struct{}
}

func (o *orders) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return nil
	}
	n := o.created.Add(1)
	if o.entered != nil {
		o.entered <- struct{}{}
	}
	if o.hold != nil {
		select {
		case <-o.hold:
		case <-r.Context().Done():
			// As reverse_proxy does when its request is cancelled.
			return caddyhttp.Error(499, r.Context().Err())
		}
	}
	w.Header().Set("Location", fmt.Sprintf("/orders/%d", n))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Set-Cookie", "session=abc")
	w.Header().Set("X-Request-Id", fmt.Sprint(n))
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id":%d}`, n)
	return nil
}

func idemHandler(t *testing.T, c *IdempotencyConfig) *Handler {
	t.Helper()
	if c == nil {
		c = &IdempotencyConfig{}
	}
	return isolateIdem(newTestHandler(t, &Handler{Idempotency: c}))
}

// isolateIdem gives a test's handler records of its own: the pooled store
// is every handler's of the process.
func isolateIdem(h *Handler) *Handler {
	max := h.Idempotency.MaxMemory
	if max == 0 {
		max = DefaultIdempotencyMaxMemory
	}
	h.idem.store = idempotency.NewMemory(idempotency.MemoryConfig{MaxBytes: max})
	return h
}

const key1 = `Idempotency-Key: "k-1"`

func TestIdemReplaysTheFirstAnswer(t *testing.T) {
	o := &orders{}
	h := idemHandler(t, nil)
	first := serve(t, h, o, "POST", "/orders", `{"item":"tea"}`, key1, "Content-Type: application/json")
	if first.Code != http.StatusCreated || first.Header().Get("Idempotent-Replayed") != "" {
		t.Fatalf("first: %d %v", first.Code, first.Header())
	}
	for range 3 {
		again := serve(t, h, o, "POST", "/orders", `{"item":"tea"}`, key1, "Content-Type: application/json")
		if again.Code != http.StatusCreated || again.Body.String() != first.Body.String() ||
			again.Header().Get("Location") != "/orders/1" || again.Header().Get("Content-Type") != "application/json" ||
			again.Header().Get("Idempotent-Replayed") != "true" {
			t.Fatalf("retry: %d %v %q", again.Code, again.Header(), again.Body)
		}
		// Only the fields that describe the result are kept.
		if again.Header().Get("Set-Cookie") != "" || again.Header().Get("X-Request-Id") != "" {
			t.Fatalf("retry replays %v", again.Header())
		}
	}
	if n := o.created.Load(); n != 1 {
		t.Fatalf("the backend created %d records", n)
	}
	// Another key is another operation.
	serve(t, h, o, "POST", "/orders", `{"item":"tea"}`, `Idempotency-Key: "k-2"`, "Content-Type: application/json")
	// And no key, no idempotency.
	serve(t, h, o, "POST", "/orders", `{"item":"tea"}`)
	if n := o.created.Load(); n != 3 {
		t.Fatalf("the backend created %d records, want 3", n)
	}
}

// The upstream does not get the key unless forward_key says so.
func TestIdemKeyNotForwarded(t *testing.T) {
	for _, forward := range []bool{false, true} {
		var got []string
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			got = append(got, r.Header.Get("Idempotency-Key"))
			w.WriteHeader(http.StatusCreated)
			return nil
		})
		h := idemHandler(t, &IdempotencyConfig{ForwardKey: forward})
		serve(t, h, next, "POST", "/orders", "x", key1)
		if want := map[bool]string{false: "", true: `"k-1"`}[forward]; len(got) != 1 || got[0] != want {
			t.Errorf("forward_key %v: the upstream got %q", forward, got)
		}
	}
}

func TestIdemReplayHeadersAddsFields(t *testing.T) {
	o := &orders{}
	h := idemHandler(t, &IdempotencyConfig{ReplayHeaders: []string{"set-cookie"}})
	serve(t, h, o, "POST", "/orders", "x", key1)
	again := serve(t, h, o, "POST", "/orders", "x", key1)
	if again.Header().Get("Set-Cookie") != "session=abc" {
		t.Fatalf("replay_headers set-cookie: %v", again.Header())
	}
}

func problemOfRecorder(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("%d: Content-Type %q, body %q", w.Code, ct, w.Body)
	}
	return problemType(t, w.Body.Bytes())
}

func TestIdemKeyReusedForAnotherRequest(t *testing.T) {
	o := &orders{}
	h := idemHandler(t, nil)
	serve(t, h, o, "POST", "/orders", "a", key1, "Content-Type: text/plain")
	for name, req := range map[string][]string{
		"body":         {"/orders", "b", "Content-Type: text/plain"},
		"content type": {"/orders", "a", "Content-Type: application/json"},
		"query":        {"/orders?x=1", "a", "Content-Type: text/plain"},
	} {
		w := serve(t, h, o, "POST", req[0], req[1], key1, req[2])
		if w.Code != http.StatusUnprocessableEntity || problemOfRecorder(t, w) != problemIdemKeyReused {
			t.Errorf("%s changed: %d %s", name, w.Code, w.Body)
		}
	}
	if n := o.created.Load(); n != 1 {
		t.Fatalf("the backend created %d records", n)
	}
}

// A key belongs to the client that sent it: another Authorization gets
// its own record.
func TestIdemScopeSeparatesClients(t *testing.T) {
	o := &orders{}
	h := idemHandler(t, nil)
	a := serve(t, h, o, "POST", "/orders", "x", key1, "Authorization: Bearer alice")
	b := serve(t, h, o, "POST", "/orders", "x", key1, "Authorization: Bearer bob")
	if a.Body.String() == b.Body.String() || b.Header().Get("Idempotent-Replayed") != "" {
		t.Fatalf("bob got alice's answer: %q, %v", b.Body, b.Header())
	}
	if again := serve(t, h, o, "POST", "/orders", "x", key1, "Authorization: Bearer alice"); again.Body.String() != a.Body.String() {
		t.Fatalf("alice's retry: %q", again.Body)
	}
	// A scope of its own: a tenant field.
	h2 := idemHandler(t, &IdempotencyConfig{Scope: "{http.request.header.X-Tenant}"})
	serve(t, h2, o, "POST", "/orders", "x", key1, "X-Tenant: t1")
	if w := serve(t, h2, o, "POST", "/orders", "x", key1, "X-Tenant: t2"); w.Header().Get("Idempotent-Replayed") != "" {
		t.Fatal("another tenant got t1's answer")
	}
	if n := o.created.Load(); n != 4 {
		t.Fatalf("the backend created %d records, want 4", n)
	}
}

// One key, one resource: the same key sent to another resource is another
// record (the resource key is part of its id).
func TestIdemKeyPerResource(t *testing.T) {
	o := &orders{}
	h := idemHandler(t, nil)
	serve(t, h, o, "POST", "/orders", "x", key1)
	if w := serve(t, h, o, "POST", "/carts", "x", key1); w.Header().Get("Idempotent-Replayed") != "" {
		t.Fatal("the answer of /orders was replayed for /carts")
	}
}

func TestIdemInFlight(t *testing.T) {
	o := &orders{hold: make(chan struct{}), entered: make(chan struct{}, 1)}
	h := idemHandler(t, nil)
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- serve(t, h, o, "POST", "/orders", "x", key1) }()
	<-o.entered
	w := serve(t, h, o, "POST", "/orders", "x", key1)
	if w.Code != http.StatusConflict || w.Header().Get("Retry-After") != "1" || problemOfRecorder(t, w) != problemIdemInFlight {
		t.Fatalf("retry while in flight: %d %v %s", w.Code, w.Header(), w.Body)
	}
	// Another request with the key in flight is 422, not 409.
	if w := serve(t, h, o, "POST", "/orders", "y", key1); w.Code != http.StatusUnprocessableEntity {
		t.Fatalf("another request while in flight: %d", w.Code)
	}
	close(o.hold)
	first := <-done
	if again := serve(t, h, o, "POST", "/orders", "x", key1); again.Code != http.StatusCreated || again.Body.String() != first.Body.String() {
		t.Fatalf("retry after: %d %q", again.Code, again.Body)
	}
	if n := o.created.Load(); n != 1 {
		t.Fatalf("the backend created %d records", n)
	}
}

// With wait, a retry in flight waits for the first answer.
func TestIdemWaitForTheFirstAnswer(t *testing.T) {
	o := &orders{hold: make(chan struct{}), entered: make(chan struct{}, 1)}
	h := idemHandler(t, &IdempotencyConfig{Wait: caddy.Duration(time.Minute)})
	done := make(chan *httptest.ResponseRecorder, 2)
	go func() { done <- serve(t, h, o, "POST", "/orders", "x", key1) }()
	<-o.entered
	go func() { done <- serve(t, h, o, "POST", "/orders", "x", key1) }()
	// Give the retry a moment to wait; it waits whether or not it got there.
	time.Sleep(20 * time.Millisecond)
	close(o.hold)
	a, b := <-done, <-done
	if a.Code != http.StatusCreated || b.Code != http.StatusCreated || a.Body.String() != b.Body.String() {
		t.Fatalf("answers: %d %q, %d %q", a.Code, a.Body, b.Code, b.Body)
	}
	if n := o.created.Load(); n != 1 {
		t.Fatalf("the backend created %d records", n)
	}
}

// A wait that runs out is a 409 in flight.
func TestIdemWaitRunsOut(t *testing.T) {
	o := &orders{hold: make(chan struct{}), entered: make(chan struct{}, 1)}
	defer close(o.hold)
	h := idemHandler(t, &IdempotencyConfig{Wait: caddy.Duration(30 * time.Millisecond)})
	go serve(t, h, o, "POST", "/orders", "x", key1)
	<-o.entered
	if w := serve(t, h, o, "POST", "/orders", "x", key1); w.Code != http.StatusConflict || problemOfRecorder(t, w) != problemIdemInFlight {
		t.Fatalf("retry after the wait: %d %s", w.Code, w.Body)
	}
}

func TestIdemExpiresAfterTTL(t *testing.T) {
	o := &orders{}
	h := idemHandler(t, &IdempotencyConfig{TTL: caddy.Duration(50 * time.Millisecond)})
	serve(t, h, o, "POST", "/orders", "x", key1)
	if w := serve(t, h, o, "POST", "/orders", "x", key1); w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatal("no replay within the ttl")
	}
	time.Sleep(60 * time.Millisecond)
	if w := serve(t, h, o, "POST", "/orders", "x", key1); w.Header().Get("Idempotent-Replayed") != "" || w.Body.String() != `{"id":2}` {
		t.Fatalf("replayed after the ttl: %q", w.Body)
	}
}

// answering answers every request with the next status of a list, then
// 201, counting the requests.
type answering struct {
	mu       sync.Mutex
	statuses []int
	calls    int
}

func (a *answering) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	a.mu.Lock()
	status := http.StatusCreated
	if a.calls < len(a.statuses) {
		status = a.statuses[a.calls]
	}
	a.calls++
	a.mu.Unlock()
	w.WriteHeader(status)
	if status != http.StatusNoContent {
		fmt.Fprintf(w, "answer %d", status)
	}
	return nil
}

// The upstream's 5xx (but 502, 504), 3xx and retry-asking 4xx are not
// stored: the retry is forwarded. Its other 4xx are.
func TestIdemWhatIsStored(t *testing.T) {
	for _, tc := range []struct {
		status int
		stored bool
	}{
		{500, false}, {503, false}, {302, false}, {429, false}, {408, false},
		{400, true}, {404, true}, {409, true}, {200, true}, {204, true},
	} {
		up := &answering{statuses: []int{tc.status}}
		h := idemHandler(t, nil)
		serve(t, h, up, "POST", "/orders", "x", key1)
		w := serve(t, h, up, "POST", "/orders", "x", key1)
		switch {
		case tc.stored && (w.Code != tc.status || w.Header().Get("Idempotent-Replayed") != "true" || up.calls != 1):
			t.Errorf("%d: retry got %d after %d calls, want the stored answer", tc.status, w.Code, up.calls)
		case !tc.stored && (w.Code != http.StatusCreated || up.calls != 2):
			t.Errorf("%d: retry got %d after %d calls, want it forwarded", tc.status, w.Code, up.calls)
		}
	}
}

// A write whose answer was lost after it was forwarded may have been
// applied: its retry is refused, not forwarded again, for the ttl.
func TestIdemLostAnswerIsNeverForwardedAgain(t *testing.T) {
	for name, fail := range map[string]func(w http.ResponseWriter) error{
		"cut": func(http.ResponseWriter) error {
			return caddyhttp.Error(http.StatusBadGateway, errors.New("connection reset by peer"))
		},
		"timeout": func(http.ResponseWriter) error {
			return caddyhttp.Error(http.StatusGatewayTimeout, errors.New("i/o timeout"))
		},
		"gateway 502": func(w http.ResponseWriter) error { w.WriteHeader(http.StatusBadGateway); return nil },
		"gateway 504": func(w http.ResponseWriter) error { w.WriteHeader(http.StatusGatewayTimeout); return nil },
	} {
		t.Run(name, func(t *testing.T) {
			var calls atomic.Int64
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				calls.Add(1)
				return fail(w)
			})
			h := idemHandler(t, nil)
			serve(t, h, next, "POST", "/orders", "x", key1)
			w := serve(t, h, next, "POST", "/orders", "x", key1)
			if w.Code != http.StatusConflict || problemOfRecorder(t, w) != problemIdemOutcomeUnknown || w.Header().Get("Retry-After") != "" {
				t.Fatalf("retry: %d %v %s", w.Code, w.Header(), w.Body)
			}
			if calls.Load() != 1 {
				t.Fatalf("forwarded %d times", calls.Load())
			}
		})
	}
}

// An upstream that could not be reached received nothing: the key is
// released.
func TestIdemUnreachableUpstreamReleasesTheKey(t *testing.T) {
	for _, path := range []string{"/orders", "/doc"} { // unguarded POST, guarded PUT
		var calls atomic.Int64
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			if r.Method == http.MethodHead || r.Method == http.MethodGet {
				// A version check, after the write too: the upstream tags
				// its versions as a route, which etags auto finds out.
				w.Header().Set("ETag", `"v1"`)
				return nil
			}
			if calls.Add(1) == 1 {
				return caddyhttp.Error(http.StatusBadGateway, reverseproxy.NewDialError(errors.New("connection refused")))
			}
			w.WriteHeader(http.StatusOK)
			return nil
		})
		h := idemHandler(t, nil)
		method := "POST"
		if path == "/doc" {
			method = "PUT"
		}
		if w := serve(t, h, next, method, path, "x", key1, `If-Match: "v1"`); w.Code != http.StatusBadGateway {
			t.Fatalf("%s: first: %d %s", method, w.Code, w.Body)
		}
		if w := serve(t, h, next, method, path, "x", key1, `If-Match: "v1"`); w.Code != http.StatusOK || calls.Load() != 2 {
			t.Fatalf("%s: retry: %d after %d calls", method, w.Code, calls.Load())
		}
	}
}

// The replay is decided before the preconditions: a conditional PUT that
// was applied, retried with the If-Match it had (naming the version it
// replaced), gets its 200, not a 412.
func TestIdemRetriedConditionalPutIsReplayedNot412(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	tag := store.ETagOf([]byte("v1"))
	h := idemHandler(t, nil)
	first := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", key1, "If-Match: "+tag)
	if first.Code != http.StatusOK {
		t.Fatalf("first: %d %s", first.Code, first.Body)
	}
	w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", key1, "If-Match: "+tag)
	if w.Code != http.StatusOK || w.Header().Get("Idempotent-Replayed") != "true" || w.Header().Get("ETag") != store.ETagOf([]byte("v2")) {
		t.Fatalf("retry: %d %v %s", w.Code, w.Header(), w.Body)
	}
	if n := store.Writes(); n != 1 {
		t.Fatalf("the backend saw %d writes", n)
	}
	// Without a key, the same retry is a stale write.
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", "If-Match: "+tag); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("retry without key: %d", w.Code)
	}
}

// The guard's own refusals change nothing and are not stored: the retry
// is judged afresh.
func TestIdemRefusalsAreNotStored(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := idemHandler(t, nil)
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", key1); w.Code != http.StatusPreconditionRequired {
		t.Fatalf("blind: %d", w.Code)
	}
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", key1, `If-Match: "old"`); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("stale: %d", w.Code)
	}
	// Re-read, merged, retried under the same key: applied.
	tag := store.ETagOf([]byte("v1"))
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", key1, "If-Match: "+tag); w.Code != http.StatusOK || w.Header().Get("Idempotent-Replayed") != "" {
		t.Fatalf("after re-reading: %d %v", w.Code, w.Header())
	}
	if n := store.Writes(); n != 1 {
		t.Fatalf("the backend saw %d writes", n)
	}
}

func TestIdemTooLargeBodyNotStored(t *testing.T) {
	o := &orders{}
	h := isolateIdem(newTestHandler(t, &Handler{MaxBody: 4, Idempotency: &IdempotencyConfig{}}))
	if w := serve(t, h, o, "POST", "/orders", "too large", key1); w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("first: %d", w.Code)
	}
	if w := serve(t, h, o, "POST", "/orders", "ok", key1); w.Code != http.StatusCreated {
		t.Fatalf("after: %d %s", w.Code, w.Body)
	}
}

// A client that gives up while the upstream works does not cancel the
// upstream's request: its answer is stored for the retry.
func TestIdemClientGoneAnswerStored(t *testing.T) {
	for _, path := range []string{"/orders", "/doc"} {
		t.Run(path, func(t *testing.T) {
			hold, entered := make(chan struct{}), make(chan struct{}, 1)
			var writes atomic.Int64
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				if r.Method == http.MethodHead {
					w.Header().Set("ETag", `"v1"`)
					return nil
				}
				writes.Add(1)
				entered <- struct{}{}
				select {
				case <-hold:
				case <-r.Context().Done():
					return caddyhttp.Error(499, r.Context().Err())
				}
				w.Header().Set("ETag", `"v2"`)
				w.WriteHeader(http.StatusOK)
				_, err := w.Write([]byte("applied"))
				return err
			})
			h := idemHandler(t, nil)
			method := "POST"
			if path == "/doc" {
				method = "PUT"
			}
			ctx, cancel := context.WithCancel(context.Background())
			req := httptest.NewRequest(method, "http://example.com"+path, strings.NewReader("x")).WithContext(ctx)
			req.Header.Set("Idempotency-Key", `"k-1"`)
			req.Header.Set("If-Match", `"v1"`)
			served := make(chan struct{})
			go func() {
				defer close(served)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, nil), next)
			}()
			<-entered
			cancel() // the client gives up
			close(hold)
			<-served
			w := serve(t, h, next, method, path, "x", key1, `If-Match: "v1"`)
			if w.Code != http.StatusOK || w.Body.String() != "applied" || w.Header().Get("Idempotent-Replayed") != "true" {
				t.Fatalf("retry: %d %v %q", w.Code, w.Header(), w.Body)
			}
			if writes.Load() != 1 {
				t.Fatalf("%d writes", writes.Load())
			}
		})
	}
}

func TestIdemLargeAnswerReplayedWithoutBody(t *testing.T) {
	o := &orders{}
	h := idemHandler(t, &IdempotencyConfig{MaxBody: 4})
	first := serve(t, h, o, "POST", "/orders", "x", key1)
	if first.Body.String() != `{"id":1}` {
		t.Fatalf("the client did not get the whole answer: %q", first.Body)
	}
	w := serve(t, h, o, "POST", "/orders", "x", key1)
	if w.Code != http.StatusCreated || w.Body.Len() != 0 || w.Header().Get("Idempotent-Body-Omitted") != "true" ||
		w.Header().Get("Location") != "/orders/1" || w.Header().Get("Content-Type") != "" || w.Header().Get("Content-Length") != "0" {
		t.Fatalf("retry: %d %v %q", w.Code, w.Header(), w.Body)
	}
	if n := o.created.Load(); n != 1 {
		t.Fatalf("the backend created %d records", n)
	}
}

func TestIdemKeyRequiredAndInvalid(t *testing.T) {
	o := &orders{}
	h := idemHandler(t, &IdempotencyConfig{Require: []string{"POST"}})
	if w := serve(t, h, o, "POST", "/orders", "x"); w.Code != http.StatusBadRequest || problemOfRecorder(t, w) != problemIdemKeyRequired {
		t.Fatalf("no key: %d %s", w.Code, w.Body)
	}
	for _, bad := range []string{"k-1", `"k-1";a=1`, `""`, `"` + strings.Repeat("k", 256) + `"`} {
		if w := serve(t, h, o, "POST", "/orders", "x", "Idempotency-Key: "+bad); w.Code != http.StatusBadRequest || problemOfRecorder(t, w) != problemIdemKeyInvalid {
			t.Errorf("key %s: %d %s", bad, w.Code, w.Body)
		}
	}
	// Two field lines are two keys.
	if w := serve(t, h, o, "POST", "/orders", "x", key1, key1); w.Code != http.StatusBadRequest {
		t.Errorf("two keys: %d", w.Code)
	}
	if n := o.created.Load(); n != 0 {
		t.Fatalf("the backend created %d records", n)
	}
	// Methods not listed ignore the field.
	h2 := idemHandler(t, &IdempotencyConfig{Methods: []string{"PUT"}})
	serve(t, h2, o, "POST", "/orders", "x", key1)
	serve(t, h2, o, "POST", "/orders", "x", key1)
	if n := o.created.Load(); n != 2 {
		t.Fatalf("POST outside the idempotency methods: %d records", n)
	}
}

func TestIdemPlaceholder(t *testing.T) {
	o := &orders{hold: make(chan struct{}), entered: make(chan struct{}, 1)}
	h := idemHandler(t, nil)
	result := func(w http.ResponseWriter, r *http.Request, headers ...string) string {
		repl := caddy.NewReplacer()
		req := httptest.NewRequest("POST", "http://example.com/orders", strings.NewReader("x"))
		for _, hd := range headers {
			name, value, _ := strings.Cut(hd, ":")
			req.Header.Set(name, strings.TrimSpace(value))
		}
		req = caddyhttp.PrepareRequest(req, repl, w, nil)
		h.ServeHTTP(w, req, o)
		return repl.ReplaceAll("{http.write_guard.idempotency}", "-")
	}
	done := make(chan string)
	go func() { done <- result(httptest.NewRecorder(), nil, key1) }()
	<-o.entered
	if got := result(httptest.NewRecorder(), nil, key1); got != "in_flight" {
		t.Errorf("in flight: %q", got)
	}
	close(o.hold)
	if got := <-done; got != "new" {
		t.Errorf("first: %q", got)
	}
	if got := result(httptest.NewRecorder(), nil, key1); got != "replayed" {
		t.Errorf("retry: %q", got)
	}
	if got := result(httptest.NewRecorder(), nil, key1, "Content-Type: text/csv"); got != "reused" {
		t.Errorf("reuse: %q", got)
	}
	if got := result(httptest.NewRecorder(), nil); got != "-" {
		t.Errorf("no key: %q", got)
	}
}

func TestIdemValidate(t *testing.T) {
	for _, tc := range []struct {
		c   IdempotencyConfig
		err string
	}{
		{IdempotencyConfig{Methods: []string{"GET"}}, "safe"},
		{IdempotencyConfig{Require: []string{"PUT"}, Methods: []string{"POST"}}, "not one of"},
		{IdempotencyConfig{Require: []string{"PATCH"}}, ""},
		{IdempotencyConfig{MaxBody: 10, MaxMemory: 5}, "larger than max_memory"},
		{IdempotencyConfig{ClaimTTL: caddy.Duration(time.Millisecond)}, "too short"},
		{IdempotencyConfig{ReplayHeaders: []string{"bad field"}}, "not a header field"},
		{IdempotencyConfig{TTL: -1}, "negative"},
	} {
		err := (&Handler{Idempotency: &tc.c}).Validate()
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.err)
		}
	}
}

// brokenWriter is the answer to a client that has gone: every write fails.
type brokenWriter struct{ h http.Header }

func (b *brokenWriter) Header() http.Header       { return b.h }
func (b *brokenWriter) WriteHeader(int)           {}
func (b *brokenWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

// The answer of a client that has gone is still read to its end and
// recorded: the next handler (as reverse_proxy does) stops copying at the
// first write that fails.
func TestIdemAnswerRecordedPastAGoneClient(t *testing.T) {
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusCreated)
		for _, part := range []string{"one ", "two ", "three"} {
			if _, err := w.Write([]byte(part)); err != nil {
				return err
			}
		}
		return nil
	})
	h := idemHandler(t, nil)
	req := httptest.NewRequest("POST", "http://example.com/orders", strings.NewReader("x"))
	req.Header.Set("Idempotency-Key", `"k-1"`)
	w := &brokenWriter{h: http.Header{}}
	h.ServeHTTP(w, caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, nil), next)
	if r := serve(t, h, next, "POST", "/orders", "x", key1); r.Code != http.StatusCreated || r.Body.String() != "one two three" {
		t.Fatalf("retry: %d %q", r.Code, r.Body)
	}
}

func TestIdemMetrics(t *testing.T) {
	m := idemMetrics()
	count := func() map[string]float64 {
		return map[string]float64{
			"new": testutil.ToFloat64(m.byResult[idemNew]), "replayed": testutil.ToFloat64(m.byResult[idemReplayed]),
			"reused": testutil.ToFloat64(m.byResult[idemReused]), "stored": testutil.ToFloat64(m.stored),
			"evicted": testutil.ToFloat64(m.evicted),
		}
	}
	before := count()
	o := &orders{}
	h := idemHandler(t, nil)
	h.idem.store = idempotency.NewMemory(idempotency.MemoryConfig{MaxBytes: 1000, OnEvict: countIdemEviction})
	serve(t, h, o, "POST", "/orders", "x", key1)
	serve(t, h, o, "POST", "/orders", "x", key1)
	serve(t, h, o, "POST", "/orders", "y", key1)
	serve(t, h, o, "POST", "/orders", "x", `Idempotency-Key: "k-2"`)
	serve(t, h, o, "POST", "/orders", "x", `Idempotency-Key: "k-3"`)
	after := count()
	for name, want := range map[string]float64{"new": 3, "replayed": 1, "reused": 1, "stored": 3, "evicted": 1} {
		if got := after[name] - before[name]; got != want {
			t.Errorf("%s: +%v, want +%v", name, got, want)
		}
	}
}
