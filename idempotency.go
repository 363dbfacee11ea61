package writeguard

// Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): a client
// names each logical write with a key and sends it again on every retry of
// that write; the guard forwards the first attempt only, and answers every
// retry with the first attempt's answer, for every method in `idempotency
// methods` (POST PUT PATCH DELETE by default), guarded or not.
//
// # Where it runs
//
// The idempotency step wraps the rest of the guard: ServeHTTP hands a
// request carrying a key to serveIdempotent, which decides on the record
// before anything else (preconditions, the lock) and, for a new key, runs
// the usual path (serveWrite for guarded methods, serveUnguarded for the
// others) under a recorder of its answer. A retried conditional PUT whose
// first attempt was applied therefore gets that attempt's 200, not the 412
// its If-Match, naming the version it replaced itself, would now earn.
//
// # What a record is, and its key
//
// A record's id is a SHA-256 over the method (the one a method override
// field names, if any), the resource key (the guard's `key`), a SHA-256 of
// the `scope` value (a placeholder template, default the Authorization
// field) and the client's key: one client can never be answered with
// another's record, nor one resource's answer replayed for another. Stores
// see only the id, so neither keys nor credentials stand in Redis.
//
// Beside its state, a record holds the request's fingerprint: a SHA-256 of
// the request method, the target (path and query as sent), the body, and
// the fields that change a body's meaning (Content-Type, Content-Encoding,
// Content-Language and the method override fields; `fingerprint` adds
// others). The preconditions are not part of it: they say which version a
// change is based on, not what the change is, so a client that re-read the
// resource after a lost answer and retries with a new If-Match learns from
// the replay that its first attempt was applied. A key sent again with a
// request of another fingerprint is answered 422 idempotency-key-reused.
//
// # States
//
//	absent     no record (never seen, expired, evicted, released, forgotten):
//	           the request claims the key and is served as usual
//	in flight  an attempt is being served: a retry gets 409
//	           idempotency-in-flight with Retry-After, or with `wait` waits
//	           for the attempt to end, at most that long
//	finished   the attempt's answer is stored for `ttl`: a retry gets it
//	           replayed with Idempotent-Replayed: true, without reaching the
//	           upstream, the lock or the preconditions
//	unknown    the attempt was forwarded and its answer lost: a retry gets
//	           409 idempotency-outcome-unknown, for `ttl`
//
// Stored (finished): the upstream's 2xx and 4xx answers, except 408, 425
// and 429, which ask for a retry. Released (absent again): the guard's own
// refusals (428, 412, 409 busy, 413, 400, 503 store unavailable: nothing
// reached the upstream, so a retry is judged afresh), the upstream's 1xx
// upgrades, 3xx and 5xx answers other than 502 and 504, and requests that
// never reached the upstream.
//
// # Lost answers
//
// A request with a key is served on a context that outlives the client: a
// client that gives up (its own timeout, a cut connection, a proxy in
// between giving up) does not cancel the upstream request, whose answer is
// stored for the retry; once the client has gone, write_timeout bounds how
// long that lasts. What remains lost is an answer that never came from the
// upstream, after the request was forwarded: write_timeout elapsed, the
// upstream cut the connection, a gateway behind the guard answered 502 or
// 504. The upstream may have applied the write. Forwarding the retry could
// apply it twice, so the record becomes unknown: the retry is refused with
// 409 idempotency-outcome-unknown, whose text tells the client to GET the
// resource to see whether its change is there and, if it is not, to send
// it again under a new key. The key is never released for such a write.
//
// # Large answers
//
// The answer's status and its headers that describe the result (ETag,
// Location, Content-Type, Last-Modified, ... and `replay_headers`; never
// Set-Cookie unless listed there) are always stored. Its body is stored
// when it is at most `max_body`; a larger one is not, and its replay
// carries the status and headers with an empty body and
// Idempotent-Body-Omitted: true (Content-Type dropped). It is still never
// applied twice.
//
// # Stores
//
// Records live where the handler's `store` says (idemstore.go). In memory,
// the records of every handler sharing the bound `max_memory` (bytes,
// counted from the stored bodies and headers) survive reloads in the
// pool; records in flight are never evicted; finished ones are evicted
// oldest first when the bound is reached, counted in
// caddy_write_guard_idempotency_evictions_total, since an evicted key can
// be applied again. In Redis a record is one key; a claim has its own TTL
// (`claim_ttl`), renewed every third of it while the request runs, so that
// an instance that dies frees its keys after claim_ttl and a live request
// is never taken for an orphan; the finished answer is kept for `ttl`.
// Redis unreachable: on_store_error fail refuses keyed requests with 503,
// local keeps their records in this process for as long as Redis fails.
