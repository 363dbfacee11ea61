package reskey

// Query returns the canonical form of a raw query, as given by
// [net/url.URL.RawQuery]. Escapes are normalized as the package
// documentation describes; "/" and "?" may appear raw besides what a path
// allows.
//
// A request target ending in a bare "?" has an empty query, which is no
// query: Query returns "" for both, so a caller that adds the query to a key
// should add "?" only before a non-empty result.
//
// Nothing else changes. Parameters keep their order: a repeated name forms
// a list in order ("?id=2&id=1"), and backends disagree on which of several
// values wins, so two orders can be two resources. Signed URLs sign the
// exact string, too. Spellings that some frameworks read alike, such as "+"
// and "%20" or "a" and "a=", stay apart for the same reason.
func Query(rawQuery string) string {
	if canonicalEscapes(rawQuery, inQuery, false) {
		return rawQuery
	}
	var buf [128]byte
	return string(appendEscaped(buf[:0], rawQuery, inQuery, false))
}
