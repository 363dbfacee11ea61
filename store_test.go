package writeguard

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Every resource ever written must not cost memory for ever: after a
// million distinct resources written once, the lock manager holds nothing
// and the cache stays within its bound.
func TestMillionResourcesWrittenOnce(t *testing.T) {
	n := 1_000_000
	if raceDetector || testing.Short() {
		n = 100_000
	}
	const cacheBytes = 4 << 20
	h := newTestHandler(t, &Handler{CacheBytes: cacheBytes})
	h.logger = zap.NewNop() // two debug lines per write would be most of the work
	// An upstream that creates whatever it is asked to: absent before the
	// write, tagged after it.
	upstream := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		switch r.Method {
		case http.MethodHead, http.MethodGet:
			w.WriteHeader(http.StatusNotFound)
		default:
			w.Header().Set("Etag", `"1"`)
			w.WriteHeader(http.StatusCreated)
		}
		return nil
	})
	locksBefore := h.locks.Len()
	heapBefore := heapInUse()

	const workers = 4
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			var path strings.Builder
			for i := g; i < n; i += workers {
				path.Reset()
				path.WriteString("/r/")
				path.WriteString(strconv.Itoa(i))
				req := newRequest("PUT", path.String(), strings.NewReader("x"), "If-None-Match: *")
				w := httptest.NewRecorder()
				if err := serveTo(w, req, h, upstream); err != nil || w.Code != http.StatusCreated {
					t.Errorf("PUT %s: %d %v", path.String(), w.Code, err)
					return
				}
			}
		})
	}
	wg.Wait()
	h.cache.Wait()

	if got := h.locks.Len() - locksBefore; got != 0 {
		t.Errorf("lock manager tracks %d resources after every write ended", got)
	}
	st := h.cache.Stats()
	if st.Cost > st.MaxCost || st.MaxCost != cacheBytes {
		t.Errorf("cache holds %d of %d bytes (cache_bytes %d)", st.Cost, st.MaxCost, cacheBytes)
	}
	growth := heapInUse() - heapBefore
	t.Logf("%d resources written once: lock entries %d, cache %d of %d bytes, %d evictions, heap in use %+.1f MiB",
		n, h.locks.Len()-locksBefore, st.Cost, st.MaxCost, st.Evictions, float64(growth)/(1<<20))
	// A cache bounded at 4 MiB takes at most about 1.25 times that (see
	// etagcache.EntryOverhead) plus ristretto's fixed structures; a million
	// resources leaking even 64 bytes each would exceed this.
	if growth > 32<<20 {
		t.Errorf("heap in use grew by %.1f MiB", float64(growth)/(1<<20))
	}
}
