package writeguard

import (
	"net/http"
	"net/url"
	"strings"
)

// overrideError is a method override field the guard cannot make sense of.
type overrideError struct{ field, reason string }

// overriddenMethod returns the method r must be guarded as. Many frameworks
// let a POST (or any request) name the method to apply in a header field
// (X-HTTP-Method-Override: DELETE); the backend may apply either method, so
// the request is guarded when either is, and treated as unsafe when either
// is.
//
// Besides the header fields, a _method query parameter is an override:
// Laravel, Symfony and Express's methodOverride("_method") read it.
func (h *Handler) overriddenMethod(r *http.Request, method string) (string, *overrideError) {
	var named string
	note := func(field, value string) *overrideError {
		m := strings.ToUpper(strings.TrimSpace(value))
		if !isToken(m) {
			return &overrideError{field: field, reason: field + " must name one method, such as PUT."}
		}
		if m == method || m == named {
			return nil
		}
		if named != "" {
			return &overrideError{field: field, reason: "The request names two different methods in its method override fields; send one."}
		}
		named = m
		return nil
	}
	for name, values := range r.Header {
		if !h.isOverrideField(name) {
			continue
		}
		for _, v := range values {
			if err := note(name, v); err != nil {
				return "", err
			}
		}
	}
	if r.URL.RawQuery != "" {
		for _, v := range methodParams(r.URL.RawQuery) {
			if err := note("_method", v); err != nil {
				return "", err
			}
		}
	}
	if named == "" {
		return method, nil
	}
	if _, guarded := h.methods[method]; guarded {
		return method, nil
	}
	if _, guarded := h.methods[named]; guarded || !isSafe(named) {
		return named, nil
	}
	return method, nil
}

// isOverrideField reports whether a header field name is one of the
// override fields in any spelling a backend may take it for: CGI-style
// stacks (Rack, PHP) fold case and read "-" and "_" alike, so
// X_HTTP-Method_Override is X-HTTP-Method-Override to them.
func (h *Handler) isOverrideField(name string) bool {
	for _, f := range h.overrideFields {
		if len(f) == len(name) && sameFieldName(f, name) {
			return true
		}
	}
	return false
}

// isDefaultOverrideField is isOverrideField for the default fields, which a
// version check drops even with method_override off or other fields listed.
func isDefaultOverrideField(name string) bool {
	for _, f := range defaultMethodOverride {
		if len(f) == len(name) && sameFieldName(f, name) {
			return true
		}
	}
	return false
}

func sameFieldName(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := lowerASCII(a[i]), lowerASCII(b[i])
		if x == '_' {
			x = '-'
		}
		if y == '_' {
			y = '-'
		}
		if x != y {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// methodParams returns the values of the query's _method parameters, under
// any name a backend decodes to _method: percent-encoded ("%5Fmethod"), or
// with "." or a space for "_" (PHP turns both into "_" in parameter names).
func methodParams(rawQuery string) []string {
	var values []string
	for q := rawQuery; q != ""; {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		name, value, _ := strings.Cut(pair, "=")
		if !isMethodParam(name) {
			continue
		}
		if v, err := url.QueryUnescape(value); err == nil {
			values = append(values, v)
		}
	}
	return values
}

func isMethodParam(name string) bool {
	if len(name) < len("_method") || !strings.ContainsAny(name, "dD%") {
		return false
	}
	if strings.IndexByte(name, '%') >= 0 || strings.IndexByte(name, '+') >= 0 {
		decoded, err := url.QueryUnescape(name)
		if err != nil {
			return false
		}
		name = decoded
	}
	name = strings.TrimLeft(name, " ")
	return len(name) == len("_method") && (name[0] == '_' || name[0] == '.' || name[0] == ' ') && name[1:] == "method"
}

// withoutMethodParams drops _method parameters from a query, for a version
// check that must stay a read.
func withoutMethodParams(rawQuery string) string {
	if len(methodParams(rawQuery)) == 0 {
		return rawQuery
	}
	var kept []string
	for _, pair := range strings.Split(rawQuery, "&") {
		if name, _, _ := strings.Cut(pair, "="); !isMethodParam(name) {
			kept = append(kept, pair)
		}
	}
	return strings.Join(kept, "&")
}

// upperMethod upper-cases a method name, without allocating for the usual
// upper-case ones.
func upperMethod(m string) string {
	for i := 0; i < len(m); i++ {
		if 'a' <= m[i] && m[i] <= 'z' {
			return strings.ToUpper(m)
		}
	}
	return m
}

func isSafe(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// isToken reports whether s is an RFC 9110 token, the syntax of method and
// field names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func validFieldName(s string) bool { return isToken(s) }
