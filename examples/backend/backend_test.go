package backend

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestConstantETagsTagTheRoute(t *testing.T) {
	s := New()
	s.ETags = ConstantETags
	s.Put("/a", []byte("v1"))
	get := func(path string) string {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		return w.Header().Get("ETag")
	}
	before := get("/a")
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest(http.MethodPut, "/a", strings.NewReader("v2")))
	if before != RouteETag("/a") || get("/a") != before || w.Header().Get("ETag") != before {
		t.Errorf("tags of /a: %s before, %s in the write's answer, %s after; want %s throughout", before, w.Header().Get("ETag"), get("/a"), RouteETag("/a"))
	}
	s.Put("/b", []byte("v1"))
	if get("/b") == before {
		t.Errorf("/a and /b share the tag %s", before)
	}
}
