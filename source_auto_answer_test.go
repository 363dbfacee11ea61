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
