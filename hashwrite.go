package writeguard

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/etagcache"
)

// taggingWriter carries a guarded write's answer with `etags hash`. The
// upstream's answer names no version the guard can use, so after a
// successful write the guard asks for the new representation, still under
// the lock, records its tag and hands it to the client in the answer's
// ETag. The answer is held (up to heldBodyLimit) until reverse_proxy has
// read it: asking sooner would wait for the connection the answer still
// occupies, for ever with `max_conns_per_host 1`.
type taggingWriter struct {
	caddyhttp.ResponseWriterWrapper
	held  *heldWrite
	timer *time.Timer

	holding bool
	status  int
	body    heldBuffer
}

func (tw *taggingWriter) WriteHeader(status int) {
	if tw.holding || tw.held.done {
		if !tw.holding {
			tw.ResponseWriterWrapper.WriteHeader(status)
		}
		return
	}
	if status < 200 {
		if status == http.StatusSwitchingProtocols {
			// The connection becomes a tunnel; what it does to the
			// resource is unknown.
			tw.stopTimer()
			tw.held.finish(0, "", "")
		}
		tw.ResponseWriterWrapper.WriteHeader(status)
		return
	}
	hdr := tw.Header()
	// Neither the upstream's tag nor its ETag trailer names a version the
	// guard vouches for.
	hdr.Del("Etag")
	dropETagTrailer(hdr)
	if tw.tagsAnswer(status, hdr) {
		// write_timeout goes on until the answer has been read: an
		// upstream that stalls in its body must not hold the lock longer.
		tw.holding = true
		tw.status = status
		tw.body = getHeld(contentLength(hdr))
		return
	}
	tw.stopTimer()
	// Failed, a DELETE (recorded as absent), or an answer about another
	// resource (a POST's 201 with the Location of what it created): the
	// version is recorded or forgotten without asking.
	tw.held.finish(status, "", "")
	tw.ResponseWriterWrapper.WriteHeader(status)
}

func (tw *taggingWriter) stopTimer() {
	if tw.timer != nil {
		tw.timer.Stop()
	}
}

// tagsAnswer reports whether the new version of the write's target is
// worth asking for: the write succeeded, left something there, and the
// answer is about the target itself.
func (tw *taggingWriter) tagsAnswer(status int, hdr http.Header) bool {
	if status < 200 || status >= 300 || tw.held.method == http.MethodDelete || tw.held.method == http.MethodPost {
		return false
	}
	loc := hdr.Get("Location")
	if loc == "" {
		return true
	}
	u, err := tw.held.r.URL.Parse(loc)
	return err == nil && (u.Host == "" || u.Host == tw.held.r.Host) && u.EscapedPath() == tw.held.r.URL.EscapedPath()
}

func (tw *taggingWriter) Write(p []byte) (int, error) {
	if !tw.holding && !tw.held.done {
		tw.WriteHeader(http.StatusOK)
	}
	if tw.holding {
		if tw.body.append(p) {
			return len(p), nil
		}
		// Too large to hold: let it go without a tag, and let the next
		// write ask for the version.
		if err := tw.release(); err != nil {
			return 0, err
		}
	}
	return tw.ResponseWriterWrapper.Write(p)
}

// release sends a held answer without a tag and gives the lock up.
func (tw *taggingWriter) release() error {
	tw.stopTimer()
	tw.holding = false
	tw.held.finish(0, "", "")
	tw.ResponseWriterWrapper.WriteHeader(tw.status)
	b := tw.body.bytes()
	var err error
	if len(b) > 0 {
		_, err = tw.ResponseWriterWrapper.Write(b)
	}
	tw.body.release()
	return err
}

func (tw *taggingWriter) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(writerOnly{tw}, r)
}

// FlushError waits while the answer is held: reverse_proxy flushes after
// every write of an answer without Content-Length.
func (tw *taggingWriter) FlushError() error {
	if tw.holding {
		return nil
	}
	if !tw.held.done {
		tw.WriteHeader(http.StatusOK)
		if tw.holding {
			return nil
		}
	}
	return http.NewResponseController(tw.ResponseWriterWrapper.ResponseWriter).Flush()
}

// serveNext runs the next handler; reverse_proxy's abort of an answer that
// is still held becomes an error, since nothing has reached the client.
func (tw *taggingWriter) serveNext(next caddyhttp.Handler, r *http.Request) (err error) {
	defer func() {
		// An ETag trailer the upstream did not announce, which
		// reverse_proxy passes on under http.TrailerPrefix.
		delete(tw.Header(), http.TrailerPrefix+"Etag")
		if rec := recover(); rec != nil {
			if rec != http.ErrAbortHandler || !tw.holding {
				panic(rec)
			}
			err = caddyhttp.Error(http.StatusBadGateway, errAnswerAborted)
		}
	}()
	return next.ServeHTTP(tw, r)
}

// complete ends a held answer once reverse_proxy has returned: it asks for
// the new version, records it, releases the lock and sends the answer with
// the new tag. clientCtx is the request's context without write_timeout,
// which no longer applies to the write.
func (tw *taggingWriter) complete(err error, clientCtx context.Context, lockedReq *http.Request) error {
	tw.stopTimer()
	tw.holding = false
	defer tw.body.release()
	hw := tw.held
	if err != nil {
		// The upstream answered, then failed or stalled past write_timeout:
		// the write was probably applied, and nothing has been sent yet.
		hw.finish(0, "", "")
		hdr := tw.Header()
		for _, f := range representationFields {
			hdr.Del(f)
		}
		return hw.h.upstreamFailed(tw.ResponseWriterWrapper.ResponseWriter, lockedReq, clientCtx, err)
	}
	ctx, cancel := context.WithTimeout(clientCtx, time.Duration(hw.h.WriteTimeout))
	_, v, known, perr := hw.h.probeVersion(hw.r.WithContext(ctx), hw.next)
	cancel()
	hw.done = true
	if hw.degraded {
		hw.h.unseen.add(hw.h.logger, hw.key)
	}
	if perr != nil || !known || !hw.recordable || tw.status == http.StatusAccepted {
		hw.h.cache.Forget(hw.key)
		hw.endShared(true, nil)
	} else {
		v.Superseded = etagcache.Supersede(hw.replaced, hw.older, v.ETag)
		hw.recordLocally(v)
		if hw.lease != nil {
			made := v
			hw.endShared(true, &made)
		}
	}
	hw.h.locks.Unlock(hw.key)
	hw.fence.leave(hw.h)
	// reverse_proxy has put the upstream's ETag trailer, if any, in the
	// header map.
	tw.Header().Del("Etag")
	if perr == nil && known && v.Exists && v.ETag != "" && tw.status != http.StatusAccepted {
		tw.Header().Set("Etag", v.ETag)
	}
	tw.ResponseWriterWrapper.WriteHeader(tw.status)
	if b := tw.body.bytes(); len(b) > 0 {
		_, err = tw.ResponseWriterWrapper.Write(b)
	}
	return err
}
