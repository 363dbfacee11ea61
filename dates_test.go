package writeguard

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Two writes validated by one date can never both pass, even within one
// second: the first is held until its version's second is over, so the
// version it makes is dated later than the date both clients hold. A
// client that reads after it gets through.
func TestDateValidatedWritesNeverShareADate(t *testing.T) {
	for _, etags := range []string{"auto", "upstream", "hash"} {
		t.Run(etags, func(t *testing.T) {
			doc := newTaggedDoc("v1", func(string) string { return "" })
			h := newTestHandler(t, &Handler{ETags: etags})
			read := serve(t, h, doc, "GET", "/doc", "")
			date := read.Header().Get("Last-Modified")
			h.cache.Wait()
			waits := testutil.ToFloat64(guardMetrics().dateWaits)

			if w := serve(t, h, doc, "PUT", "/doc", "first", "If-Unmodified-Since: "+date); w.Code != http.StatusNoContent {
				t.Fatalf("first write: %d %s", w.Code, w.Body)
			}
			if w := serve(t, h, doc, "PUT", "/doc", "second", "If-Unmodified-Since: "+date); w.Code != http.StatusPreconditionFailed {
				t.Fatalf("second write on the same date: %d %s (the first write's update is lost)", w.Code, w.Body)
			}
			if doc.current() != "first" {
				t.Fatalf("upstream holds %q", doc.current())
			}
			if testutil.ToFloat64(guardMetrics().dateWaits) == waits {
				t.Error("the first write did not wait for its version's second to pass")
			}
			// The client that reads again gets through.
			h.cache.Wait()
			again := serve(t, h, doc, "GET", "/doc", "").Header().Get("Last-Modified")
			if again == date {
				t.Fatalf("the new version carries the old date %s", date)
			}
			if w := serve(t, h, doc, "PUT", "/doc", "third", "If-Unmodified-Since: "+again); w.Code != http.StatusNoContent {
				t.Fatalf("write after reading again: %d %s", w.Code, w.Body)
			}
		})
	}
}

// A write validated by a tag is not held, and an upstream may leave the
// date as it was (a date of the day, of a parent record, or one that a
// write within the same second repeats). The version such a write makes
// is crowded: a date-validated write naming that date is refused, with the
// advice to send If-Match, whether the date was learned from the write's
// answer, a read, or the version check.
func TestCrowdedDateRefusesDateValidatedWrites(t *testing.T) {
	for _, readBetween := range []bool{false, true} {
		doc := newTaggedDoc("v1", contentTag)
		doc.answerTag, doc.stuckDate = true, true
		doc.modified = time.Now().Add(-10 * time.Second)
		date := doc.modified.UTC().Format(http.TimeFormat)
		h := newTestHandler(t, &Handler{})
		serve(t, h, doc, "GET", "/doc", "")
		h.cache.Wait()
		start := time.Now()
		if w := serve(t, h, doc, "PUT", "/doc", "v2", "If-Match: "+contentTag("v1")); w.Code != http.StatusNoContent {
			t.Fatalf("tagged write: %d", w.Code)
		}
		if d := time.Since(start); d > 900*time.Millisecond {
			t.Logf("the tagged write took %v: was it held?", d)
		}
		if readBetween {
			if got := serve(t, h, doc, "GET", "/doc", "").Header().Get("Last-Modified"); got != date {
				t.Fatalf("the upstream dates v2 %s, want %s", got, date)
			}
			h.cache.Wait()
		}
		w := serve(t, h, doc, "PUT", "/doc", "v3", "If-Unmodified-Since: "+date)
		if w.Code != http.StatusPreconditionFailed || !strings.Contains(w.Body.String(), "same Last-Modified") {
			t.Fatalf("read between %v: date-validated write on a crowded date: %d %s", readBetween, w.Code, w.Body)
		}
		if doc.current() != "v2" {
			t.Fatalf("upstream holds %q", doc.current())
		}
	}
}
