package writeguard

import (
	"net/http"
	"time"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/precondition"
)

// HTTP dates name seconds. Two writes within one second leave two versions
// with one Last-Modified, and a client that read the first holds the date
// of the second: If-Unmodified-Since cannot tell them apart, and a write
// validated by it alone would pass on a version its client never saw. The
// guard knows when it forwards each write, and holds a date-validated write
// under its lock until the second of the version it was checked against
// has passed: the version it makes is then dated later, and every client
// holding the older date is refused. That allows one date-validated write
// per resource and second; writes validated by an entity-tag never wait.
//
// A version can still share its date with the one it replaced: a write
// validated by a tag, or a blind one, in the same second, or an upstream
// whose date did not move. The write records it as crowded, and a
// date-validated write naming that date is refused, with the advice to
// send If-Match instead, until a later write moves the date on.

// maxDateWait bounds the wait: however far ahead of this server's clock
// the upstream's dates run, one second after the last write the
// upstream's clock has moved on by a second too.
const maxDateWait = time.Second

// dateValidated reports whether the write's only precondition on the
// version is its date.
func (wr *write) dateValidated() bool {
	return wr.cond.IfUnmodifiedSince != nil && wr.cond.IfMatch == nil && wr.cond.IfNoneMatch == nil
}

// settleDate refuses a date-validated write whose date may name more than
// one version, and holds one that passes until its version's second is
// over.
func (wr *write) settleDate(state precondition.State, crowded bool) *refusal {
	if !wr.dateValidated() || !state.Exists || state.LastModified.IsZero() {
		return nil
	}
	lm := state.LastModified
	if crowded && wr.cond.IfUnmodifiedSince.Unix() <= lm.Unix() {
		return refuseCrowdedDate()
	}
	wait := min(lm.Truncate(time.Second).Add(time.Second).Sub(time.Now()), maxDateWait)
	if wait <= 0 {
		return nil
	}
	countDateWait()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-wr.ctx.Done():
		// The client left, or write_timeout: forward finds out which.
	}
	return nil
}

// crowdedDate reports whether the date of state, the version a write is
// checked against, names an earlier version too, by what the cache or the
// store knew of it (cached; fromCache: that version is state). A crowded
// date stays crowded when the upstream, asked again, shows the version the
// cache knew; and a version whose write's answer gave no date kept the
// date of the one it replaced, which the upstream showing again proves
// the write did not move.
func crowdedDate(cached etagcache.Version, fromCache bool, state precondition.State) bool {
	if !cached.Exists {
		return false
	}
	same := cached.ETag != "" && cached.ETag == state.ETag
	return cached.Crowded && (fromCache || same) ||
		same && !cached.ReplacedDate.IsZero() && !state.LastModified.IsZero() && state.LastModified.Unix() <= cached.ReplacedDate.Unix()
}

// dateMade notes on made, the version the write made, what its date tells:
// crowded when it is the date of the version the write was checked
// against; when the answer gave none, that version's date, for the next
// write to compare with what the upstream shows (ReplacedDate).
func (wr *write) dateMade(made *etagcache.Version) {
	if !made.Exists || !wr.checkedKnown || !wr.checked.Exists {
		return
	}
	if made.LastModified.IsZero() {
		made.ReplacedDate = wr.checked.LastModified
		if made.ReplacedDate.IsZero() {
			made.ReplacedDate = wr.checked.ReplacedDate
		}
		return
	}
	made.Crowded = !wr.checked.LastModified.IsZero() && made.LastModified.Unix() <= wr.checked.LastModified.Unix()
}

// refuseCrowdedDate answers a date-validated write whose date names more
// than one version.
func refuseCrowdedDate() *refusal {
	return &refusal{outcome: outcomeStale, field: "If-Unmodified-Since", problem: problem{
		Type:   problemPreconditionFailed,
		Title:  "Precondition failed",
		Status: http.StatusPreconditionFailed,
		Header: "If-Unmodified-Since",
		Detail: "Two versions of this resource carry the same Last-Modified date (both were written within one second), so If-Unmodified-Since cannot tell which one you read. GET the resource and repeat the write with If-Match set to the ETag of that response.",
	}}
}

// withoutAmbiguousDate returns r without its If-Modified-Since when r asks
// by date alone (no If-None-Match) whether a version is current that the
// cache knows to share its date with another: the upstream would answer
// 304 to a client holding the other version. The full answer is right
// for both.
func (h *Handler) withoutAmbiguousDate(r *http.Request, key string) *http.Request {
	hdr := r.Header
	if _, ims := hdr["If-Modified-Since"]; !ims {
		return r
	}
	if _, inm := hdr["If-None-Match"]; inm {
		return r
	}
	if v, ok := h.cache.Get(key); !ok || !v.Crowded {
		return r
	}
	r = r.WithContext(r.Context())
	r.Header = hdr.Clone()
	r.Header.Del("If-Modified-Since")
	return r
}
