package reskey

import (
	"net/url"
	"strings"
	"testing"
)

func TestPath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		// Already canonical.
		{"/", "/"},
		{"/api/items/42", "/api/items/42"},
		{"/a%2Fb", "/a/b"},
		{"/caf%C3%A9", "/caf%C3%A9"},
		{"/a;v=1/b", "/a;v=1/b"},
		{"/~user/a.b-c_d", "/~user/a.b-c_d"},
		{"/a:b@c", "/a:b@c"},
		{"/.well-known/x", "/.well-known/x"},
		{"/...", "/..."},
		{"/a..", "/a.."},

		// Empty and relative.
		{"", "/"},
		{"a", "/a"},
		{"a/b", "/a/b"},
		{".", "/"},
		{"../a", "/a"},
		{"*", "/*"},

		// Duplicate slashes.
		{"//", "/"},
		{"//doc", "/doc"},
		{"//a///b", "/a/b"},
		{"/a//..", "/"},

		// Dot-segments.
		{"/.", "/"},
		{"/..", "/"},
		{"/../a", "/a"},
		{"/../../a/../../b", "/b"},
		{"/a/./b/../c/", "/a/c"},
		{"/a/b/..", "/a"},
		{"/a/b/.", "/a/b"},
		{"/a/./b", "/a/b"},
		{"/a/../../b", "/b"},
		{"/a/..;/b", "/a/..;/b"},
		{"/a/.%2Fb", "/a/b"},

		// Unreserved escapes are decoded before dot-segments go.
		{"/%2e%2E", "/"},
		{"/a/%2E%2E/b", "/b"},
		{"/a/%2e/b", "/a/b"},
		{"/a/.%2e", "/"},
		{"/%31%32%33", "/123"},
		{"/%7e", "/~"},
		{"/%7Euser", "/~user"},
		{"/%41%5a%61%7A%30%39%2D%2E%5F%7E", "/AZaz09-._~"},
		{"/%2F", "/"},

		// Escape case.
		{"/%c3%a9", "/%C3%A9"},
		{"/a%2fb", "/a/b"},
		{"/%3b", "/%3B"},
		{"/%00", "/%00"},

		// Malformed escapes.
		{"/%", "/%25"},
		{"/%zz", "/%25zz"},
		{"/%2", "/%252"},
		{"/a%", "/a%25"},
		{"/%g1", "/%25g1"},
		{"/%%41", "/%25A"},
		{"/%25", "/%25"},
		{"/100%", "/100%25"},

		// Raw bytes that must be escaped.
		{"/a b", "/a%20b"},
		{"/café", "/caf%C3%A9"},
		{"/a\x00b\x7f", "/a%00b%7F"},
		{"/a\tb\r\n", "/a%09b%0D%0A"},
		{"/a[0]", "/a%5B0%5D"},
		{`/a"<>\^` + "`{|}", "/a%22%3C%3E%5C%5E%60%7B%7C%7D"},
		{"/a?b#c", "/a%3Fb%23c"},
		{"/\xff", "/%FF"},

		// Sub-delims, ":" and "@" keep their form.
		{"/a;b", "/a;b"},
		{"/a%3Bb", "/a%3Bb"},
		{"/a%3bb", "/a%3Bb"},
		{"/!$&'()*+,;=:@", "/!$&'()*+,;=:@"},
		{"/%21%24%26%27%28%29%2A%2B%2C%3B%3D%3A%40", "/%21%24%26%27%28%29%2A%2B%2C%3B%3D%3A%40"},
		{"/%2a", "/%2A"},

		// Trailing slash, dropped by default.
		{"/a/", "/a"},
		{"/a/b//", "/a/b"},
		{"/a/%2E/", "/a"},

		// Case is kept by default.
		{"/API/Items", "/API/Items"},
	} {
		if got := Path(tc.in, Options{}); got != tc.want {
			t.Errorf("Path(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPathKeepTrailingSlash(t *testing.T) {
	o := Options{KeepTrailingSlash: true}
	for _, tc := range []struct {
		in, want string
	}{
		{"/", "/"},
		{"", "/"},
		{"/a", "/a"},
		{"/a/", "/a/"},
		{"/a//", "/a/"},
		{"//a//", "/a/"},
		{"/a/b/..", "/a/"},
		{"/a/.", "/a/"},
		{"/a/%2e", "/a/"},
		{"/a/..", "/"},
		{"/..", "/"},
		{"/a/./b/../c/", "/a/c/"},
		{"/a/%2F", "/a/"},
	} {
		if got := Path(tc.in, o); got != tc.want {
			t.Errorf("Path(%q, keep trailing slash) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPathCaseInsensitive(t *testing.T) {
	o := Options{CaseInsensitive: true}
	for _, tc := range []struct {
		in, want string
	}{
		{"/api/items", "/api/items"},
		{"/API/Items/", "/api/items"},
		{"/%41%42c", "/abc"},
		{"/a%2fB", "/a/b"},
		{"/%c3%a9", "/%C3%A9"},
		{"/É", "/%C3%89"},
		{"/A B", "/a%20b"},
	} {
		if got := Path(tc.in, o); got != tc.want {
			t.Errorf("Path(%q, case-insensitive) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Spellings of one resource share a key; those of different resources do not.
func TestPathMerges(t *testing.T) {
	same := [][]string{
		{"/doc", "//doc", "/./doc", "/x/../doc", "/%64oc", "/doc/", "doc", "/../doc"},
		{"/a/b", "/a%2Fb", "/a%2fb", "//a%2Fb/", "/x%2F..%2Fa/b"},
		{"/caf%C3%A9", "/caf%c3%a9", "/café"},
		{"/a%20b", "/a b"},
	}
	for _, group := range same {
		for _, in := range group[1:] {
			if got, want := Path(in, Options{}), Path(group[0], Options{}); got != want {
				t.Errorf("Path(%q) = %q, Path(%q) = %q: want one key", in, got, group[0], want)
			}
		}
	}
	for _, pair := range [][2]string{
		{"/a;b", "/a%3Bb"},
		{"/a+b", "/a%2Bb"},
		{"/a+b", "/a%20b"},
		{"/a:b", "/a%3Ab"},
		{"/a", "/A"},
		{"/a/..;/b", "/b"},
		{"/%", "/"},
		{"/%25", "/"},
	} {
		if a, b := Path(pair[0], Options{}), Path(pair[1], Options{}); a == b {
			t.Errorf("Path(%q) and Path(%q) are both %q: want different keys", pair[0], pair[1], a)
		}
	}
}

// checkPath fails t unless out, the result of Path(in, o), has the form every
// key must have.
func checkPath(t *testing.T, in string, o Options, out string) {
	t.Helper()
	if !strings.HasPrefix(out, "/") {
		t.Errorf("Path(%q, %+v) = %q: does not start with /", in, o, out)
	}
	if strings.Contains(out, "//") {
		t.Errorf("Path(%q, %+v) = %q: contains //", in, o, out)
	}
	segs := strings.Split(out, "/")[1:]
	for i, s := range segs {
		if s == "." || s == ".." {
			t.Errorf("Path(%q, %+v) = %q: contains a %q segment", in, o, out, s)
		}
		if s == "" && out != "/" && !(o.KeepTrailingSlash && i == len(segs)-1) {
			t.Errorf("Path(%q, %+v) = %q: trailing slash", in, o, out)
		}
	}
	for i := 0; i < len(out); i++ {
		switch c := out[i]; {
		case c == '%':
			if i+2 >= len(out) || !isUpperHex(out[i+1]) || !isUpperHex(out[i+2]) {
				t.Errorf("Path(%q, %+v) = %q: %% at %d starts no upper-case escape", in, o, out, i)
			}
			i += 2
		case chars[c]&inPath == 0:
			t.Errorf("Path(%q, %+v) = %q: raw byte %#x", in, o, out, c)
		case o.CaseInsensitive && 'A' <= c && c <= 'Z':
			t.Errorf("Path(%q, %+v) = %q: upper-case letter", in, o, out)
		}
	}
	if _, err := url.PathUnescape(out); err != nil {
		t.Errorf("Path(%q, %+v) = %q: %v", in, o, out, err)
	}
	if again := Path(out, o); again != out {
		t.Errorf("Path(%q, %+v) = %q, but Path(%q) = %q", in, o, out, out, again)
	}
	if !canonicalPath(out, o) {
		t.Errorf("Path(%q, %+v) = %q, which canonicalPath does not recognize", in, o, out)
	}
}

var allOptions = []Options{
	{},
	{KeepTrailingSlash: true},
	{CaseInsensitive: true},
	{KeepTrailingSlash: true, CaseInsensitive: true},
}

func TestPathProperties(t *testing.T) {
	for _, in := range pathSeeds {
		for _, o := range allOptions {
			checkPath(t, in, o, Path(in, o))
		}
	}
}

// pathSeeds are the inputs of the property tests and the fuzz target's
// seeds.
var pathSeeds = []string{
	"", "/", "//", "/.", "/..", "/../a", "/a/./b/../c/", "//a///b",
	"/%2e%2E", "/a/%2E%2E/b", "/a%2Fb", "/%7e", "/%c3%a9", "/%", "/%zz",
	"/%2", "/%%41", "/a b", "/café", "/\x00\xff", "/a;b=c/..;/d",
	"/API/Items/", "/%41/", "a/../..", "*", "/a/b/.%2e/", "/./.././",
	"/%25%32%65", "/%2%65",
}

// A canonical path is returned as is, without allocating.
func TestPathCanonicalDoesNotAllocate(t *testing.T) {
	for _, in := range []string{"/", "/api/items/42", "/a%3Bb;v=1/%C3%A9"} {
		if got := Path(in, Options{}); got != in {
			t.Fatalf("Path(%q) = %q", in, got)
		}
		if n := testing.AllocsPerRun(100, func() { Path(in, Options{}) }); n != 0 {
			t.Errorf("Path(%q) allocates %v times", in, n)
		}
	}
	if n := testing.AllocsPerRun(100, func() { Path("/api/items/42/", Options{KeepTrailingSlash: true}) }); n != 0 {
		t.Errorf("Path with a kept trailing slash allocates %v times", n)
	}
}
