package reskey

import (
	"bytes"
	"strings"
)

// Options adapt path canonicalization to what the backend treats as one
// resource. The zero value suits most backends.
type Options struct {
	// KeepTrailingSlash keeps "/a/" and "/a" apart. By default a trailing
	// slash is dropped, because most frameworks route both to the same
	// handler or redirect one to the other; set it for backends where the
	// two are different resources, such as a directory and a file.
	KeepTrailingSlash bool
	// CaseInsensitive lower-cases the ASCII letters of the path, for
	// backends on case-insensitive file systems (IIS, ASP.NET). Letters
	// beyond ASCII keep their case: backends disagree on how to fold them.
	// Set it only for such backends: elsewhere "/A" and "/a" are two
	// resources, which must not share a cached version.
	CaseInsensitive bool
}

// Path returns the canonical form of an escaped path, as given by
// [net/url.URL.EscapedPath]:
//
//   - escapes are normalized as the package documentation describes, before
//     anything else;
//   - runs of slashes collapse into one, as nginx, Apache and Go's
//     [path.Clean] do: "//a///b" is "/a/b";
//   - "." and ".." segments are removed as in RFC 3986 section 5.2.4, and a
//     ".." at the root stays at the root: "/../a" is "/a". Empty segments
//     are gone before, so "/a//.." is "/", as with path.Clean;
//   - a trailing slash is dropped unless o.KeepTrailingSlash is set; the
//     root "/" keeps its slash, and a path left empty, or not starting with a
//     slash, gets one: "" is "/" and "a" is "/a".
//
// The result always starts with "/" and contains no empty, "." or ".."
// segment.
func Path(escapedPath string, o Options) string {
	if canonicalPath(escapedPath, o) {
		return escapedPath
	}
	escapedPath = decodeSlashes(escapedPath)
	// Keys are short: in the common case the buffer stays on the stack and
	// the string conversion is the only allocation.
	var buf [128]byte
	out := buf[:0]
	// Each segment is appended with its leading slash, then examined in its
	// normalized form, so that "%2E%2E" counts as "..".
	trailing := false
	for rest, more := escapedPath, true; more; {
		var seg string
		seg, rest, more = strings.Cut(rest, "/")
		mark := len(out)
		out = append(out, '/')
		out = appendEscaped(out, seg, inPath, o.CaseInsensitive)
		switch s := out[mark+1:]; string(s) {
		case "", ".":
			out = out[:mark]
			trailing = true
		case "..":
			out = out[:max(bytes.LastIndexByte(out[:mark], '/'), 0)]
			trailing = true
		default:
			trailing = false
		}
	}
	if len(out) == 0 {
		return "/"
	}
	if trailing && o.KeepTrailingSlash {
		out = append(out, '/')
	}
	return string(out)
}

// canonicalPath reports whether Path would return p unchanged. It is the
// whole cost of Path for nearly every request, so it reads p once, byte by
// byte, and does not allocate.
func canonicalPath(p string, o Options) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	if !o.KeepTrailingSlash && len(p) > 1 && p[len(p)-1] == '/' {
		return false
	}
	plain := uint8(plainInPath)
	if o.CaseInsensitive {
		plain = plainInFoldedPath
	}
	seg := 1 // start of the current segment
	for i := 1; i < len(p); i++ {
		c := p[i]
		if chars[c]&plain != 0 {
			continue
		}
		switch {
		case c == '/':
			if dotOrEmpty(p[seg:i]) {
				return false
			}
			seg = i + 1
		case c == '%':
			if i+2 >= len(p) || !isUpperHex(p[i+1]) || !isUpperHex(p[i+2]) {
				return false
			}
			if b, _ := escapeAt(p, i); chars[b]&unreserved != 0 || b == '/' {
				return false
			}
			i += 2
		default:
			return false
		}
	}
	return p[seg:] != "." && p[seg:] != ".."
}

// decodeSlashes turns encoded slashes into separators. Most servers resolve
// the decoded path (nginx, PHP, Go's ServeMux and every handler that reads
// Go's URL.Path), so to them "/a%2Fb" is "/a/b" and "/x%2F..%2Fdoc" climbs
// to "/doc". Those that keep them apart (Apache, Tomcat) refuse encoded
// slashes by default; merging costs them only a shared lock.
func decodeSlashes(p string) string {
	if !strings.Contains(p, "%2F") && !strings.Contains(p, "%2f") {
		return p
	}
	out := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) && p[i+1] == '2' && (p[i+2] == 'F' || p[i+2] == 'f') {
			out = append(out, '/')
			i += 2
			continue
		}
		out = append(out, p[i])
	}
	return string(out)
}

func dotOrEmpty(seg string) bool {
	return seg == "" || seg == "." || seg == ".."
}
