package integration

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestExpectContinueAnsweredOnce sends guarded writes with Expect:
// 100-continue and waits for the 100 before sending the body, as curl
// does for large uploads. The guard reads the body before it takes the
// lock, which makes Caddy answer 100 Continue; the upstream, a net/http
// server, answers 100 Continue too when it reads a body it was told to
// expect. The client asked once and must see one 100, then the write's
// answer.
func TestExpectContinueAnsweredOnce(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	startCaddy(t, fmtSite(`
	write_guard {
		max_body_memory 1KiB
	}
	reverse_proxy %s`, startBackend(t, store)))
	client := &http.Client{Timeout: 30 * time.Second}

	for _, c := range []struct {
		name string
		body string
		// chunked sends the body without Content-Length.
		chunked bool
	}{
		{name: "in memory", body: "v2"},
		{name: "spooled to a file", body: strings.Repeat("v3", 4<<10)},
		{name: "chunked", body: "v4", chunked: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
			conn := dialCaddy(t)
			framing := "Content-Length: " + strconv.Itoa(len(c.body))
			body := c.body
			if c.chunked {
				framing = "Transfer-Encoding: chunked"
				body = strconv.FormatInt(int64(len(c.body)), 16) + "\r\n" + c.body + "\r\n0\r\n\r\n"
			}
			conn.send("PUT /doc HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nIf-Match: " + tag +
				"\r\nExpect: 100-continue\r\n" + framing + "\r\n\r\n")
			if r := conn.readResponse(false); r.status != http.StatusContinue {
				t.Fatalf("answer before the body: %v, want 100 Continue", r)
			}
			conn.send(body)
			continues := 1
			var final rawResponse
			for range 10 {
				if final = conn.readResponse(false); final.status != http.StatusContinue {
					break
				}
				continues++
			}
			if final.status != http.StatusOK {
				t.Fatalf("the write's answer: %v", final)
			}
			if continues != 1 {
				t.Errorf("%d interim 100 Continue answers to one Expect: 100-continue, want 1", continues)
			}
			if got := mustBody(t, store, "/doc"); got != c.body {
				t.Errorf("backend holds %d bytes, not the %d sent", len(got), len(c.body))
			}
		})
	}
}
