package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rawConn is an HTTP/1.1 connection to the in-process Caddy that shows what
// net/http's client would tidy away: every interim answer, and header and
// trailer fields repeated as they came.
type rawConn struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

// rawResponse is one answer as read off the wire.
type rawResponse struct {
	status  int
	header  textproto.MIMEHeader
	body    string
	trailer textproto.MIMEHeader
}

func dialCaddy(t testing.TB) *rawConn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(caddyBase, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// A bound on the whole exchange, so that a broken answer fails the
	// test instead of hanging it.
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawConn{t: t, conn: conn, br: bufio.NewReader(conn)}
}

func (c *rawConn) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatal(err)
	}
}

// readResponse reads one answer, interim or final. The body of a final
// answer is read by its framing (chunked with trailers, Content-Length, or
// to the end of the connection); a HEAD's or a 1xx/204/304 has none.
func (c *rawConn) readResponse(head bool) rawResponse {
	c.t.Helper()
	tp := textproto.NewReader(c.br)
	line, err := tp.ReadLine()
	if err != nil {
		c.t.Fatalf("reading a status line: %v", err)
	}
	proto, rest, _ := strings.Cut(line, " ")
	code, _, _ := strings.Cut(rest, " ")
	status, err := strconv.Atoi(code)
	if !strings.HasPrefix(proto, "HTTP/1.") || err != nil {
		c.t.Fatalf("malformed status line %q", line)
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		c.t.Fatalf("reading the header of a %d: %v", status, err)
	}
	r := rawResponse{status: status, header: hdr}
	if head || status < 200 || status == 204 || status == 304 {
		return r
	}
	var body []byte
	switch {
	case strings.EqualFold(hdr.Get("Transfer-Encoding"), "chunked"):
		body, err = io.ReadAll(httputil.NewChunkedReader(c.br))
		if err == nil {
			// The chunked reader stops after the last chunk; the trailer
			// section follows it.
			r.trailer, err = tp.ReadMIMEHeader()
		}
	case hdr.Get("Content-Length") != "":
		n, _ := strconv.Atoi(hdr.Get("Content-Length"))
		body = make([]byte, n)
		_, err = io.ReadFull(c.br, body)
	default:
		body, err = io.ReadAll(c.br)
	}
	if err != nil {
		c.t.Fatalf("reading the body of a %d: %v", status, err)
	}
	r.body = string(body)
	return r
}

// fieldTokens lists the comma-separated elements of every line of a list
// field, such as Trailer, as they came.
func fieldTokens(hdr textproto.MIMEHeader, field string) []string {
	var tokens []string
	for _, line := range hdr.Values(field) {
		for _, tok := range strings.Split(line, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				tokens = append(tokens, tok)
			}
		}
	}
	return tokens
}

func countFold(list []string, s string) int {
	n := 0
	for _, v := range list {
		if strings.EqualFold(v, s) {
			n++
		}
	}
	return n
}

func (r rawResponse) String() string {
	body := r.body
	if len(body) > 80 {
		body = body[:80] + "..."
	}
	return fmt.Sprintf("%d header %v trailer %v body %q", r.status, r.header, r.trailer, body)
}
