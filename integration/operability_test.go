package integration

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// scrape reads the Prometheus text exposition at Caddy's /metrics and
// returns the write_guard samples by name and labels.
func scrape(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := http.Get(caddyBase + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scrape: %d", resp.StatusCode)
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "caddy_write_guard_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples
}

// TestMetrics scripts a mix of writes and checks that every counter moved
// by what the mix did.
func TestMetrics(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1", "/other": "o1"})
	store.WriteDelay = 100 * time.Millisecond
	// /broken cannot be checked (its HEAD fails); a write to /reset is
	// applied and then its connection dropped.
	faulty := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/broken":
			http.Error(w, "down", http.StatusInternalServerError)
		case r.URL.Path == "/reset" && r.Method == http.MethodPut:
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
		default:
			store.ServeHTTP(w, r)
		}
	})
	store.Put("/reset", []byte("r1"))
	startCaddy(t, fmtSite(`
	metrics /metrics
	write_guard {
		max_waiters 1
		max_body 1KiB
	}
	reverse_proxy %s`, startBackend(t, faulty)))
	client := &http.Client{Timeout: 30 * time.Second}
	before := scrape(t)

	do(t, client, "PUT", "/broken", "x", "If-Match: *") // probe_failed
	do(t, client, "PUT", "/reset", "r2", "If-Match: *") // allowed, then the upstream fails

	tag := do(t, client, "GET", "/doc", "").header.Get("ETag")             // teaches the cache
	do(t, client, "PUT", "/doc", "v2", "If-Match: "+tag)                   // allowed, cache hit
	do(t, client, "PUT", "/doc", "v3", "If-Match: "+tag)                   // stale: cache miss? no: hit, then confirmed by a probe
	do(t, client, "PUT", "/doc", "blind")                                  // blind
	do(t, client, "PUT", "/doc", "bad", "If-Match: unquoted")              // bad_request
	do(t, client, "PUT", "/doc", strings.Repeat("x", 2000), "If-Match: *") // too_large
	do(t, client, "PUT", "/other", "o2", "If-Match: *")                    // allowed after a probe (miss)
	// Three writes to one resource at once with max_waiters 1: one holds
	// the lock, one waits, one is busy.
	current := do(t, client, "GET", "/doc", "").header.Get("ETag")
	var wg sync.WaitGroup
	statuses := make(chan int, 3)
	for i := range 3 {
		wg.Go(func() {
			time.Sleep(time.Duration(i) * 20 * time.Millisecond)
			req, _ := http.NewRequest(http.MethodPut, caddyBase+"/doc", strings.NewReader("c"+strconv.Itoa(i)))
			req.Header.Set("If-Match", current)
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
				statuses <- resp.StatusCode
			}
		})
	}
	wg.Wait()
	close(statuses)
	busy := 0
	for s := range statuses {
		if s == http.StatusConflict {
			busy++
		}
	}
	after := scrape(t)
	delta := func(sample string) float64 { return after[sample] - before[sample] }

	for sample, want := range map[string]float64{
		`caddy_write_guard_requests_total{outcome="blind"}`:        1,
		`caddy_write_guard_requests_total{outcome="bad_request"}`:  1,
		`caddy_write_guard_requests_total{outcome="too_large"}`:    1,
		`caddy_write_guard_requests_total{outcome="busy"}`:         float64(busy),
		`caddy_write_guard_requests_total{outcome="probe_failed"}`: 1,
		`caddy_write_guard_probes_total{result="failed"}`:          1,
		`caddy_write_guard_upstream_failures_total`:                1,
	} {
		if got := delta(sample); got != want {
			t.Errorf("%s moved by %v, want %v", sample, got, want)
		}
	}
	if busy != 1 {
		t.Errorf("%d of the three concurrent writes were busy, want 1", busy)
	}
	for sample, atLeast := range map[string]float64{
		`caddy_write_guard_requests_total{outcome="allowed"}`:   3, // v2, o2, the first concurrent one
		`caddy_write_guard_requests_total{outcome="stale"}`:     2, // v3, the second concurrent one
		`caddy_write_guard_probes_total{result="version"}`:      2, // confirming v3's 412, /other's miss
		`caddy_write_guard_cache_hits_total`:                    1,
		`caddy_write_guard_cache_misses_total`:                  1,
		`caddy_write_guard_lock_wait_seconds_count`:             6,
		`caddy_write_guard_lock_wait_seconds_bucket{le="+Inf"}`: 6,
	} {
		if got := delta(sample); got < atLeast {
			t.Errorf("%s moved by %v, want at least %v", sample, got, atLeast)
		}
	}
	for _, gauge := range []string{"caddy_write_guard_writes_in_flight", "caddy_write_guard_writes_waiting"} {
		if v, ok := after[gauge]; !ok || v != 0 {
			t.Errorf("%s = %v (present: %v), want 0 once the writes are done", gauge, v, ok)
		}
	}
}

// TestPlaceholdersInAccessLog adds the guard's placeholders to the access
// log with log_append and checks them for an allowed and a refused write.
func TestPlaceholdersInAccessLog(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "access.log")
	store := newStore(map[string]string{"/doc": "v1"})
	startCaddy(t, fmtSite(`
	log {
		output file %s
		format json
	}
	log_append guard_outcome {http.write_guard.outcome}
	log_append guard_key {http.write_guard.key}
	log_append guard_etag {http.write_guard.etag}
	log_append guard_lock_wait {http.write_guard.lock_wait}
	write_guard
	reverse_proxy %s`, logFile, startBackend(t, store)))
	client := &http.Client{Timeout: 30 * time.Second}
	tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
	do(t, client, "PUT", "/doc", "v2", "If-Match: "+tag)
	do(t, client, "PUT", "/doc", "v3", "If-Match: "+tag)

	type entry struct {
		Request struct {
			Method string `json:"method"`
			URI    string `json:"uri"`
		} `json:"request"`
		Status   int    `json:"status"`
		Outcome  string `json:"guard_outcome"`
		Key      string `json:"guard_key"`
		ETag     string `json:"guard_etag"`
		LockWait any    `json:"guard_lock_wait"`
	}
	var entries []entry
	for range 100 {
		raw, _ := os.ReadFile(logFile)
		entries = entries[:0]
		for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			var e entry
			if json.Unmarshal([]byte(line), &e) == nil && e.Request.Method == "PUT" {
				entries = append(entries, e)
			}
		}
		if len(entries) >= 2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(entries) != 2 {
		t.Fatalf("access log has %d PUT entries", len(entries))
	}
	allowed, stale := entries[0], entries[1]
	if allowed.Status != 200 || allowed.Outcome != "allowed" || allowed.Key != "*/doc" || allowed.ETag != tag || allowed.LockWait == nil {
		t.Errorf("allowed write logged as %+v", allowed)
	}
	if stale.Request.URI != "/doc" || stale.Status != 412 || stale.Outcome != "stale" || stale.Key != "*/doc" || stale.ETag == "" || stale.ETag == tag {
		t.Errorf("stale write logged as %+v", stale)
	}
}

// TestAdminResource looks a resource up through Caddy's admin endpoint and
// makes the guard forget it.
func TestAdminResource(t *testing.T) {
	var heads sync.Map
	store := newStore(map[string]string{"/doc": "v1"})
	counting := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			n, _ := heads.LoadOrStore(r.URL.Path, new(int))
			*(n.(*int))++
		}
		store.ServeHTTP(w, r)
	})
	startCaddy(t, fmtSite(`
	write_guard
	reverse_proxy %s`, startBackend(t, counting)))
	client := &http.Client{Timeout: 30 * time.Second}
	tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
	put := do(t, client, "PUT", "/doc", "v2", "If-Match: "+tag)
	newTag := put.header.Get("ETag")

	type state struct {
		Key    string `json:"key"`
		Caches []struct {
			Known      bool     `json:"known"`
			Exists     bool     `json:"exists"`
			ETag       string   `json:"etag"`
			Superseded []string `json:"superseded"`
		} `json:"caches"`
	}
	lookup := func() state {
		resp, err := http.Get("http://localhost:2999/write_guard/resource?key=*/doc")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s state
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || resp.StatusCode != 200 {
			t.Fatalf("lookup: %d %v", resp.StatusCode, err)
		}
		return s
	}
	var s state
	for range 100 { // ristretto applies the store of a new key asynchronously
		if s = lookup(); len(s.Caches) == 1 && s.Caches[0].Known {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(s.Caches) != 1 || !s.Caches[0].Known || !s.Caches[0].Exists || s.Caches[0].ETag != newTag {
		t.Fatalf("lookup after the write: %+v, want the version %s", s, newTag)
	}
	if got := s.Caches[0].Superseded; len(got) != 1 || got[0] != tag {
		t.Errorf("superseded %q, want the version the write replaced, %s", got, tag)
	}
	// A write naming the replaced version is refused without asking.
	headsNow := func() int {
		if n, ok := heads.Load("/doc"); ok {
			return *(n.(*int))
		}
		return 0
	}
	before := headsNow()
	if r := do(t, client, "PUT", "/doc", "lost", "If-Match: "+tag); r.status != http.StatusPreconditionFailed {
		t.Fatalf("write naming the replaced version: %d", r.status)
	}
	if headsNow() != before {
		t.Error("a write naming a replaced version was checked with the upstream")
	}

	req, _ := http.NewRequest(http.MethodDelete, "http://localhost:2999/write_guard/resource?key=*/doc", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	if s := lookup(); s.Caches[0].Known {
		t.Errorf("still known after DELETE: %+v", s)
	}
	// Forgotten, the next write asks the upstream.
	before = headsNow()
	if r := do(t, client, "PUT", "/doc", "v3", "If-Match: "+newTag); r.status != 200 {
		t.Fatalf("write after forgetting: %d", r.status)
	}
	if n, _ := heads.Load("/doc"); n == nil || *(n.(*int)) != before+1 {
		t.Error("the write after DELETE did not ask the upstream")
	}

	if resp, err := http.Get("http://localhost:2999/write_guard/resource"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("lookup without key: %d", resp.StatusCode)
		}
	}
}
