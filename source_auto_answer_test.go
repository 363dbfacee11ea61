package writeguard

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// answerTaggedDoc is a one-document upstream whose reads carry a good
// strong tag of the content, and whose writes are answered 200 with a
// small status body that a middleware tags like any other body, strongly
// (koa-etag does so for every 2xx answer with a body): every write's
// answer carries the same tag, which names the answer, not the version.
type answerTaggedDoc struct {
	mu   sync.Mutex
	body string
}

const answerBody = `{"ok":true}`

func (d *answerTaggedDoc) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		w.Header().Set("Etag", contentTag(d.body))
		if r.Method == http.MethodGet {
			io.WriteString(w, d.body)
		}
	case http.MethodPut:
		b, _ := io.ReadAll(r.Body)
		d.body = string(b)
		w.Header().Set("Etag", contentTag(answerBody))
		io.WriteString(w, answerBody)
	}
	return nil
}

func (d *answerTaggedDoc) current() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.body
}

// A client that chains its writes on the ETag of its last write's answer
// (RFC 9110 lets a write's answer carry the new version's tag, and the
// guard's own answers do) names a version that another write has replaced
// since, when every answer carries the same tag and a read in between
// taught the cache the representation's own tag: that write must be
// refused.
func TestAutoWriteAnswerTagOfTheAnswerBody(t *testing.T) {
	run := func(t *testing.T, guard *Handler) string {
		doc := &answerTaggedDoc{body: "n=0"}
		send := func(method, body, ifMatch string) *http.Response {
			t.Helper()
			var headers []string
			if ifMatch != "" {
				headers = append(headers, "If-Match: "+ifMatch)
			}
			if guard == nil {
				w := httptest.NewRecorder()
				var rd io.Reader
				if body != "" {
					rd = strings.NewReader(body)
				}
				doc.ServeHTTP(w, newRequest(method, "/doc", rd, headers...))
				return w.Result()
			}
			w := serve(t, guard, doc, method, "/doc", body, headers...)
			guard.cache.Wait()
			return w.Result()
		}
		// A reads n=0 and writes n=1; the answer gives it a tag.
		a := send(http.MethodGet, "", "").Header.Get("Etag")
		aw := send(http.MethodPut, "n=1 (a)", a)
		if aw.StatusCode != http.StatusOK {
			t.Fatalf("A's first write: %d", aw.StatusCode)
		}
		aTag := aw.Header.Get("Etag")
		// B reads n=1 and writes n=2.
		b := send(http.MethodGet, "", "").Header.Get("Etag")
		if bw := send(http.MethodPut, "n=2 (b)", b); bw.StatusCode != http.StatusOK {
			t.Fatalf("B's write: %d", bw.StatusCode)
		}
		// A, holding n=1 and the tag of its write's answer, writes n=2.
		cw := send(http.MethodPut, "n=2 (a, on n=1)", aTag)
		if guard != nil && cw.StatusCode != http.StatusPreconditionFailed {
			t.Errorf("A's chained write naming the version B replaced: %d, want 412", cw.StatusCode)
		}
		return doc.current()
	}
	t.Run("control", func(t *testing.T) {
		if got := run(t, nil); got != "n=2 (a, on n=1)" {
			t.Fatalf("without the guard the backend holds %q: the workload loses no update", got)
		}
	})
	t.Run("guard", func(t *testing.T) {
		h := newTestHandler(t, &Handler{})
		if got := run(t, h); got != "n=2 (b)" {
			t.Errorf("backend holds %q: B's acknowledged write is lost", got)
		}
	})
}

// sizeTaggedDoc is a one-document upstream that can be deleted and
// created again, tagging each version by its length alone, as a file
// server tags by modification time and size two versions written within
// one second: a document created again with a body of the old length
// comes back with the old tag. Writes are answered without a tag.
type sizeTaggedDoc struct {
	mu     sync.Mutex
	body   string
	exists bool
}

func (d *sizeTaggedDoc) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if !d.exists {
			w.WriteHeader(http.StatusNotFound)
			return nil
		}
		w.Header().Set("Etag", `"`+strings.Repeat("x", len(d.body))+`"`)
		if r.Method == http.MethodGet {
			io.WriteString(w, d.body)
		}
	case http.MethodPut:
		b, _ := io.ReadAll(r.Body)
		created := !d.exists
		d.body, d.exists = string(b), true
		if created {
			w.WriteHeader(http.StatusCreated)
			return nil
		}
		w.WriteHeader(http.StatusNoContent)
	case http.MethodDelete:
		d.exists = false
		w.WriteHeader(http.StatusNoContent)
	}
	return nil
}

// A client that read a document before it was deleted and created anew
// names, with the tag it holds, the deleted version. When the new
// document comes back with that tag (tags of mtime and size within one
// second), the client's write must not overwrite the acknowledged
// creation it never saw.
func TestAutoCreatedAgainWithTheDeletedTag(t *testing.T) {
	run := func(t *testing.T, guard *Handler) string {
		doc := &sizeTaggedDoc{}
		send := func(method, body string, headers ...string) *http.Response {
			t.Helper()
			if guard == nil {
				w := httptest.NewRecorder()
				doc.ServeHTTP(w, newRequest(method, "/doc", strings.NewReader(body), headers...))
				return w.Result()
			}
			w := serve(t, guard, doc, method, "/doc", body, headers...)
			guard.cache.Wait()
			return w.Result()
		}
		if r := send(http.MethodPut, "AAAA", "If-None-Match: *"); r.StatusCode != http.StatusCreated {
			t.Fatalf("A's create: %d", r.StatusCode)
		}
		c := send(http.MethodGet, "").Header.Get("Etag")
		if r := send(http.MethodDelete, "", "If-Match: "+c); r.StatusCode != http.StatusNoContent {
			t.Fatalf("D's delete: %d", r.StatusCode)
		}
		if r := send(http.MethodPut, "BBBB", "If-None-Match: *"); r.StatusCode != http.StatusCreated {
			t.Fatalf("E's create: %d", r.StatusCode)
		}
		r := send(http.MethodPut, "CCCC", "If-Match: "+c)
		if guard != nil && r.StatusCode != http.StatusPreconditionFailed {
			t.Errorf("C's write on the deleted version: %d, want 412", r.StatusCode)
		}
		return doc.body
	}
	t.Run("control", func(t *testing.T) {
		if got := run(t, nil); got != "CCCC" {
			t.Fatalf("without the guard the backend holds %q: the workload loses no update", got)
		}
	})
	t.Run("guard", func(t *testing.T) {
		if got := run(t, newTestHandler(t, &Handler{})); got != "BBBB" {
			t.Errorf("backend holds %q: E's acknowledged creation is lost", got)
		}
	})
}
