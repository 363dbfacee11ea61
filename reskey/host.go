package reskey

import "strings"

// Host returns the canonical form of a host and optional port, as in a Host
// header field or [net/url.URL.Host]:
//
//   - ASCII letters are lower-cased, in names and in IPv6 literals alike;
//   - trailing dots of a fully qualified name are dropped: "example.com."
//     is "example.com";
//   - an empty port, ":80" and ":443" are dropped. Host does not know the
//     scheme, so both go whatever it is: a client names its scheme's default
//     port only by choice, while plain HTTP on 443 or TLS on 80 is too rare
//     to deserve keys of its own;
//   - an IPv6 literal keeps its brackets: "[::1]:8080" stays.
//
// A value with several colons outside brackets has no port that can be told
// apart, so it is only lower-cased.
func Host(host string) string {
	name, port, hasPort := splitHostPort(host)
	trimmed := name
	if !strings.HasPrefix(name, "[") {
		trimmed = strings.TrimRight(name, ".")
	}
	dropPort := hasPort && (port == "" || port == "80" || port == "443")
	if trimmed == name && !dropPort && !hasUpper(host) {
		return host
	}
	var b strings.Builder
	b.Grow(len(host))
	writeLower(&b, trimmed)
	if hasPort && !dropPort {
		b.WriteByte(':')
		writeLower(&b, port)
	}
	return b.String()
}

func splitHostPort(host string) (name, port string, hasPort bool) {
	if strings.HasPrefix(host, "[") {
		i := strings.IndexByte(host, ']')
		if i < 0 || i+1 == len(host) || host[i+1] != ':' {
			return host, "", false
		}
		return host[:i+1], host[i+2:], true
	}
	i := strings.LastIndexByte(host, ':')
	if i < 0 || strings.IndexByte(host[:i], ':') >= 0 {
		return host, "", false
	}
	return host[:i], host[i+1:], true
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// writeLower lower-cases ASCII only: strings.ToLower would also replace
// invalid UTF-8 with U+FFFD and so merge hosts that differ.
func writeLower(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		b.WriteByte(lowerASCII(s[i]))
	}
}

// HostName is Host without any port. A site's host matcher ignores the
// port of the Host field, and so do backends: the port a client writes
// there is its own choice and names no other resource.
func HostName(host string) string {
	if name, _, hasPort := splitHostPort(host); hasPort {
		host = name
	}
	return Host(host)
}
