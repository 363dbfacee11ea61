package writeguard

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// A GET that was answered before a write but passes the guard after the
// write recorded its version must not put the old version back.
func TestReadOvertakenByWriteIsNotLearned(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{})
	oldTag := store.ETagOf([]byte("v1"))

	answered, release := make(chan struct{}), make(chan struct{})
	slowRead := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		// Take the upstream's answer now, deliver it later.
		rec := httptest.NewRecorder()
		store.ServeHTTP(rec, r)
		close(answered)
		<-release
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, err := w.Write(rec.Body.Bytes())
		return err
	})
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		serve(t, h, slowRead, "GET", "/doc", "")
	}()
	<-answered

	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", "If-Match: "+oldTag); w.Code != 200 {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	close(release)
	<-readDone
	h.cache.Wait()

	// Were the slow read's v1 learned, this write would pass on the
	// cache's word alone and overwrite v2.
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v3", "If-Match: "+oldTag); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("stale write after an overtaken read: %d %s", w.Code, w.Body)
	}
	if got, _ := store.Get("/doc"); string(got) != "v2" {
		t.Fatalf("backend holds %q", got)
	}
}

// Once the upstream answered, the write is applied: a client that reads the
// response body slowly must not hold the resource's lock.
func TestLockReleasedWhenUpstreamAnswers(t *testing.T) {
	store := backend.New()
	h := newTestHandler(t, &Handler{Blind: "allow", LockTimeout: caddy.Duration(5 * time.Second)})
	headerSent, finishBody := make(chan struct{}), make(chan struct{})
	slowBody := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		store.ServeHTTP(httptest.NewRecorder(), r)
		w.Header().Set("Etag", `"first"`)
		w.WriteHeader(http.StatusOK)
		close(headerSent)
		<-finishBody
		_, err := w.Write([]byte("a long answer"))
		return err
	})
	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		serve(t, h, slowBody, "PUT", "/doc", "first")
	}()
	<-headerSent
	second := make(chan int)
	go func() { second <- serve(t, h, storeHandler(store), "PUT", "/doc", "second").Code }()
	select {
	case code := <-second:
		if code != 200 {
			t.Fatalf("second write: %d", code)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("the second write waited for the first write's response body")
	}
	close(finishBody)
	<-firstDone
}

// A write whose answer turns the connection into a tunnel releases its lock.
func TestUpgradedWriteReleasesLock(t *testing.T) {
	h := newTestHandler(t, &Handler{Blind: "allow", LockTimeout: caddy.Duration(5 * time.Second)})
	upgraded, closeTunnel := make(chan struct{}), make(chan struct{})
	tunnel := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Header.Get("Upgrade") == "" {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		w.WriteHeader(http.StatusSwitchingProtocols)
		close(upgraded)
		<-closeTunnel
		return nil
	})
	tunnelDone := make(chan struct{})
	go func() {
		defer close(tunnelDone)
		serve(t, h, tunnel, "PUT", "/doc", "x", "Upgrade: websocket", "Connection: Upgrade")
	}()
	<-upgraded
	second := make(chan int)
	go func() { second <- serve(t, h, tunnel, "PUT", "/doc", "y").Code }()
	select {
	case code := <-second:
		if code != http.StatusNoContent {
			t.Fatalf("second write: %d", code)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("a tunnel kept the resource locked")
	}
	close(closeTunnel)
	<-tunnelDone
}

// fastRecorder is a response writer with the fast paths of net/http's own:
// ReadFrom (sendfile for files) and Flush.
type fastRecorder struct {
	*httptest.ResponseRecorder
	readFrom bool
}

func (f *fastRecorder) ReadFrom(r io.Reader) (int64, error) {
	f.readFrom = true
	return io.Copy(f.ResponseRecorder, r)
}

// TestWrappersKeepFastPaths: the writers the guard hands to the next handler,
// on the read path and on a guarded write, still reach the underlying
// writer's ReadFrom and Flush, so files go out by sendfile and streamed
// answers are flushed as without the guard.
func TestWrappersKeepFastPaths(t *testing.T) {
	h := newTestHandler(t, &Handler{})
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		tag := `"1"`
		if r.Method == http.MethodPut {
			io.Copy(io.Discard, r.Body)
			tag = `"2"`
		}
		w.Header().Set("ETag", tag)
		if r.Method == http.MethodHead {
			// The guard's own version check, whose answer goes nowhere.
			return nil
		}
		if _, ok := w.(io.ReaderFrom); !ok {
			t.Errorf("%s: the writer has no ReadFrom", r.Method)
		}
		// As http.ServeContent copies a file: the limited reader has no
		// WriteTo, so io.Copy asks the writer for ReadFrom.
		if _, err := io.Copy(w, io.LimitReader(strings.NewReader("body"), 4)); err != nil {
			t.Errorf("%s: copy: %v", r.Method, err)
		}
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("%s: flush: %v", r.Method, err)
		}
		return nil
	})
	for _, tc := range []struct {
		method  string
		headers []string
	}{
		{http.MethodGet, nil},
		{http.MethodPut, []string{`If-Match: "1"`}},
	} {
		rec := &fastRecorder{ResponseRecorder: httptest.NewRecorder()}
		req := newRequest(tc.method, "/doc", strings.NewReader("x"), tc.headers...)
		if err := serveTo(rec, req, h, next); err != nil {
			t.Fatalf("%s: %v", tc.method, err)
		}
		if rec.Code != http.StatusOK || rec.Body.String() != "body" {
			t.Fatalf("%s: %d %q", tc.method, rec.Code, rec.Body)
		}
		if !rec.readFrom {
			t.Errorf("%s: the body did not go through the underlying ReadFrom", tc.method)
		}
		if !rec.Flushed {
			t.Errorf("%s: the flush did not reach the underlying writer", tc.method)
		}
	}
}
