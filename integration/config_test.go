package integration

import (
	"net"
	"testing"
)

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
