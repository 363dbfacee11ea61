package reskey

import "testing"

// sink keeps the compiler from discarding the benchmarked calls.
var sink string

func BenchmarkPathCanonical(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		sink = Path("/api/items/42", Options{})
	}
}

func BenchmarkPathCanonicalLong(b *testing.B) {
	const p = "/api/v2/tenants/acme-corp/projects/website-redesign/documents/2024-05-01_minutes.md"
	b.ReportAllocs()
	for b.Loop() {
		sink = Path(p, Options{})
	}
}

func BenchmarkPathMessy(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		sink = Path("//api/./items/%7eold/../%34%32/", Options{})
	}
}

func BenchmarkPathMessyCaseInsensitive(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		sink = Path("//API/./Items/%7eold/../%34%32/", Options{CaseInsensitive: true})
	}
}

func BenchmarkHostCanonical(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		sink = Host("example.com")
	}
}

func BenchmarkHostMessy(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		sink = Host("Example.COM.:443")
	}
}

func BenchmarkQueryCanonical(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		sink = Query("page=2&sort=name")
	}
}

func BenchmarkQueryMessy(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		sink = Query("q=caf%c3%a9 au lait&page=%32")
	}
}
