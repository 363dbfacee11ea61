package integration

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

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
