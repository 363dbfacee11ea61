package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

var update = flag.Bool("update", false, "rewrite golden JSON files from the current adapter output")

// TestCaddyfileAdapt checks the Caddyfile-to-JSON translation against the
// golden files in caddyfile_adapt/, in the format of Caddy's own tests: the
// Caddyfile, a line of dashes, the expected JSON.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt tests found: %v", err)
	}
	split := regexp.MustCompile(`(?m)^-{5,}\s*$`)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			parts := split.Split(string(raw), 2)
			if len(parts) != 2 {
				t.Fatalf("%s: no line of dashes between Caddyfile and JSON", f)
			}
			input, want := strings.TrimSpace(parts[0])+"\n", strings.TrimSpace(parts[1])
			if *update {
				os.WriteFile(f, []byte(input+"----------\n"+adapt(t, input)+"\n"), 0o644)
				return
			}
			caddytest.AssertAdapt(t, input, "caddyfile", want)
		})
	}
}

func adapt(t *testing.T, caddyfile string) string {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("adapt warning: %s:%d: %s", w.File, w.Line, w.Message)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestExamples adapts every Caddyfile in examples/, compares it with the JSON
// beside it, and validates the result as Caddy would before running it.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../examples/Caddyfile*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, ".json") {
			continue
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			got := adapt(t, string(raw))
			golden := f + ".json"
			if *update {
				os.WriteFile(golden, []byte(got+"\n"), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("every example needs its JSON beside it: %v", err)
			}
			if strings.TrimSpace(string(want)) != got {
				t.Errorf("%s adapts to something other than %s:\n%s", f, golden, got)
			}
			var cfg caddy.Config
			if err := json.Unmarshal([]byte(got), &cfg); err != nil {
				t.Fatal(err)
			}
			if err := caddy.Validate(&cfg); err != nil {
				t.Errorf("%s does not validate: %v", f, err)
			}
			if !strings.Contains(got, `"handler": "write_guard"`) {
				t.Errorf("%s does not use write_guard", f)
			}
		})
	}
}

// TestJSONConfig runs the handler from Caddy's native JSON, and checks that
// an unreachable upstream makes the version check fail closed.
func TestJSONConfig(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	addr := startBackend(t, store)

	// A port that was just free: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()

	tester := startCaddy(t, "respond 404") // start the in-process Caddy
	tester.InitServer(`{
		"admin": {"listen": "localhost:2999"},
		"apps": {"http": {"http_port": 9080, "grace_period": 1, "servers": {"srv0": {
			"listen": [":9080"],
			"routes": [
				{"match": [{"path": ["/dead/*"]}], "handle": [
					{"handler": "write_guard"},
					{"handler": "reverse_proxy", "upstreams": [{"dial": "`+dead+`"}]}
				], "terminal": true},
				{"handle": [
					{"handler": "write_guard", "blind": "409", "lock_timeout": "5s", "cache_size": 1000},
					{"handler": "reverse_proxy", "upstreams": [{"dial": "`+addr+`"}]}
				]}
			]
		}}}}
	}`, "json")
	c := tester.Client

	if r := do(t, c, "PUT", "/doc", "v2"); r.status != 409 {
		t.Fatalf("blind write with blind=409: %d", r.status)
	}
	tag := do(t, c, "GET", "/doc", "").header.Get("ETag")
	if r := do(t, c, "PUT", "/doc", "v2", "If-Match: "+tag); r.status != 200 || mustBody(t, store, "/doc") != "v2" {
		t.Fatalf("conditional write: %d", r.status)
	}
	r := do(t, c, "PUT", "/dead/doc", "x", `If-Match: "a"`)
	if r.status != 502 {
		t.Fatalf("unreachable upstream: %d %s", r.status, r.body)
	}
	problemOf(t, r)
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

// adminResourceView is the JSON the resource endpoint answers with.
type adminResourceView struct {
	Key    string   `json:"key"`
	Error  string   `json:"error"`
	Tried  []string `json:"tried"`
	Caches []struct {
		Key   string `json:"key"`
		Known bool   `json:"known"`
	} `json:"caches"`
	Stores []struct {
		Key   string `json:"key"`
		Known bool   `json:"known"`
	} `json:"stores"`
}

// adminResource calls the in-process Caddy's resource endpoint with key as
// an operator would type it.
func adminResource(t *testing.T, method, key string) (int, adminResourceView) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://localhost:2999/write_guard/resource?key="+url.QueryEscape(key), nil)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var v adminResourceView
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, key, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode, v
}

// TestAdminForgetsAnySpelling makes the guard of a real Caddy forget
// resources named in spellings that its requests could use but its keys
// do not: DELETE answers 204 only when it forgot something, and 404 with
// the canonical key when nothing was known.
func TestAdminForgetsAnySpelling(t *testing.T) {
	srv := redistest.Start(t)
	for _, c := range []struct {
		name, opts string
		key        string // what the guard builds for GET /items/1 with Host localhost:9080
		given      string
		canonical  string
		redis      bool
	}{
		{
			name:  "host and path",
			opts:  "key {http.request.host}{http.request.uri.path}",
			key:   "localhost/items/1",
			given: "LOCALHOST:9080/items//1/", canonical: "localhost:9080/items/1",
		},
		{
			name:  "host form of a path-only key",
			opts:  "key {http.request.uri.path}",
			key:   "/items/1",
			given: "localhost/items/1/", canonical: "localhost/items/1",
		},
		{
			name:  "store redis",
			opts:  "key {http.request.uri.path}\n\t\tstore redis " + srv.Addr,
			key:   "/items/1",
			given: "/items/./1", canonical: "/items/1",
			redis: true,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			store := newStore(map[string]string{"/items/1": "v1"})
			startCaddy(t, fmtSite(`
	write_guard {
		%s
	}
	reverse_proxy %s`, c.opts, startBackend(t, store)))
			client := &http.Client{Timeout: 30 * time.Second}
			tag := do(t, client, "GET", "/items/1", "").header.Get("ETag")
			if c.redis {
				// A write leaves its version in Redis.
				if r := do(t, client, "PUT", "/items/1", "v2", "If-Match: "+tag); r.status != http.StatusOK {
					t.Fatalf("PUT: %d %s", r.status, r.body)
				}
			}
			waitLearned(t, c.key)

			status, v := adminResource(t, http.MethodGet, c.given)
			if status != http.StatusOK || v.Key != c.canonical || len(v.Caches) != 1 || !v.Caches[0].Known || v.Caches[0].Key != c.key {
				t.Fatalf("GET %s: %d %+v, want the canonical key %s and the version found under %s", c.given, status, v, c.canonical, c.key)
			}
			if c.redis && (len(v.Stores) != 1 || !v.Stores[0].Known || v.Stores[0].Key != c.key) {
				t.Fatalf("GET %s: Redis %+v, want the version found under %s", c.given, v.Stores, c.key)
			}

			if status, v := adminResource(t, http.MethodDelete, c.given); status != http.StatusNoContent {
				t.Fatalf("DELETE %s: %d %+v", c.given, status, v)
			}
			status, v = adminResource(t, http.MethodGet, c.key)
			if status != http.StatusOK || len(v.Caches) != 1 || v.Caches[0].Known || c.redis && (len(v.Stores) != 1 || v.Stores[0].Known) {
				t.Errorf("after DELETE %s: %d %+v, want %s unknown", c.given, status, v, c.key)
			}

			status, v = adminResource(t, http.MethodDelete, c.given)
			if status != http.StatusNotFound || v.Key != c.canonical || v.Error == "" || !slices.Contains(v.Tried, c.key) {
				t.Errorf("second DELETE %s: %d %+v, want 404 naming %s", c.given, status, v, c.canonical)
			}
		})
	}
}

// A site's resources are found by the admin API under any of the site's
// names, with or without the port, as an operator copies them from a URL
// or from the README's examples; DELETE then forgets them.
func TestAdminFindsResourcesUnderAnyOfTheSiteNames(t *testing.T) {
	for _, given := range []string{
		"www.example.com:9080/items/1", // the URL a client used
		"www.example.com/items/1",
		"example.com/items/1", // the README's spelling: the host without its port
	} {
		t.Run(given, func(t *testing.T) {
			store := newStore(map[string]string{"/items/1": `{"v":1}`})
			startSites(t, fmtSite("http://example.com:9080, http://www.example.com:9080 {\n\twrite_guard\n\treverse_proxy %s\n}\n", startBackend(t, store)))
			activate(t, entrance{caddyBase, "www.example.com:9080"})
			at(t, caddyBase, "www.example.com:9080", http.MethodGet, "/items/1", "")
			waitLearned(t, "example.com:9080/items/1")

			if status, view := adminResource(t, http.MethodGet, given); status != http.StatusOK || len(view.Caches) != 1 || !view.Caches[0].Known {
				t.Errorf("GET %s: %d %+v, want the cached version", given, status, view)
			}
			if status, view := adminResource(t, http.MethodDelete, given); status != http.StatusNoContent {
				t.Errorf("DELETE %s: %d %+v, want 204", given, status, view)
			}
		})
	}
}

// scrape reads the Prometheus text exposition at Caddy's /metrics and
// returns the write_guard samples by name and labels.
func scrape(t *testing.T) map[string]float64 {
	t.Helper()
	return scrapeSite(t, "")
}

// scrapeSite is scrape of the /metrics of the site host ("" for the
// catch-all one).
func scrapeSite(t *testing.T, host string) map[string]float64 {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, caddyBase+"/metrics", nil)
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
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

// TestReloadDuringWrites reloads the configuration (with cache settings
// that give the new configuration a cache of its own) while writers are
// busy: the old and new configurations must share one lock manager and must
// not trust each other's stale versions.
func TestReloadDuringWrites(t *testing.T) {
	resources := []string{"/reload/a", "/reload/b"}
	store := hotStore(resources)
	store.WriteDelay = 20 * time.Millisecond
	addr := startBackend(t, store)
	config := func(ttl string) string {
		return strings.Replace(globalOptions, "grace_period 1ns", "grace_period 10s", 1) +
			fmtSite(":9080 {\n\twrite_guard {\n\t\tcache_ttl %s\n\t}\n\treverse_proxy %s\n}\n", ttl, addr)
	}
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	tester.InitServer(config("5m"), "caddyfile")

	wl := &workload{
		base: caddyBase, resources: resources,
		clients: 6, perClient: 15, think: time.Millisecond,
		deadline: time.Now().Add(60 * time.Second),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wl.run(t)
	}()
	for _, ttl := range []string{"6m", "7m", "8m"} {
		time.Sleep(300 * time.Millisecond)
		tester.InitServer(config(ttl), "caddyfile")
	}
	<-done

	lost, acked := wl.lost(t, store)
	t.Logf("%d acknowledged writes across 3 reloads, %d lost, %d refused, %d errors", acked, lost, wl.refused.Load(), wl.errors.Load())
	if lost != 0 {
		t.Errorf("%d acknowledged writes lost across reloads", lost)
	}
	if n := store.Overlaps(); n != 0 {
		t.Errorf("%d writes to one resource overlapped at the backend during reloads", n)
	}
	if acked == 0 {
		t.Error("no write was acknowledged")
	}
}

// TestStopDuringWrites stops the server (by loading a config without it)
// while writers are busy: in-flight writes finish within the grace period,
// and none of the acknowledged ones is lost.
func TestStopDuringWrites(t *testing.T) {
	resources := []string{"/stop/a", "/stop/b"}
	store := hotStore(resources)
	store.WriteDelay = 20 * time.Millisecond
	addr := startBackend(t, store)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	tester.InitServer(strings.Replace(globalOptions, "grace_period 1ns", "grace_period 10s", 1)+
		fmtSite(":9080 {\n\twrite_guard\n\treverse_proxy %s\n}\n", addr), "caddyfile")

	wl := &workload{
		base: caddyBase, resources: resources,
		clients: 6, perClient: 1000, think: time.Millisecond,
		deadline: time.Now().Add(2 * time.Second),
	}
	var done sync.WaitGroup
	done.Go(func() { wl.run(t) })
	time.Sleep(500 * time.Millisecond)
	tester.InitServer(strings.Replace(globalOptions, "grace_period 1ns", "grace_period 10s", 1)+":9081 {\n\trespond 404\n}\n", "caddyfile")
	done.Wait()

	lost, acked := wl.lost(t, store)
	t.Logf("%d writes acknowledged before and during the stop, %d lost, %d refused, %d failed", acked, lost, wl.refused.Load(), wl.errors.Load())
	if lost != 0 {
		t.Errorf("%d acknowledged writes lost", lost)
	}
	if acked == 0 {
		t.Error("no write was acknowledged before the stop")
	}
	if n := store.Overlaps(); n != 0 {
		t.Errorf("%d writes overlapped at the backend", n)
	}
}

// A reload that changes neither how resources are named nor which routes
// reach the guard keeps what the cache learned; one that changes a module's
// setting only (a response header's value) too.
func TestReloadThatChangesNothingKeepsTheCache(t *testing.T) {
	store := newStore(map[string]string{"/items/1": `{"v":1}`})
	addr := startBackend(t, store)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	config := func(value string) string {
		return globalOptions + fmtSite(":9080 {\n\theader X-Site %s\n\twrite_guard\n\treverse_proxy %s\n}\n", value, addr)
	}
	tester.InitServer(config("one"), "caddyfile")
	client := &http.Client{}
	do(t, client, http.MethodGet, "/items/1", "")
	waitLearned(t, "*/items/1")
	for _, value := range []string{"one", "two"} {
		tester.InitServer(config(value), "caddyfile")
		do(t, client, http.MethodGet, "/other", "") // the new configuration serves
		resp, err := http.Get("http://localhost:2999/write_guard/resource?key=*/items/1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), `"known":true`) {
			t.Fatalf("after a reload with header value %q the cache forgot /items/1: %s", value, body)
		}
	}
}

// A reload that changes the key and a reload that changes it back must not
// bring back the versions cached under the first key: writes made under the
// second key never updated them.
func TestKeyChangedAndBackRevivesNoVersion(t *testing.T) {
	store := newStore(map[string]string{"/items/1": `{"v":1}`})
	addr := startBackend(t, store)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	client := &http.Client{}

	tester.InitServer(keyedConfig(addr, pathKey, "1ns"), "caddyfile")
	v1 := do(t, client, http.MethodGet, "/items/1", "").header.Get("Etag")
	waitLearned(t, "/items/1")

	tester.InitServer(keyedConfig(addr, "", "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPut, "/items/1", `{"v":"b"}`, "If-Match: "+v1); r.status != http.StatusOK {
		t.Fatalf("write under the second key: %d %s", r.status, r.body)
	}

	tester.InitServer(keyedConfig(addr, pathKey, "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPut, "/items/1", `{"v":"stale"}`, "If-Match: "+v1); r.status != http.StatusPreconditionFailed {
		t.Fatalf("stale write after the key came back: %d %s, want 412", r.status, r.body)
	}
	if got := mustBody(t, store, "/items/1"); got != `{"v":"b"}` {
		t.Fatalf("backend holds %s: the change made under the second key was lost", got)
	}
}

// A configuration that served no guarded write (only reads, and a POST
// the guard forgets versions after) between two that key alike must not
// let the third trust what the first cached: the POST forgot the
// resource under the second's key only.
func TestKeyChangedAndBackWithOnlyAPostBetween(t *testing.T) {
	store := newStore(map[string]string{"/items/1": `{"v":1}`})
	addr := startBackend(t, store)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	client := &http.Client{}

	tester.InitServer(keyedConfig(addr, pathKey, "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPut, "/warm-up", "x", "If-None-Match: *"); r.status != http.StatusCreated {
		t.Fatalf("warm-up write: %d %s", r.status, r.body)
	}
	v1 := do(t, client, http.MethodGet, "/items/1", "").header.Get("Etag")
	waitLearned(t, "/items/1")

	tester.InitServer(keyedConfig(addr, "", "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPost, "/items/1", `{"v":"post"}`); r.status != http.StatusOK {
		t.Fatalf("POST under the second key: %d %s", r.status, r.body)
	}

	tester.InitServer(keyedConfig(addr, pathKey, "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPut, "/items/1", `{"v":"stale"}`, "If-Match: "+v1); r.status != http.StatusPreconditionFailed {
		t.Errorf("stale write after the key came back: %d %s, want 412", r.status, r.body)
	}
	if got := mustBody(t, store, "/items/1"); got != `{"v":"post"}` {
		t.Errorf("backend holds %s: the POST's change was lost", got)
	}
}

// With store redis, versions live in Redis under the keys of the
// configuration that wrote them: a reload that changes the key and one
// that changes it back must not revive them either.
func TestKeyChangedAndBackRevivesNoRedisVersion(t *testing.T) {
	srv := redistest.Start(t)
	store := newStore(map[string]string{"/items/1": `{"v":1}`})
	addr := startBackend(t, store)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	client := &http.Client{}
	redis := "\n" + redisOpts(srv, "")

	tester.InitServer(keyedConfig(addr, redis, "1ns"), "caddyfile")
	v1 := do(t, client, http.MethodGet, "/items/1", "").header.Get("Etag")
	r := do(t, client, http.MethodPut, "/items/1", `{"v":2}`, "If-Match: "+v1)
	if r.status != http.StatusOK {
		t.Fatalf("write under the first key: %d %s", r.status, r.body)
	}
	v2 := r.header.Get("Etag")

	tester.InitServer(keyedConfig(addr, pathKey+redis, "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPut, "/items/1", `{"v":"b"}`, "If-Match: "+v2); r.status != http.StatusOK {
		t.Fatalf("write under the second key: %d %s", r.status, r.body)
	}

	tester.InitServer(keyedConfig(addr, redis, "1ns"), "caddyfile")
	if r := do(t, client, http.MethodPut, "/items/1", `{"v":"stale"}`, "If-Match: "+v2); r.status != http.StatusPreconditionFailed {
		t.Errorf("stale write after the key came back: %d %s, want 412", r.status, r.body)
	}
	if got := mustBody(t, store, "/items/1"); got != `{"v":"b"}` {
		t.Errorf("backend holds %s: the change made under the second key was lost", got)
	}
}

// scopedConfig guards only the paths under scope; the rest of the site goes
// to the same backend unguarded.
func scopedConfig(addr, scope string) string {
	return globalOptions +
		fmtSite(":9080 {\n\thandle %s {\n\t\twrite_guard\n\t\treverse_proxy %s\n\t}\n\thandle {\n\t\treverse_proxy %s\n\t}\n}\n", scope, addr, addr)
}

// A reload that stops guarding a path (the guard stays for other paths)
// and one that guards it again: writes made meanwhile did not go through
// the guard, and the version it cached before must not come back, as it
// does not when the guard is removed altogether.
func TestGuardScopeNarrowedAndBackRevivesNoVersion(t *testing.T) {
	store := newStore(map[string]string{"/items/1": `{"v":1}`})
	addr := startBackend(t, store)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	client := &http.Client{}

	tester.InitServer(scopedConfig(addr, "/items/*"), "caddyfile")
	v1 := do(t, client, http.MethodGet, "/items/1", "").header.Get("Etag")
	waitLearned(t, "*/items/1")

	tester.InitServer(scopedConfig(addr, "/other/*"), "caddyfile")
	do(t, client, http.MethodGet, "/other/x", "")
	if r := do(t, client, http.MethodPut, "/items/1", `{"v":"unguarded"}`); r.status != http.StatusOK {
		t.Fatalf("write while /items is not guarded: %d %s", r.status, r.body)
	}

	tester.InitServer(scopedConfig(addr, "/items/*"), "caddyfile")
	r := do(t, client, http.MethodPut, "/items/1", `{"v":"stale"}`, "If-Match: "+v1)
	if got := mustBody(t, store, "/items/1"); r.status != http.StatusPreconditionFailed || got != `{"v":"unguarded"}` {
		t.Fatalf("stale write once /items is guarded again: %d, backend holds %s; want 412 and the change made meanwhile kept", r.status, got)
	}
}

// While the old configuration finishes its writes, the new one writes the
// same resources under other keys: the two must still be serialized, and
// neither may trust versions the other's writes made old.
func TestKeyChangeReloadsDuringWrites(t *testing.T) {
	resources := []string{"/rekey/a", "/rekey/b"}
	store := hotStore(resources)
	// Writes long enough that the old configuration still has some under
	// way when the new one takes its first.
	store.WriteDelay = 100 * time.Millisecond
	addr := startBackend(t, store)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	tester.InitServer(keyedConfig(addr, pathKey, "10s"), "caddyfile")

	wl := &workload{
		base: caddyBase, resources: resources,
		clients: 8, perClient: 12, think: time.Millisecond,
		deadline: time.Now().Add(60 * time.Second),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wl.run(t)
	}()
	caseless := pathKey + "\n\t\tkey_case_insensitive"
	for _, opts := range []string{"", pathKey, caseless, "", caseless, pathKey} {
		time.Sleep(300 * time.Millisecond)
		tester.InitServer(keyedConfig(addr, opts, "10s"), "caddyfile")
	}
	<-done

	wl.requireNoneLost(t, store, "6 reloads that change the key")
}

// holdingStore holds the PUTs that carry X-Hold at the backend until
// release is closed, telling arrived when the first comes in.
type holdingStore struct {
	store   http.Handler
	once    sync.Once
	arrived chan struct{}
	release chan struct{}
}

func newHoldingStore(store http.Handler) *holdingStore {
	return &holdingStore{store: store, arrived: make(chan struct{}), release: make(chan struct{})}
}

func (h *holdingStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut && r.Header.Get("X-Hold") != "" {
		h.once.Do(func() { close(h.arrived) })
		<-h.release
	}
	h.store.ServeHTTP(w, r)
}

// put sends a PUT from a goroutine other than the test's: errors are
// reported as status 0.
func put(url, body string, headers ...string) response {
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Set(name, strings.TrimSpace(value))
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return response{body: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// A write that the old configuration is still receiving when a reload
// changes the key must still be serialized with the new configuration's
// writes of the same resource: the old configuration is stopped at once,
// but its requests under way are not.
func TestWriteStillUploadingAcrossKeyChangeIsSerialized(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v0"})
	hold := newHoldingStore(store)
	addr := startBackend(t, hold)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	tester.InitServer(keyedConfig(addr, pathKey, "10s"), "caddyfile")
	client := &http.Client{}
	if r := do(t, client, http.MethodPut, "/warm-up", "x", "If-None-Match: *"); r.status != http.StatusCreated {
		t.Fatalf("warm-up write: %d %s", r.status, r.body)
	}
	v0 := do(t, client, http.MethodGet, "/doc", "").header.Get("Etag")

	// A client of the old configuration sends half its body.
	slow := dialCaddy(t)
	const body = "from-slow-client"
	slow.send(fmt.Sprintf("PUT /doc HTTP/1.1\r\nHost: localhost:9080\r\nIf-Match: %s\r\nContent-Length: %d\r\n\r\n%s", v0, len(body), body[:5]))

	tester.InitServer(keyedConfig(addr, "", "10s"), "caddyfile")
	time.Sleep(200 * time.Millisecond) // the old configuration's watcher sees it stopped

	// A client of the new configuration writes from the same version; the
	// backend holds its write while the slow client finishes its body.
	fast := make(chan response, 1)
	go func() { fast <- put(caddyBase+"/doc", "from-fast-client", "If-Match: "+v0, "X-Hold: 1") }()
	select {
	case <-hold.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the new configuration's write never reached the backend")
	}
	slow.send(body[5:])
	slowDone := make(chan rawResponse, 1)
	go func() { slowDone <- slow.readResponse(false) }()
	var slowAnswer rawResponse
	select {
	case slowAnswer = <-slowDone:
	case <-time.After(2 * time.Second):
		// Waiting for the write ahead of it, as it should.
	}
	close(hold.release)
	fastAnswer := <-fast
	if slowAnswer.status == 0 {
		slowAnswer = <-slowDone
	}
	if slowAnswer.status/100 == 2 && fastAnswer.status/100 == 2 {
		t.Errorf("both writes from %s acknowledged (old configuration %d, new %d): backend holds %q, the other change is lost",
			v0, slowAnswer.status, fastAnswer.status, mustBody(t, store, "/doc"))
	}
}

// TestReloadReleasesCacheMemory reloads the configuration ten times, each
// time with a cache_size that gives the new configuration a cache of its
// own (a number of entries, then a size, in turn), and reads and writes a
// resource after each reload over a keep-alive connection that stays open.
// What an old configuration leaves behind (its idle upstream connection
// keeps its handler, and so its cache, reachable for minutes) must not
// keep its retired cache's memory or goroutines alive.
func TestReloadReleasesCacheMemory(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	addr := startBackend(t, store)
	config := func(i int) string {
		size := fmtSite("%d", 1_000_000-i)
		if i%2 == 1 {
			size = fmtSite("%dMiB", 64+i)
		}
		return globalOptions + fmtSite(":9080 {\n\twrite_guard {\n\t\tcache_size %s\n\t}\n\treverse_proxy %s\n}\n", size, addr)
	}
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))

	// One client, and so one connection, per configuration, none closed
	// before the test ends.
	var transports []*http.Transport
	t.Cleanup(func() {
		for _, tr := range transports {
			tr.CloseIdleConnections()
		}
	})
	edit := func(i int) {
		tr := &http.Transport{}
		transports = append(transports, tr)
		c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		r := do(t, c, "GET", "/doc", "")
		if r.status != http.StatusOK {
			t.Fatalf("GET /doc: %d %s", r.status, r.body)
		}
		if r := do(t, c, "PUT", "/doc", fmtSite("v%d", i+2), "If-Match: "+r.header.Get("ETag")); r.status != http.StatusOK {
			t.Fatalf("PUT /doc: %d %s", r.status, r.body)
		}
	}

	const reloads = 10
	tester.InitServer(config(0), "caddyfile")
	edit(0)
	// Caches that earlier tests' configurations retired may still be
	// shutting down: their memory is not this test's. Ristretto runs two
	// goroutines per cache, and one cache is in use.
	for i := 0; i < 100 && cacheGoroutines() > 2; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	heap0, caches0 := liveHeap(), cacheGoroutines()
	goroutines0 := runtime.NumGoroutine()
	for i := 1; i <= reloads; i++ {
		tester.InitServer(config(i), "caddyfile")
		edit(i)
	}
	// A retired cache lets requests that were still using it finish
	// before it lets its memory go: wait for that, within a bound far
	// beyond it. Each retired cache used to keep the 56 MiB that its
	// default size of a million entries allocated up front; ten that kept
	// even the 1.2 MiB a cache starts with would exceed the bound.
	const bound = 6 << 20
	var heap uint64
	var caches int
	for range 100 {
		heap, caches = liveHeap(), cacheGoroutines()
		if heap < heap0+bound && caches <= caches0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The other goroutines that remain are mostly Caddy's: each old
	// configuration's reverse_proxy keeps its idle upstream connection
	// (three goroutines, with the backend's end) until its keep-alive
	// timeout, guard or no guard.
	t.Logf("after %d reloads: live heap %.1f MiB (from %.1f), goroutines %d (from %d), of them in the version caches %d (from %d)",
		reloads, float64(heap)/(1<<20), float64(heap0)/(1<<20), runtime.NumGoroutine(), goroutines0, caches, caches0)
	if heap >= heap0+bound {
		t.Errorf("live heap grew by %.1f MiB over %d reloads", (float64(heap)-float64(heap0))/(1<<20), reloads)
	}
	if caches > caches0 {
		t.Errorf("%d goroutines of the version caches run, %d before the reloads", caches, caches0)
	}
	if got := mustBody(t, store, "/doc"); got != fmtSite("v%d", reloads+2) {
		t.Errorf("backend holds %q after the last write", got)
	}
}

// liveHeap is the heap that survives a collection.
func liveHeap() uint64 {
	// Two collections: what only a sync.Pool still held (ristretto's
	// buffers refer to its cache) goes with the second.
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// cacheGoroutines counts the goroutines that run inside ristretto.
func cacheGoroutines() int {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	n := 0
	for _, g := range bytes.Split(buf.Bytes(), []byte("\n\n")) {
		if bytes.Contains(g, []byte("github.com/dgraph-io/ristretto")) {
			n++
		}
	}
	return n
}
