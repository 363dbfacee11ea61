package writeguard

import (
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/writeguard/caddy-writeguard/etagcache"
)

// taggedDoc is a one-document upstream whose tags and answers a test
// chooses, and which counts what it is asked.
type taggedDoc struct {
	mu       sync.Mutex
	body     string
	modified time.Time
	// tag names a body; "" sends no ETag.
	tag func(body string) string
	// answerTag: write answers carry the new version's tag.
	answerTag bool
	// stuckDate: writes leave Last-Modified as it was.
	stuckDate bool
	calls     map[string]int
}

func newTaggedDoc(body string, tag func(string) string) *taggedDoc {
	return &taggedDoc{body: body, modified: time.Now(), tag: tag, calls: map[string]int{}}
}

func (d *taggedDoc) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls[r.Method]++
	hdr := w.Header()
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if t := d.tag(d.body); t != "" {
			hdr.Set("Etag", t)
		}
		hdr.Set("Last-Modified", d.modified.UTC().Format(http.TimeFormat))
		if r.Method == http.MethodGet {
			io.WriteString(w, d.body)
		}
	case http.MethodPut:
		b, _ := io.ReadAll(r.Body)
		d.body = string(b)
		if !d.stuckDate {
			d.modified = time.Now()
		}
		if t := d.tag(d.body); t != "" && d.answerTag {
			hdr.Set("Etag", t)
		}
		w.WriteHeader(http.StatusNoContent)
	}
	return nil
}

func (d *taggedDoc) current() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.body
}

func (d *taggedDoc) count(method string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[method]
}

// contentTag is a good upstream's tag: a digest of the content.
func contentTag(body string) string {
	sum := sha256.Sum256([]byte(body))
	return `"c` + base64.RawURLEncoding.EncodeToString(sum[:6]) + `"`
}

// guardTagOf is the guard's own tag of body.
func guardTagOf(body string) string {
	sum := sha256.Sum256([]byte(body))
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:hashTagBytes]) + `"`
}

func hashedCount() float64 { return testutil.ToFloat64(guardMetrics().hashed) }

// In front of good strong tags nothing is hashed, reads pass the
// upstream's tag, and a write whose answer carries its new tag needs no
// look at the upstream afterwards.
func TestAutoTrustsGoodTags(t *testing.T) {
	doc := newTaggedDoc("v1", contentTag)
	doc.answerTag = true
	h := newTestHandler(t, &Handler{})
	hashed := hashedCount()

	get := serve(t, h, doc, "GET", "/doc", "")
	if tag := get.Header().Get("Etag"); tag != contentTag("v1") {
		t.Fatalf("GET: ETag %q, want the upstream's %q", tag, contentTag("v1"))
	}
	h.cache.Wait()
	for i, body := range []string{"v2", "v3"} {
		prev := contentTag([]string{"v1", "v2"}[i])
		w := serve(t, h, doc, "PUT", "/doc", body, "If-Match: "+prev)
		if w.Code != http.StatusNoContent || w.Header().Get("Etag") != contentTag(body) {
			t.Fatalf("PUT %s: %d ETag %q", body, w.Code, w.Header().Get("Etag"))
		}
	}
	if w := serve(t, h, doc, "PUT", "/doc", "v4", "If-Match: "+contentTag("v2")); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("PUT naming a replaced tag: %d", w.Code)
	}
	if n := hashedCount() - hashed; n != 0 {
		t.Errorf("%v representations hashed in front of good tags", n)
	}
	if n := doc.count(http.MethodHead) + doc.count(http.MethodGet); n != 1 {
		t.Errorf("the upstream was asked %d reads, want only the client's", n)
	}
	if h.reused.untrusted("example.com") {
		t.Error("good tags distrusted")
	}
}

// A representation without an ETag gets the guard's, which a write can
// name; a conditional read of it is answered 304 by the guard.
func TestAutoTagsUntaggedRepresentations(t *testing.T) {
	doc := newTaggedDoc("v1", func(string) string { return "" })
	h := newTestHandler(t, &Handler{})

	get := serve(t, h, doc, "GET", "/doc", "")
	tag := get.Header().Get("Etag")
	if tag != guardTagOf("v1") || get.Body.String() != "v1" {
		t.Fatalf("GET: ETag %q body %q, want the guard's tag %q", tag, get.Body, guardTagOf("v1"))
	}
	h.cache.Wait()
	if w := serve(t, h, doc, "GET", "/doc", "", "If-None-Match: "+tag); w.Code != http.StatusNotModified {
		t.Errorf("conditional GET naming the current tag: %d", w.Code)
	}
	w := serve(t, h, doc, "PUT", "/doc", "v2", "If-Match: "+tag)
	if w.Code != http.StatusNoContent || w.Header().Get("Etag") != guardTagOf("v2") {
		t.Fatalf("PUT with the guard's tag: %d ETag %q", w.Code, w.Header().Get("Etag"))
	}
	if w := serve(t, h, doc, "PUT", "/doc", "v3", "If-Match: "+tag); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("PUT naming the replaced tag: %d", w.Code)
	}
	if doc.current() != "v2" {
		t.Fatalf("upstream holds %q", doc.current())
	}
	if h.reused.untrusted("example.com") {
		t.Error("a site without tags was switched: there was nothing to distrust")
	}
}

// switchCase is an upstream whose tags do not name versions, and the way
// a write shows it.
type switchCase struct {
	name      string
	tag       func(string) string
	answerTag bool
	bodies    []string // written in turn, each naming the tag read before
	seen      string
}

func TestAutoSwitchesOnReusedTags(t *testing.T) {
	constant := func(string) string { return `"route"` }
	bySize := func(b string) string { return `"` + strings.Repeat("x", len(b)) + `"` }
	for _, c := range []switchCase{
		{name: "constant tag in the answer", tag: constant, answerTag: true, bodies: []string{"v2"}, seen: "answer"},
		{name: "constant tag, answer without", tag: constant, bodies: []string{"v2"}, seen: "check"},
		// A tag of the size alone comes back with a size the resource had
		// two versions ago: one that a write replaced, not the one this
		// write was checked against.
		{name: "an older tag again", tag: bySize, bodies: []string{"v22", "v3"}, seen: "check"},
	} {
		t.Run(c.name, func(t *testing.T) {
			doc := newTaggedDoc("v1", c.tag)
			doc.answerTag = c.answerTag
			h := newTestHandler(t, &Handler{})
			stale := serve(t, h, doc, "GET", "/doc", "").Header().Get("Etag")
			h.cache.Wait()
			tag := stale
			for _, body := range c.bodies {
				w := serve(t, h, doc, "PUT", "/doc", body, "If-Match: "+tag)
				if w.Code != http.StatusNoContent {
					t.Fatalf("PUT %s: %d %s", body, w.Code, w.Body)
				}
				tag = w.Header().Get("Etag")
			}
			last := c.bodies[len(c.bodies)-1]
			if !h.reused.untrusted("example.com") {
				t.Fatal("the site still trusts its upstream's tags")
			}
			if got := h.reused.list(); len(got) != 1 || got[0].Seen != c.seen || got[0].Key != "example.com/doc" {
				t.Errorf("evidence %+v, want seen %q", got, c.seen)
			}
			if tag != guardTagOf(last) {
				t.Errorf("the revealing write's answer: ETag %q, want the guard's %q", tag, guardTagOf(last))
			}
			// The write that revealed it lost nothing: the tag it replaced
			// stays refused although the upstream shows it again.
			w := serve(t, h, doc, "PUT", "/doc", "lost?", "If-Match: "+stale)
			if w.Code != http.StatusPreconditionFailed || !strings.Contains(w.Body.String(), "GET the resource again") {
				t.Fatalf("PUT naming the reused tag: %d %s", w.Code, w.Body)
			}
			if doc.current() != last {
				t.Fatalf("upstream holds %q, want %q", doc.current(), last)
			}
			get := serve(t, h, doc, "GET", "/doc", "")
			if get.Header().Get("Etag") != guardTagOf(last) {
				t.Fatalf("GET after the switch: ETag %q, want the guard's", get.Header().Get("Etag"))
			}
			h.cache.Wait()
			if w := serve(t, h, doc, "PUT", "/doc", "next", "If-Match: "+guardTagOf(last)); w.Code != http.StatusNoContent {
				t.Fatalf("PUT with the guard's tag: %d %s", w.Code, w.Body)
			}
		})
	}
}

// The same body written again leaves tags made of the content as they
// were. When the version was made by a PUT of that very body through the
// guard, that is no evidence; when the guard cannot tell (the version came
// from elsewhere), it switches, which costs hashing, and no write.
func TestAutoSameBodyAgain(t *testing.T) {
	t.Run("after a PUT of that body", func(t *testing.T) {
		doc := newTaggedDoc("v1", contentTag)
		h := newTestHandler(t, &Handler{})
		serve(t, h, doc, "GET", "/doc", "")
		h.cache.Wait()
		for i := 0; i < 2; i++ {
			tag := serve(t, h, doc, "GET", "/doc", "").Header().Get("Etag")
			h.cache.Wait()
			if w := serve(t, h, doc, "PUT", "/doc", "v2", "If-Match: "+tag); w.Code != http.StatusNoContent {
				t.Fatalf("PUT %d: %d %s", i, w.Code, w.Body)
			}
		}
		if h.reused.untrusted("example.com") {
			t.Fatal("a form saved twice switched the site")
		}
		// A different body that keeps the tag is evidence.
		constant := newTaggedDoc("v1", func(string) string { return `"route"` })
		h2 := newTestHandler(t, &Handler{})
		for _, body := range []string{"v2", "v2", "v3"} {
			serve(t, h2, constant, "PUT", "/doc", body, `If-Match: "route"`)
		}
		if !h2.reused.untrusted("example.com") {
			t.Fatal("a constant tag was trusted")
		}
	})
	t.Run("unknown before", func(t *testing.T) {
		doc := newTaggedDoc("v1", contentTag)
		doc.answerTag = true
		h := newTestHandler(t, &Handler{})
		serve(t, h, doc, "GET", "/doc", "")
		h.cache.Wait()
		w := serve(t, h, doc, "PUT", "/doc", "v1", "If-Match: "+contentTag("v1"))
		if w.Code != http.StatusNoContent || !h.reused.untrusted("example.com") {
			t.Fatalf("PUT of the same body: %d, switched %v", w.Code, h.reused.untrusted("example.com"))
		}
		tag := w.Header().Get("Etag")
		for _, body := range []string{"v2", "v3"} {
			w := serve(t, h, doc, "PUT", "/doc", body, "If-Match: "+tag)
			if w.Code != http.StatusNoContent {
				t.Fatalf("PUT %s with the guard's tag: %d %s", body, w.Code, w.Body)
			}
			tag = w.Header().Get("Etag")
		}
		if doc.current() != "v3" {
			t.Fatalf("upstream holds %q", doc.current())
		}
	})
}

// Another instance's record of a version tagged after a reuse (found in
// the store) makes this one distrust the site too.
func TestAutoAdoptsTheSwitchFromTheStore(t *testing.T) {
	doc := newTaggedDoc("v2", func(string) string { return `"route"` })
	h := newTestHandler(t, &Handler{})
	h.cache.Record("example.com/doc", etagcache.Version{Exists: true, ETag: guardTagOf("v2"), Guard: true, TagsReused: true, Superseded: []string{`"route"`}})
	h.cache.Wait()
	if w := serve(t, h, doc, "PUT", "/doc", "x", `If-Match: "route"`); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("PUT naming the reused tag: %d", w.Code)
	}
	got := h.reused.list()
	if len(got) != 1 || got[0].Seen != "store" {
		t.Fatalf("evidence %+v, want the store's", got)
	}
	if tag := serve(t, h, doc, "GET", "/doc", "").Header().Get("Etag"); tag != guardTagOf("v2") {
		t.Fatalf("GET: ETag %q, want the guard's", tag)
	}
}

// With etags upstream nothing is switched, whatever the tags do.
func TestUpstreamETagsNeverSwitch(t *testing.T) {
	doc := newTaggedDoc("v1", func(string) string { return `"route"` })
	doc.answerTag = true
	h := newTestHandler(t, &Handler{ETags: "upstream"})
	serve(t, h, doc, "GET", "/doc", "")
	serve(t, h, doc, "PUT", "/doc", "v2", `If-Match: "route"`)
	if tag := serve(t, h, doc, "GET", "/doc", "").Header().Get("Etag"); tag != `"route"` {
		t.Fatalf("GET: ETag %q, want the upstream's", tag)
	}
}

var _ caddyhttp.Handler = (*taggedDoc)(nil)

// A read of an untagged representation that a write overtook (its answer
// was made before the write and arrives after it) must not teach the
// cache the version it shows: a write naming that version would pass.
func TestAutoOvertakenUntaggedReadTeachesNothing(t *testing.T) {
	doc := newTaggedDoc("v1", func(string) string { return "" })
	h := newTestHandler(t, &Handler{})
	tag := serve(t, h, doc, "GET", "/doc", "").Header().Get("Etag")
	h.cache.Wait()

	answered, release := make(chan struct{}), make(chan struct{})
	slowRead := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet || r.Header.Get("X-Slow") == "" {
			return doc.ServeHTTP(w, r)
		}
		body := doc.current()
		close(answered)
		<-release // the write happens here
		w.Header().Set("Last-Modified", time.Now().UTC().Format(http.TimeFormat))
		io.WriteString(w, body)
		return nil
	})
	done := make(chan string)
	go func() {
		done <- serve(t, h, slowRead, "GET", "/doc", "", "X-Slow: 1").Header().Get("Etag")
	}()
	<-answered
	if w := serve(t, h, doc, "PUT", "/doc", "v2", "If-Match: "+tag); w.Code != http.StatusNoContent {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	close(release)
	if old := <-done; old != tag {
		t.Fatalf("the overtaken read was tagged %q, want v1's %q", old, tag)
	}
	h.cache.Wait()
	if w := serve(t, h, doc, "PUT", "/doc", "lost?", "If-Match: "+tag); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("PUT naming the version the overtaken read showed: %d (v2 lost)", w.Code)
	}
}

// A toggle set back (a body written before, whose tag a write replaced)
// brings an older tag back: no evidence when a PUT through the guard made
// that tag with that body.
func TestAutoToggleSetBackIsNoEvidence(t *testing.T) {
	doc := newTaggedDoc("new", contentTag)
	h := newTestHandler(t, &Handler{})
	serve(t, h, doc, "GET", "/doc", "")
	h.cache.Wait()
	tag := contentTag("new")
	for _, body := range []string{"off", "on", "off", "on", "off"} {
		w := serve(t, h, doc, "PUT", "/doc", body, "If-Match: "+tag)
		if w.Code != http.StatusNoContent {
			t.Fatalf("PUT %s: %d %s", body, w.Code, w.Body)
		}
		tag = contentTag(body)
	}
	if h.reused.untrusted("example.com") {
		t.Fatalf("a toggle switched the site: %+v", h.reused.list())
	}
	// A tag of the size alone brings back a tag with another body: that is
	// evidence.
	bySize := newTaggedDoc("aa", func(b string) string { return `"` + strings.Repeat("x", len(b)) + `"` })
	h2 := newTestHandler(t, &Handler{})
	for _, step := range [][2]string{{`"xx"`, "bbb"}, {`"xxx"`, "cc"}} {
		serve(t, h2, bySize, "PUT", "/doc", step[1], "If-Match: "+step[0])
	}
	if !h2.reused.untrusted("example.com") {
		t.Fatal("a size tag that came back with another body was trusted")
	}
}
