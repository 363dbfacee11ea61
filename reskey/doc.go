// Package reskey canonicalizes the parts of a request URL that name a
// resource, so that spellings a backend resolves to the same resource give
// the same key, and a write guard takes one lock and keeps one cached version
// for them. Without it, a write to "//doc" and one to "/doc" hold different
// locks and reach the backend at the same time.
//
// # Merge only what backends merge
//
// Merging too much is not harmless either: two resources under one key share
// a lock, which only costs time, but also a cached version, so that a
// precondition would be judged against the other resource's entity-tag. The
// package therefore merges spellings that RFC 3986 declares equivalent or
// that common backends resolve alike, and keeps apart what backends disagree
// on:
//
//   - Percent-encoded unreserved characters (ALPHA, DIGIT, "-", ".", "_",
//     "~") are decoded and the remaining escapes get upper-case hex (RFC 3986
//     section 6.2.2). Decoding comes first, so "%2E%2E" is a ".." segment.
//   - An encoded slash "%2F" is a separator, as it is to every server that
//     resolves the decoded path (nginx, PHP, Go): "/x%2F..%2Fdoc" is "/doc".
//     Servers that keep it apart (Apache, Tomcat) refuse it by default, and
//     a merge costs them only a shared lock.
//   - Other reserved characters keep their form: the sub-delims
//     "!$&'()*+,;=" as well as ":" and "@" stay raw or encoded as they
//     arrived. Backends differ on them: a
//     servlet container takes a raw ";" as the start of path parameters and
//     strips them, while "%3B" is part of the name. For the same reason path
//     parameters stay part of their segment, so "..;" is not a dot-segment.
//   - Bytes that may not appear raw in a URL (space, controls, bytes above
//     0x7F, and delimiters such as "[", "?" or "#") have no meaning but the
//     byte itself, so they are escaped and merge with their escaped form. A
//     "%" that does not start a valid escape is taken as a literal "%" and
//     becomes "%25". Every key is thus a valid URL component in one spelling,
//     whatever arrived.
//
// The functions take and return escaped strings, such as [net/url.URL]'s
// EscapedPath and RawQuery, and never fail. They return their argument
// unchanged, without allocating, when it is canonical already, which is
// nearly always.
package reskey
