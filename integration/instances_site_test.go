package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// Two instances on different ports serving one site with the default key,
// through store redis: both name each resource alike, so their writes are
// serialized with each other.
func TestInstancesOnOtherPortsShareDefaultKeys(t *testing.T) {
	srv := redistest.Start(t)
	resources := []string{"/n/1", "/n/2", "/n/3"}
	docs := map[string]string{}
	for _, r := range resources {
		docs[r] = ""
	}
	store := newStore(docs)
	store.WriteDelay = 2 * time.Millisecond
	upstream := startBackend(t, store)
	site := fmt.Sprintf("\twrite_guard {\n%s\n\t}\n\treverse_proxy %s\n", redisOpts(srv, ""), upstream)
	a, b := startInstance(t, site), startInstance(t, site)
	wl := &workload{
		bases:     []string{a.base, b.base},
		resources: resources,
		clients:   12,
		perClient: 12,
		deadline:  time.Now().Add(60 * time.Second),
	}
	wl.run(t)
	wl.requireNoneLost(t, store, "two instances on two ports, default key, store redis")
}
