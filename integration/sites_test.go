package integration

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// Two catch-all sites on two ports, each in front of a backend of its own
// without ETags, where the guard's tags are digests of the content: the
// same content in both backends has the same tag. A write through one
// site must never be decided on the version of the other site's backend.
func TestCatchAllSitesOnTwoPortsKeepTheirVersionsApart(t *testing.T) {
	one, two := backend.New(), backend.New()
	one.ETags, two.ETags = backend.NoETags, backend.NoETags
	one.Put("/doc", []byte(`{"n":0}`))
	two.Put("/doc", []byte(`{"n":0}`))
	oneAddr, twoAddr := startBackend(t, one), startBackend(t, two)

	// The workload on the second backend: X reads n=1, Y writes n=2, and
	// X, on its read of n=1, writes n=2. In between, the first site's
	// backend is written to n=1.
	workload := func(twoBase, oneBase string, guarded bool) {
		t.Helper()
		tag := send(t, "GET", twoBase+"/doc", "").header.Get("Etag")
		if guarded {
			waitLearned(t, "*/doc")
		}
		x := send(t, "PUT", twoBase+"/doc", `{"n":1}`, "If-Match: "+tag).header.Get("Etag")
		if r := send(t, "PUT", twoBase+"/doc", `{"n":2}`, "If-Match: "+x); r.status/100 != 2 {
			t.Fatalf("Y's write: %d %s", r.status, r.body)
		}
		u := send(t, "GET", oneBase+"/doc", "").header.Get("Etag")
		if r := send(t, "PUT", oneBase+"/doc", `{"n":1}`, "If-Match: "+u); r.status/100 != 2 {
			t.Fatalf("write to the first site: %d %s", r.status, r.body)
		}
		r := send(t, "PUT", twoBase+"/doc", `{"n":2}`, "If-Match: "+x)
		if guarded && r.status != 412 {
			t.Errorf("X's write naming n=1 after Y wrote n=2: %d, want 412", r.status)
		}
	}

	t.Run("control", func(t *testing.T) {
		ctl := backend.New()
		ctl.ETags = backend.NoETags
		ctl.Put("/doc", []byte(`{"n":0}`))
		other := backend.New()
		other.ETags = backend.NoETags
		other.Put("/doc", []byte(`{"n":0}`))
		workload("http://"+startBackend(t, ctl), "http://"+startBackend(t, other), false)
		if got := string(must(ctl.Get("/doc"))); got != `{"n":2}` {
			t.Fatalf("without the guard the backend holds %s after three increments: the workload loses no update", got)
		}
		if ctl.Writes() != 3 {
			t.Fatalf("%d writes reached the backend, want 3", ctl.Writes())
		}
	})

	t.Run("guard", func(t *testing.T) {
		t.Cleanup(func() { unloadSites(t) })
		tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{TestRequestTimeout: 30 * time.Second})
		tester.InitServer(globalOptions+
			":9080 {\n\twrite_guard\n\treverse_proxy "+oneAddr+"\n}\n"+
			":9081 {\n\twrite_guard\n\treverse_proxy "+twoAddr+"\n}\n", "caddyfile")
		if t.Failed() {
			t.FailNow()
		}
		writes := two.Writes()
		workload("http://localhost:9081", "http://localhost:9080", true)
		if two.Writes()-writes != 2 {
			t.Errorf("%d writes reached the second backend, want 2 (n=1, n=2): an acknowledged update was overwritten", two.Writes()-writes)
		}
	})
}

func must(b []byte, ok bool) []byte {
	if !ok {
		return nil
	}
	return b
}
