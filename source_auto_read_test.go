package writeguard

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
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
