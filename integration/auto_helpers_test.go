package integration

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// Names the tests look for in metrics and logs.
const (
	metricHashed   = "caddy_write_guard_hashed_responses_total"
	metricSwitches = "caddy_write_guard_etags_switches_total"
	logSwitched    = "upstream entity-tags do not name versions"
)

// etagSource is one entry of etag_sources in GET /write_guard/stats: a
// site whose versions the guard now tags itself.
type etagSource struct {
	Site   string `json:"site"`
	Source string `json:"source"`
	Key    string `json:"key"`
	ETag   string `json:"etag"`
	Since  string `json:"since"`
}

// etagSourcesAt reads etag_sources from the admin endpoint admin. A stats
// answer without the field fails the test: a missing field and an empty
// list are not the same claim.
func etagSourcesAt(t *testing.T, admin string) []etagSource {
	t.Helper()
	resp, err := http.Get(admin + "/write_guard/stats")
	if err != nil {
		t.Fatalf("admin stats: %v", err)
	}
	defer resp.Body.Close()
	var s struct {
		Sources *[]etagSource `json:"etag_sources"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("admin stats: %d %v", resp.StatusCode, err)
	}
	if s.Sources == nil {
		t.Fatalf("admin stats of %s have no etag_sources", admin)
	}
	return *s.Sources
}

// sourceOf returns the etag_sources entry of site, if there is one.
func sourceOf(sources []etagSource, site string) (etagSource, bool) {
	for _, s := range sources {
		if s.Site == site {
			return s, true
		}
	}
	return etagSource{}, false
}

// counterSum adds up every sample of the counter name, whatever its
// labels; ok is false when Caddy does not export it at all.
func counterSum(samples map[string]float64, name string) (sum float64, ok bool) {
	for sample, v := range samples {
		if sample == name || strings.HasPrefix(sample, name+"{") {
			sum += v
			ok = true
		}
	}
	return sum, ok
}

// counterMoved is how far the counter name moved between two scrapes. A
// counter Caddy does not export fails the test.
func counterMoved(t *testing.T, before, after map[string]float64, name string) float64 {
	t.Helper()
	b, _ := counterSum(before, name)
	a, ok := counterSum(after, name)
	if !ok {
		t.Fatalf("Caddy's metrics have no %s", name)
	}
	return a - b
}

// startLoggedSites is startSites with Caddy's log written as JSON, from
// Warn up, to the file it returns, so that the test can read what the
// guard logged. Reloads pass the file to loggedConfig.
func startLoggedSites(t *testing.T, sites string) (*caddytest.Tester, string) {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	t.Cleanup(func() {
		if t.Skipped() {
			t.Error("Caddy could not be started for this test (is something else on localhost:2999 or :9080?)")
			return
		}
		unloadSites(t)
	})
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{TestRequestTimeout: 30 * time.Second})
	tester.InitServer(loggedConfig(logFile, sites), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	return tester, logFile
}

// loggedConfig is a whole config of startLoggedSites.
func loggedConfig(logFile, sites string) string {
	return strings.Replace(globalOptions, "grace_period 1ns", "grace_period 1ns\n\tlog {\n\t\toutput file "+logFile+"\n\t\tformat json\n\t\tlevel WARN\n\t}", 1) + sites
}

// loggedLines returns the lines of the log file that contain snippet.
func loggedLines(t *testing.T, logFile, snippet string) []string {
	t.Helper()
	b, err := os.ReadFile(logFile)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, snippet) {
			lines = append(lines, l)
		}
	}
	return lines
}

// countersAt is a store of counters at 0 in the given style, each write
// taking a little time so that concurrent writers overlap.
func countersAt(style backend.ETagStyle, resources []string) *backend.Store {
	store := backend.New()
	store.ETags = style
	store.WriteDelay = 2 * time.Millisecond
	for _, r := range resources {
		store.Put(r, []byte(counterBody(0)))
	}
	return store
}
