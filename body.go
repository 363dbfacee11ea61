package writeguard

import (
	"bytes"
	"io"
	"net/http"
	"os"
)

// DefaultMaxBodyMemory is how much of a guarded write's body is held in
// memory by default; the rest goes to a temporary file.
const DefaultMaxBodyMemory = 1 << 20

// spoolError reports that a body could not be written to its temporary
// file: the server's fault, not the client's.
type spoolError struct{ err error }

func (e *spoolError) Error() string { return "spooling request body: " + e.err.Error() }
func (e *spoolError) Unwrap() error { return e.err }

// bufferBody reads r's whole body, at most MaxBody bytes, and replaces it
// with a copy that can be sent to the upstream at its own pace (and again,
// through GetBody, when Go's transport retries a request on a connection
// that turned out to be dead). Up to MaxBodyMemory bytes
// stay in memory; a larger body is spooled to a temporary file. discard,
// never nil, removes that file: call it when the request is done.
//
// A request read to its end no longer expects anything: see
// dropExpectation.
//
// A body held in memory is read through mem, which the caller owns (a part
// of the write): the body costs the allocation of its bytes and of GetBody.
func (h *Handler) bufferBody(r *http.Request, mem *bufferedBody) (discard func(), err error) {
	defer func() {
		if err == nil {
			dropExpectation(r)
		}
	}()
	discard = func() {}
	switch r.Body.(type) {
	case nil, *bufferedBody, spooledBody:
		// Nothing to read, or read already (by the idempotency step).
		return discard, nil
	}
	if r.Body == http.NoBody {
		return discard, nil
	}
	if r.ContentLength > h.MaxBody {
		return discard, &http.MaxBytesError{Limit: h.MaxBody}
	}
	defer r.Body.Close()
	inMemory := min(h.MaxBodyMemory, h.MaxBody)
	if r.ContentLength >= 0 && r.ContentLength <= inMemory {
		// The common case, read straight into a slice of the announced
		// size: bytes.Buffer would grow it to 512 bytes at least.
		body := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return discard, err
		}
		mem.hold(r, body)
		return discard, nil
	}
	size := r.ContentLength
	if size < 0 || size > inMemory {
		size = min(inMemory, 64<<10)
	}
	buf := bytes.NewBuffer(make([]byte, 0, size+1))
	n, err := buf.ReadFrom(io.LimitReader(r.Body, inMemory+1))
	if err != nil {
		return discard, err
	}
	if n <= inMemory {
		mem.hold(r, buf.Bytes())
		r.ContentLength = n
		return discard, nil
	}

	f, err := os.CreateTemp("", "write_guard-body-*")
	if err != nil {
		return discard, &spoolError{err}
	}
	remove := func() {
		f.Close()
		os.Remove(f.Name())
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		remove()
		return discard, &spoolError{err}
	}
	m, err := io.Copy(spoolWriter{f}, io.LimitReader(r.Body, h.MaxBody+1-n))
	if err != nil {
		remove()
		return discard, err
	}
	total := n + m
	if total > h.MaxBody {
		remove()
		return discard, &http.MaxBytesError{Limit: h.MaxBody}
	}
	// Each reader has its own offset, so a retry's copy does not disturb
	// what an earlier attempt may still be reading.
	r.Body = spooledBody{io.NewSectionReader(f, 0, total)}
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(io.NewSectionReader(f, 0, total)), nil }
	r.ContentLength = total
	return remove, nil
}

// bufferedBody is a request body held in memory, read from its start by the
// upstream, and again by GetBody's readers when Go's transport retries.
type bufferedBody struct {
	bytes.Reader
	data []byte
}

// hold makes data r's body.
func (b *bufferedBody) hold(r *http.Request, data []byte) {
	b.data = data
	b.Reset(data)
	r.Body = b
	r.GetBody = b.reread
}

func (b *bufferedBody) Close() error { return nil }

func (b *bufferedBody) reread() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(b.data)), nil
}

// spooledBody is a request body held in a temporary file.
type spooledBody struct{ *io.SectionReader }

func (spooledBody) Close() error { return nil }

// dropExpectation removes Expect from a request whose body is in hand.
// Reading the body made Caddy's server answer the client's Expect:
// 100-continue; forwarded, the expectation makes the upstream answer 100
// Continue as well, and reverse_proxy passes that on: the client would get
// a second 100 for a body it has sent already. net/http's server answers
// any other expectation with 417 before a handler runs. The header map is
// copied, so that what the request arrived with still shows in logs.
func dropExpectation(r *http.Request) {
	if _, ok := r.Header["Expect"]; !ok {
		return
	}
	r.Header = r.Header.Clone()
	delete(r.Header, "Expect")
}

// spoolWriter marks the errors of writing the temporary file as such, so
// that they are not taken for the client's.
type spoolWriter struct{ f *os.File }

func (w spoolWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		err = &spoolError{err}
	}
	return n, err
}
