package writeguard

import (
	"math/rand/v2"
	"net/http"
	"testing"
	"time"
)

// parseHTTPDate must agree with http.ParseTime on everything: dates in
// every form, and strings that are almost dates.
func TestParseHTTPDateAgreesWithNetHTTP(t *testing.T) {
	inputs := []string{
		"Sun, 06 Nov 1994 08:49:37 GMT",
		"Sunday, 06-Nov-94 08:49:37 GMT",
		"Sun Nov  6 08:49:37 1994",
		"Mon, 31 Nov 2024 00:00:00 GMT", // no 31 November
		"Thu, 29 Feb 2024 23:59:59 GMT",
		"Thu, 29 Feb 2023 23:59:59 GMT",
		"Xyz, 06 Nov 1994 08:49:37 GMT",
		"Sun, 06 Nov 1994 24:00:00 GMT",
		"Sun, 06 Nov 1994 08:60:37 GMT",
		"Sun, 06 Nov 1994 08:49:60 GMT",
		"Sun, 00 Nov 1994 08:49:37 GMT",
		"Sun, 06 Nox 1994 08:49:37 GMT",
		"Sun, 06 Nov 1994 08:49:37 UTC",
		"Sun, 6 Nov 1994 08:49:37 GMT",
		"Sun, 06 Nov 0001 00:00:00 GMT",
		"Sun, 06 Nov 19x4 08:49:37 GMT",
		"Sun, 06 Nov 1994 08:49:37 GMT ",
		"",
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		inputs = append(inputs, time.Unix(r.Int64N(1<<35), 0).UTC().Format(http.TimeFormat))
	}
	for _, in := range inputs {
		want, wantErr := http.ParseTime(in)
		got, err := parseHTTPDate(in)
		if (err != nil) != (wantErr != nil) || !got.Equal(want) {
			t.Errorf("%q: got %v, %v; net/http %v, %v", in, got, err, want, wantErr)
		}
	}
}
