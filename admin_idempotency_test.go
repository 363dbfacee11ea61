package writeguard

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
)

func adminIdempotency(t *testing.T, method, query string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(method, "http://localhost:2019/write_guard/idempotency?"+query, nil)
	if err := (adminAPI{}).handleIdempotency(rec, req); err != nil {
		t.Fatalf("%s %s: %v", method, query, err)
	}
	return rec
}

// The admin API finds a key's record from what an operator knows of the
// request, shows it, and forgets it: the next request with the key is
// served again.
func TestAdminIdempotency(t *testing.T) {
	o := &orders{}
	// The pooled store, which the admin API sees.
	h := newTestHandler(t, &Handler{Idempotency: &IdempotencyConfig{}})
	const key = `Idempotency-Key: "admin-1"`
	serve(t, h, o, "POST", "/orders", "x", key, "Authorization: Bearer alice")
	q := url.Values{"key": {"admin-1"}, "method": {"post"}, "resource": {"Example.com/orders/"}, "scope": {"Bearer alice"}}.Encode()

	w := adminIdempotency(t, "GET", q)
	var got struct {
		Records []idemRecordView `json:"records"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != 200 || len(got.Records) != 1 {
		t.Fatalf("GET: %d %s", w.Code, w.Body)
	}
	r := got.Records[0]
	if r.Store != "memory" || r.State != "finished" || r.Status != http.StatusCreated || r.Location != "/orders/1" || r.Expires == nil {
		t.Fatalf("record: %+v", r)
	}
	if w := adminIdempotency(t, "GET", "record="+r.Record); w.Code != 200 {
		t.Fatalf("GET by record: %d %s", w.Code, w.Body)
	}
	// Another client's scope finds nothing.
	other := url.Values{"key": {"admin-1"}, "resource": {"example.com/orders"}, "scope": {"Bearer bob"}}.Encode()
	if w := adminIdempotency(t, "GET", other); w.Code != http.StatusNotFound {
		t.Fatalf("another scope: %d %s", w.Code, w.Body)
	}
	if w := adminIdempotency(t, "DELETE", q); w.Code != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", w.Code, w.Body)
	}
	if w := adminIdempotency(t, "GET", q); w.Code != http.StatusNotFound {
		t.Fatalf("GET after DELETE: %d", w.Code)
	}
	if w := serve(t, h, o, "POST", "/orders", "x", key, "Authorization: Bearer alice"); w.Header().Get("Idempotent-Replayed") != "" || o.created.Load() != 2 {
		t.Fatalf("after DELETE the key was still replayed: %v", w.Header())
	}
	if w := httptest.NewRecorder(); (adminAPI{}).handleIdempotency(w, httptest.NewRequest("GET", "/write_guard/idempotency?key=x", nil)) == nil {
		t.Fatal("a lookup without resource was accepted")
	}
}
