package integration

import (
	"net/http"
	"testing"
)

// A site's resources are found by the admin API under any of the site's
// names, with or without the port, as an operator copies them from a URL
// or from the README's examples; DELETE then forgets them.
func TestAdminFindsResourcesUnderAnyOfTheSiteNames(t *testing.T) {
	for _, given := range []string{
		"www.example.com:9080/items/1", // the URL a client used
		"www.example.com/items/1",
		"example.com/items/1", // the README's spelling: the host without its port
	} {
		t.Run(given, func(t *testing.T) {
			store := newStore(map[string]string{"/items/1": `{"v":1}`})
			startSites(t, fmtSite("http://example.com:9080, http://www.example.com:9080 {\n\twrite_guard\n\treverse_proxy %s\n}\n", startBackend(t, store)))
			activate(t, entrance{caddyBase, "www.example.com:9080"})
			at(t, caddyBase, "www.example.com:9080", http.MethodGet, "/items/1", "")
			waitLearned(t, "example.com:9080/items/1")

			if status, view := adminResource(t, http.MethodGet, given); status != http.StatusOK || len(view.Caches) != 1 || !view.Caches[0].Known {
				t.Errorf("GET %s: %d %+v, want the cached version", given, status, view)
			}
			if status, view := adminResource(t, http.MethodDelete, given); status != http.StatusNoContent {
				t.Errorf("DELETE %s: %d %+v, want 204", given, status, view)
			}
		})
	}
}
