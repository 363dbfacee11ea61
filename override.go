package writeguard

import (
	"net/http"
	"strings"
)

// overrideError is a method override field the guard cannot make sense of.
type overrideError struct{ field, reason string }

// overriddenMethod returns the method r must be guarded as. Many frameworks
// let a POST (or any request) name the method to apply in a header field
// (X-HTTP-Method-Override: DELETE); the backend may apply either method, so
// the request is guarded when either is, and treated as unsafe when either
// is.
func (h *Handler) overriddenMethod(r *http.Request) (string, *overrideError) {
	var named string
	for _, f := range h.overrideFields {
		for _, v := range r.Header[f] {
			m := strings.ToUpper(strings.TrimSpace(v))
			if !isToken(m) {
				return "", &overrideError{field: f, reason: f + " must name one method, such as PUT."}
			}
			if m == r.Method || m == named {
				continue
			}
			if named != "" {
				return "", &overrideError{field: f, reason: "The request names two different methods in its method override fields; send one."}
			}
			named = m
		}
	}
	if named == "" {
		return r.Method, nil
	}
	if _, guarded := h.methods[r.Method]; guarded {
		return r.Method, nil
	}
	if _, guarded := h.methods[named]; guarded || !isSafe(named) {
		return named, nil
	}
	return r.Method, nil
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
