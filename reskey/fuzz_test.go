package reskey

import (
	"net/url"
	"path"
	"strings"
	"testing"
)

func FuzzPath(f *testing.F) {
	for _, s := range pathSeeds {
		f.Add(s, false, false)
	}
	f.Add("/A/%2E%2e/b/", true, true)
	f.Fuzz(func(t *testing.T, in string, keep, fold bool) {
		o := Options{KeepTrailingSlash: keep, CaseInsensitive: fold}
		out := Path(in, o)
		checkPath(t, in, o, out)

		// The options change nothing but what they name.
		if keep {
			trimmed := Path(in, Options{CaseInsensitive: fold})
			if want := strings.TrimSuffix(out, "/"); trimmed != want && !(out == "/" && trimmed == "/") {
				t.Errorf("Path(%q) = %q without and %q with the trailing slash kept", in, trimmed, out)
			}
		}
		if fold {
			if want := lowerRaw(Path(in, Options{KeepTrailingSlash: keep})); out != want {
				t.Errorf("Path(%q) case-insensitive = %q, want %q", in, out, want)
			}
		}

		if strings.Contains(in, "%") {
			return
		}
		// Without escapes in the input, the key decodes to what path.Clean
		// makes of the input, the oracle for slashes and dot-segments.
		if !keep && !fold {
			dec, err := url.PathUnescape(out)
			if want := path.Clean("/" + in); err != nil || dec != want {
				t.Errorf("Path(%q) = %q, which decodes to %q (%v), want %q", in, out, dec, err, want)
			}
		}
		// Escaping unreserved characters is a spelling, not a change.
		if again := Path(escapeUnreserved(in), o); again != out {
			t.Errorf("Path(%q) = %q, but Path(%q) = %q", in, out, escapeUnreserved(in), again)
		}
	})
}

func FuzzHost(f *testing.F) {
	for _, s := range []string{
		"", "example.com", "Example.COM.:443", "example.com:80", "example.com:",
		"[::1]:8080", "[2001:DB8::1]:443", "[::1", "::1", "...:8080", "a.:80:80",
		"[a]x:80", "\xff.EXAMPLE",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := Host(in)
		if again := Host(out); again != out {
			t.Errorf("Host(%q) = %q, but Host(%q) = %q", in, out, out, again)
		}
		if hasUpper(out) {
			t.Errorf("Host(%q) = %q: upper-case letter", in, out)
		}
		if len(out) > len(in) {
			t.Errorf("Host(%q) = %q: longer", in, out)
		}
		if upper := upperASCII(in); Host(upper) != out {
			t.Errorf("Host(%q) = %q, but Host(%q) = %q", in, out, upper, Host(upper))
		}
		name, port, hasPort := splitHostPort(out)
		if hasPort && (port == "" || port == "80" || port == "443") {
			t.Errorf("Host(%q) = %q: default port kept", in, out)
		}
		if !strings.HasPrefix(name, "[") && strings.HasSuffix(name, ".") {
			t.Errorf("Host(%q) = %q: trailing dot kept", in, out)
		}
	})
}

func FuzzQuery(f *testing.F) {
	for _, s := range []string{
		"", "a=1&b=2", "id=2&id=1", "%61=%7e", "q=%c3%a9", "q=a b", "q=a+b",
		"q=%", "q=%zz&r=%4", "a&&b&", "x#y", "next=/a/b?c", "%%41",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := Query(in)
		checkQuery(t, in, out)
		// Delimiters are never decoded, added or moved, so parameters keep
		// their order and their bounds.
		for _, c := range "!$&'()*+,;=:@/?" {
			if strings.Count(out, string(c)) != strings.Count(in, string(c)) {
				t.Errorf("Query(%q) = %q: count of %q changed", in, out, c)
			}
		}
		if strings.Contains(in, "%") {
			return
		}
		if dec, err := url.PathUnescape(out); err != nil || dec != in {
			t.Errorf("Query(%q) = %q, which decodes to %q (%v)", in, out, dec, err)
		}
		if again := Query(escapeUnreserved(in)); again != out {
			t.Errorf("Query(%q) = %q, but Query(%q) = %q", in, out, escapeUnreserved(in), again)
		}
	})
}

// lowerRaw lower-cases the ASCII letters of an escaped string, leaving the
// hex digits of its escapes alone.
func lowerRaw(s string) string {
	b := []byte(s)
	for i := 0; i < len(b); i++ {
		if b[i] == '%' {
			i += 2
			continue
		}
		b[i] = lowerASCII(b[i])
	}
	return string(b)
}

func upperASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// escapeUnreserved spells every unreserved character of s as an escape
// with lower-case hex.
func escapeUnreserved(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; chars[c]&unreserved != 0 {
			b.WriteString("%" + strings.ToLower(string(upperHex[c>>4])+string(upperHex[c&15])))
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}
