// Package backend is a deliberately naive legacy HTTP store: it applies every
// PUT, PATCH and DELETE last-writer-wins, ignores every precondition, and so
// loses updates whenever two clients edit the same resource at once. It is
// what write_guard is meant to sit in front of, and what the demo and the
// end-to-end tests run against.
package backend

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// ETagStyle selects how the store labels versions.
type ETagStyle int

const (
	// StrongETags sends `"<hash>"`.
	StrongETags ETagStyle = iota
	// WeakETags sends `W/"<hash>"`, as Express does by default.
	WeakETags
	// NoETags sends only Last-Modified.
	NoETags
	// MTimeETags sends `"<seconds>-<size>"` from the modification time and
	// the length, as static file servers do: two writes of the same length
	// within one second get the same tag.
	MTimeETags
	// ConstantETags sends one tag for every version of a path, as a
	// framework does that tags the route rather than the content; the
	// answer to a write carries it too, so it looks like the new version's.
	ConstantETags
)

type item struct {
	path     string
	body     []byte
	modified time.Time
}

// Store is an in-memory map from URL path to a document.
type Store struct {
	// ETags is how versions are labelled. Default: strong.
	ETags ETagStyle
	// WriteDelay makes every write sleep before it is applied, widening the
	// window in which concurrent writers overwrite each other.
	WriteDelay time.Duration

	mu       sync.Mutex
	items    map[string]item
	inFlight map[string]int
	overlap  int
	writes   int
}

// New returns an empty store.
func New() *Store {
	return &Store{items: map[string]item{}, inFlight: map[string]int{}}
}

// Put stores a document directly, bypassing HTTP (for setting up tests).
func (s *Store) Put(path string, body []byte) {
	s.PutAt(path, body, time.Now())
}

// PutAt is Put of a document last modified at modified, such as one
// nobody has touched for an hour.
func (s *Store) PutAt(path string, body []byte, modified time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items[path] = item{path: path, body: append([]byte(nil), body...), modified: modified}
}

// Get returns the document at path.
func (s *Store) Get(path string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.items[path]
	return it.body, ok
}

// Overlaps reports how many times a write started while another write to the
// same path was still being applied.
func (s *Store) Overlaps() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.overlap
}

// InFlight reports how many writes are being applied right now.
func (s *Store) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.inFlight {
		n += c
	}
	return n
}

// Writes reports how many writes were applied.
func (s *Store) Writes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes
}

// ETagOf returns the ETag the store sends for body (with MTimeETags, for
// body written now; with ConstantETags, at the path "").
func (s *Store) ETagOf(body []byte) string {
	return s.etagOf(item{body: body, modified: time.Now()})
}

// RouteETag is the one tag ConstantETags sends for every version at path.
func RouteETag(path string) string {
	sum := sha256.Sum256([]byte(path))
	return `"route-` + base64.RawURLEncoding.EncodeToString(sum[:6]) + `"`
}

func (s *Store) etagOf(it item) string {
	body := it.body
	switch s.ETags {
	case MTimeETags:
		return `"` + strconv.FormatInt(it.modified.Unix(), 16) + "-" + strconv.FormatInt(int64(len(body)), 16) + `"`
	case ConstantETags:
		return RouteETag(it.path)
	}
	sum := sha256.Sum256(body)
	tag := `"` + base64.RawURLEncoding.EncodeToString(sum[:9]) + `"`
	switch s.ETags {
	case WeakETags:
		return "W/" + tag
	case NoETags:
		return ""
	}
	return tag
}

func (s *Store) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		s.mu.Lock()
		it, ok := s.items[path]
		s.mu.Unlock()
		if !ok {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		s.writeValidators(w, it)
		w.Header().Set("Content-Type", contentType(it.body))
		w.Header().Set("Content-Length", strconv.Itoa(len(it.body)))
		if r.Method == http.MethodGet {
			w.Write(it.body)
		}
	case http.MethodPut, http.MethodPatch, http.MethodPost:
		// POST replaces the document too, as legacy form handlers do.
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		done := s.begin(path)
		defer done()
		s.mu.Lock()
		old, existed := s.items[path]
		s.mu.Unlock()
		if r.Method == http.MethodPatch {
			if !existed {
				http.Error(w, "not found", http.StatusNotFound)
				return
			}
			body = mergePatch(old.body, body)
		}
		it := item{path: path, body: body, modified: time.Now()}
		s.mu.Lock()
		s.items[path] = it
		s.writes++
		s.mu.Unlock()
		s.writeValidators(w, it)
		if existed {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusCreated)
		}
	case http.MethodDelete:
		done := s.begin(path)
		defer done()
		s.mu.Lock()
		_, ok := s.items[path]
		delete(s.items, path)
		s.writes++
		s.mu.Unlock()
		if !ok {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT, PATCH, POST, DELETE")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// begin marks a write to path in progress and waits WriteDelay, so that
// overlapping writes are both visible and likely.
func (s *Store) begin(path string) (done func()) {
	s.mu.Lock()
	if s.inFlight[path] > 0 {
		s.overlap++
	}
	s.inFlight[path]++
	s.mu.Unlock()
	if s.WriteDelay > 0 {
		time.Sleep(s.WriteDelay)
	}
	return func() {
		s.mu.Lock()
		s.inFlight[path]--
		if s.inFlight[path] == 0 {
			delete(s.inFlight, path)
		}
		s.mu.Unlock()
	}
}

func (s *Store) writeValidators(w http.ResponseWriter, it item) {
	if tag := s.etagOf(it); tag != "" {
		w.Header().Set("ETag", tag)
	}
	w.Header().Set("Last-Modified", it.modified.UTC().Format(http.TimeFormat))
}

func contentType(body []byte) string {
	if json.Valid(body) {
		return "application/json"
	}
	return "text/plain; charset=utf-8"
}

// mergePatch applies a JSON merge patch (RFC 7396) at the top level when both
// documents are JSON objects; otherwise the patch replaces the document.
func mergePatch(doc, patch []byte) []byte {
	var d, p map[string]json.RawMessage
	if json.Unmarshal(doc, &d) != nil || json.Unmarshal(patch, &p) != nil {
		return patch
	}
	for k, v := range p {
		if string(v) == "null" {
			delete(d, k)
		} else {
			d[k] = v
		}
	}
	out, err := json.Marshal(d)
	if err != nil {
		return patch
	}
	return out
}
