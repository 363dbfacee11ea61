package reskey

// Character classes of RFC 3986 appendix A, as bits of chars.
const (
	unreserved = 1 << iota // ALPHA DIGIT - . _ ~
	inPath                 // allowed raw in a path: pchar and "/"
	inQuery                // allowed raw in a query: pchar, "/" and "?"
	// For canonicalPath's loop, which skips bytes of these classes without
	// looking further: inPath except "/", without upper-case letters in
	// the second.
	plainInPath
	plainInFoldedPath
)

var chars = func() (t [256]uint8) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] |= unreserved
		t[c-'a'+'A'] |= unreserved
	}
	for c := '0'; c <= '9'; c++ {
		t[c] |= unreserved
	}
	for _, c := range "-._~" {
		t[c] |= unreserved
	}
	for c := range t {
		if t[c]&unreserved != 0 {
			t[c] |= inPath | inQuery
		}
	}
	for _, c := range "!$&'()*+,;=:@/" {
		t[c] |= inPath | inQuery
	}
	t['?'] |= inQuery
	for c := range t {
		if t[c]&inPath != 0 && c != '/' {
			t[c] |= plainInPath
			if c < 'A' || c > 'Z' {
				t[c] |= plainInFoldedPath
			}
		}
	}
	return t
}()

const upperHex = "0123456789ABCDEF"

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

func isUpperHex(c byte) bool {
	return '0' <= c && c <= '9' || 'A' <= c && c <= 'F'
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// escapeAt reports the byte encoded by a valid escape at s[i], which is '%'.
func escapeAt(s string, i int) (byte, bool) {
	if i+2 >= len(s) {
		return 0, false
	}
	hi, ok1 := unhex(s[i+1])
	lo, ok2 := unhex(s[i+2])
	return hi<<4 | lo, ok1 && ok2
}

// canonicalEscapes reports whether s is already in the form appendEscaped
// gives it: no byte outside class raw, every escape valid, upper-case and of
// a character that is not unreserved, and no upper-case letter if lower is
// set.
func canonicalEscapes(s string, raw uint8, lower bool) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '%':
			if i+2 >= len(s) || !isUpperHex(s[i+1]) || !isUpperHex(s[i+2]) {
				return false
			}
			if b, _ := escapeAt(s, i); chars[b]&unreserved != 0 {
				return false
			}
			i += 2
		case chars[c]&raw == 0, lower && 'A' <= c && c <= 'Z':
			return false
		}
	}
	return true
}

// appendEscaped appends s to dst with unreserved characters decoded, other
// escapes in upper-case hex, and bytes outside class raw escaped; a '%' that
// starts no valid escape is taken literally. With lower set, ASCII letters
// are lower-cased (the hex digits of escapes stay upper-case).
func appendEscaped(dst []byte, s string, raw uint8, lower bool) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' {
			b, ok := escapeAt(s, i)
			if !ok {
				dst = append(dst, "%25"...)
				continue
			}
			i += 2
			if chars[b]&unreserved == 0 {
				dst = append(dst, '%', upperHex[b>>4], upperHex[b&15])
				continue
			}
			c = b
		} else if chars[c]&raw == 0 {
			dst = append(dst, '%', upperHex[c>>4], upperHex[c&15])
			continue
		}
		if lower {
			c = lowerASCII(c)
		}
		dst = append(dst, c)
	}
	return dst
}
