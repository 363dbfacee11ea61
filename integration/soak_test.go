package integration

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// TestSoak is run by hand: WRITEGUARD_SOAK=1 go test -run TestSoak -v ./integration
//
// 10,000 acknowledged read-modify-write cycles across 1,000 resources,
// through a backend that fails one write in about twenty (connection reset
// after or before applying it, an answer slower than write_timeout, a 500).
// It checks that no acknowledged write is lost, that no lock is left behind,
// and that the heap and the goroutines come back to where they started. It
// is bounded by its count of writes and by a deadline of five minutes.
func TestSoak(t *testing.T) {
	if os.Getenv("WRITEGUARD_SOAK") == "" {
		t.Skip("set WRITEGUARD_SOAK=1 to run the soak test")
	}
	const (
		resources = 1000
		writes    = 10_000
		clients   = 16
	)
	store := backend.New()
	paths := make([]string, resources)
	for i := range paths {
		paths[i] = fmt.Sprintf("/soak/%d", i)
		store.Put(paths[i], nil)
	}
	var attempts, faults atomic.Int64
	faulty := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut {
			store.ServeHTTP(w, r)
			return
		}
		// A fixed schedule of faults, so that runs compare.
		switch n := attempts.Add(1); {
		case n%53 == 0: // applied, then the connection drops
			faults.Add(1)
			body, _ := io.ReadAll(r.Body)
			store.Put(r.URL.Path, body)
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
		case n%71 == 0: // dropped before it is applied
			faults.Add(1)
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
		case n%89 == 0: // applied, answered after write_timeout
			faults.Add(1)
			body, _ := io.ReadAll(r.Body)
			store.Put(r.URL.Path, body)
			select {
			case <-time.After(600 * time.Millisecond):
			case <-r.Context().Done():
			}
			w.WriteHeader(http.StatusOK)
		case n%97 == 0: // refused by the backend
			faults.Add(1)
			http.Error(w, "internal error", http.StatusInternalServerError)
		default:
			store.ServeHTTP(w, r)
		}
	})
	startCaddy(t, fmtSite(`
	write_guard {
		write_timeout 300ms
	}
	reverse_proxy %s`, startBackend(t, faulty)))
	client := &http.Client{Timeout: 30 * time.Second}
	do(t, client, "GET", paths[0], "") // warm up before measuring

	heapStart, goroutinesStart := settledHeap(), runtime.NumGoroutine()
	start := time.Now()
	deadline := start.Add(5 * time.Minute)

	var (
		mu              sync.Mutex
		acked           = map[string][]string{}
		done            atomic.Int64
		refused, failed atomic.Int64
	)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			for i := 0; done.Load() < writes && time.Now().Before(deadline); i++ {
				res := paths[rng.IntN(resources)]
				line := fmt.Sprintf("client %d write %d", c, i)
				switch status := soakEdit(client, res, line); {
				case status >= 200 && status < 300:
					mu.Lock()
					acked[res] = append(acked[res], line)
					mu.Unlock()
					done.Add(1)
				case status == http.StatusPreconditionFailed || status == http.StatusConflict:
					refused.Add(1)
				default:
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)

	lost := 0
	for res, lines := range acked {
		final := mustBody(t, store, res)
		for _, l := range lines {
			if !strings.Contains(final, l+"\n") {
				lost++
			}
		}
	}
	assertNoLocks(t)
	client.CloseIdleConnections()
	heapEnd := settledHeap()
	time.Sleep(200 * time.Millisecond) // connections closing on both sides
	goroutinesEnd := runtime.NumGoroutine()

	t.Logf("%d writes acknowledged in %v (%.0f/s) across %d resources by %d clients; %d refused and retried, %d failed (%d faults injected in %d upstream writes)",
		done.Load(), elapsed.Round(time.Millisecond), float64(done.Load())/elapsed.Seconds(), resources, clients, refused.Load(), failed.Load(), faults.Load(), attempts.Load())
	t.Logf("lost: %d; heap after GC: %.1f MiB before, %.1f MiB after; goroutines: %d before, %d after",
		lost, float64(heapStart)/(1<<20), float64(heapEnd)/(1<<20), goroutinesStart, goroutinesEnd)
	if done.Load() < writes {
		t.Errorf("only %d of %d writes acknowledged before the deadline", done.Load(), writes)
	}
	if lost != 0 {
		t.Errorf("%d acknowledged writes lost", lost)
	}
	if n := store.Overlaps(); n != 0 {
		t.Errorf("%d writes overlapped at the backend", n)
	}
	// The documents grew by 10,000 lines and the cache holds up to 1,000
	// versions: a few MiB. A leak of a request's state would be more.
	if grown := int64(heapEnd) - int64(heapStart); grown > 16<<20 {
		t.Errorf("heap grew by %.1f MiB", float64(grown)/(1<<20))
	}
	if goroutinesEnd > goroutinesStart+10 {
		t.Errorf("goroutines: %d before, %d after", goroutinesStart, goroutinesEnd)
	}
}

func soakEdit(client *http.Client, res, line string) int {
	resp, err := client.Get(caddyBase + res)
	if err != nil {
		return 0
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode
	}
	return putIfMatch(client, caddyBase+res, string(body)+line+"\n", resp.Header.Get("ETag"))
}

func settledHeap() uint64 {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
