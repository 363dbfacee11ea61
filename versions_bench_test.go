package writeguard

import (
	"net/http"
	"testing"
)

func BenchmarkParseHTTPDate(b *testing.B) {
	const s = "Mon, 01 Jan 2024 00:00:00 GMT"
	b.Run("net/http", func(b *testing.B) {
		for b.Loop() {
			http.ParseTime(s)
		}
	})
	b.Run("fast path", func(b *testing.B) {
		for b.Loop() {
			parseHTTPDate(s)
		}
	})
}
