package writeguard

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// datedDoc is a one-document upstream without entity-tags whose dates
// name seconds, as a file server with ETags turned off: every write lands
// in the same second here, and a read whose If-Modified-Since is not
// before that second is answered 304.
type datedDoc struct {
	mu       sync.Mutex
	body     string
	modified time.Time
}

func (d *datedDoc) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		w.Header().Set("Last-Modified", d.modified.Format(http.TimeFormat))
		if ims, err := http.ParseTime(r.Header.Get("If-Modified-Since")); err == nil && !d.modified.After(ims) {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
		if r.Method == http.MethodGet {
			io.WriteString(w, d.body)
		}
	case http.MethodPut:
		b, _ := io.ReadAll(r.Body)
		d.body = string(b)
		w.WriteHeader(http.StatusNoContent)
	}
	return nil
}

// A client that revalidates its copy by date alone (it kept no ETag: a
// browser's copy of an answer whose tag came in a trailer, or a client
// that only knows dates) must not be told that a version it does not
// have is current. The guard knows that two versions carry that date: it
// recorded both writes.
func TestAutoDateRevalidationOfACrowdedDate(t *testing.T) {
	doc := &datedDoc{body: "v0", modified: time.Now().UTC().Truncate(time.Second)}
	h := newTestHandler(t, &Handler{})
	tag := serve(t, h, doc, "GET", "/doc", "").Header().Get("Etag")
	h.cache.Wait()
	w := serve(t, h, doc, "PUT", "/doc", "v1", "If-Match: "+tag)
	if w.Code != http.StatusNoContent {
		t.Fatalf("PUT v1: %d %s", w.Code, w.Body)
	}
	read := serve(t, h, doc, "GET", "/doc", "")
	if read.Body.String() != "v1" {
		t.Fatalf("GET: %q", read.Body)
	}
	h.cache.Wait()
	if w := serve(t, h, doc, "PUT", "/doc", "v2", "If-Match: "+read.Header().Get("Etag")); w.Code != http.StatusNoContent {
		t.Fatalf("PUT v2: %d %s", w.Code, w.Body)
	}
	again := serve(t, h, doc, "GET", "/doc", "", "If-Modified-Since: "+read.Header().Get("Last-Modified"))
	if again.Code != http.StatusOK || !strings.Contains(again.Body.String(), "v2") {
		t.Errorf("revalidation of v1 by its date after v2 was written in the same second: %d %q, want 200 with v2", again.Code, again.Body)
	}
}

// Once a site's upstream tags are distrusted, a HEAD must not hand out the
// upstream's tag that the cache learned before the switch, nor answer 304
// to it: a GET of the same resource carries the guard's tag, and a write
// naming the upstream's is refused with the advice to read again.
func TestAutoHeadAfterTheSwitch(t *testing.T) {
	route := func(string) string { return `"route"` }
	docs := map[string]*taggedDoc{"/h": newTaggedDoc("h0", route), "/s": newTaggedDoc("s0", route)}
	docs["/s"].answerTag = true
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return docs[r.URL.Path].ServeHTTP(w, r)
	})
	h := newTestHandler(t, &Handler{})
	serve(t, h, next, "GET", "/h", "")
	h.cache.Wait()
	if w := serve(t, h, next, "PUT", "/s", "s1", `If-Match: "route"`); w.Code != http.StatusNoContent || !h.reused.untrusted("example.com") {
		t.Fatalf("the switch: %d, switched %v", w.Code, h.reused.untrusted("example.com"))
	}
	if tag := serve(t, h, next, "HEAD", "/h", "").Header().Get("Etag"); tag == `"route"` {
		t.Errorf("HEAD after the switch carries the distrusted upstream tag %s", tag)
	}
	if w := serve(t, h, next, "HEAD", "/h", "", `If-None-Match: "route"`); w.Code == http.StatusNotModified {
		t.Errorf("HEAD naming the distrusted upstream tag answered 304")
	}
}
