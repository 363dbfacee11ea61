package integration

import (
	"strings"
	"sync"
	"testing"
	"time"
)

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
