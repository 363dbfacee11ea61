#!/usr/bin/env bash
# Builds Caddy with write_guard (as pinned in xcaddy.json), starts the naive
# legacy backend on 127.0.0.1:9001 with Caddy in front of it on
# localhost:8080, and walks through the requests that show what the guard
# does. With --once it stops after the walkthrough; otherwise both keep
# running for you to try more requests until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v curl >/dev/null || { echo "the walkthrough needs curl (apt-get install curl)" >&2; exit 1; }

echo "==> building Caddy with write_guard (the first build takes a few minutes)"
go -C tools run ./buildcaddy -config ../xcaddy.json -output ../bin/caddy
go build -o bin/legacy-backend ./examples/backend/cmd/legacy-backend

pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bin/legacy-backend -listen 127.0.0.1:9001 -write-delay 50ms 2>bin/backend.log &
pids+=($!)
bin/caddy run --config examples/Caddyfile --adapter caddyfile 2>bin/caddy.log &
pids+=($!)

base=http://localhost:8080
for _ in $(seq 100); do
	curl -fs -o /dev/null "$base/notes/1" && break
	sleep 0.1
done
curl -fs -o /dev/null "$base/notes/1" || { echo "Caddy did not come up; see bin/caddy.log" >&2; exit 1; }

# show runs a curl command, printing it first, then the status line, the
# headers that matter and the body.
show() {
	echo
	local line="\$ curl -i" arg
	for arg in "$@"; do
		if [[ $arg =~ ^[-A-Za-z0-9_./:=]+$ ]]; then line+=" $arg"; else line+=" '$arg'"; fi
	done
	echo "$line"
	curl -s -i "$@" | tr -d '\r' | grep -iE '^(HTTP/|ETag|Content-Type|Retry-After|Idempotent-Replayed|\{|\[)' || true
}
etag() { curl -s -o /dev/null -D - "$base$1" | tr -d '\r' | sed -n 's/^[Ee][Tt]ag: //p'; }

echo
echo "==> Caddy with write_guard on $base, in front of a backend that applies every write last-writer-wins"
echo "    A read passes through and shows the version (ETag):"
show "$base/notes/1"

echo
echo "==> A write without a precondition could overwrite a change it never saw: 428"
show -X PUT -d '{"title":"shopping","items":["eggs"]}' "$base/notes/1"

tag=$(etag /notes/1)
echo
echo "==> A conditional write naming the current version goes through"
show -X PUT -H "If-Match: $tag" -d '{"title":"shopping","items":["milk","bread"]}' "$base/notes/1"

echo
echo "==> Another client still holding the old version: 412, the backend is not touched"
show -X PUT -H "If-Match: $tag" -d '{"title":"shopping","items":["milk","eggs"]}' "$base/notes/1"

echo
echo "==> Create-only: If-None-Match: * succeeds once, then 412"
show -X PUT -H 'If-None-Match: *' -d '{"title":"todo"}' "$base/notes/2"
show -X PUT -H 'If-None-Match: *' -d '{"title":"todo, again"}' "$base/notes/2"

echo
echo "==> Two writes racing with the same If-Match: exactly one reaches the backend"
tag=$(etag /notes/1)
curl -s -o /dev/null -w 'first:  %{http_code}\n' -X PUT -H "If-Match: $tag" -d '{"by":"alice"}' "$base/notes/1" &
curl -s -o /dev/null -w 'second: %{http_code}\n' -X PUT -H "If-Match: $tag" -d '{"by":"bob"}' "$base/notes/1" &
wait %3 %4 2>/dev/null || wait
echo "final:  $(curl -s "$base/notes/1")"

echo
echo "==> A create whose answer was lost, retried with the same Idempotency-Key: the first answer, not a 412"
show -X PUT -H 'If-None-Match: *' -H 'Idempotency-Key: "create-notes-3"' -d '{"title":"groceries"}' "$base/notes/3"
show -X PUT -H 'If-None-Match: *' -H 'Idempotency-Key: "create-notes-3"' -d '{"title":"groceries"}' "$base/notes/3"
echo "    The same retry without a key: the note exists, so 412"
show -X PUT -H 'If-None-Match: *' -d '{"title":"groceries"}' "$base/notes/3"

echo
echo "==> A conditional write whose answer was lost, retried: its stored 200, though its If-Match is now stale"
tag=$(etag /notes/3)
show -X PUT -H "If-Match: $tag" -H 'Idempotency-Key: "edit-notes-3"' -d '{"title":"groceries","items":["tea"]}' "$base/notes/3"
show -X PUT -H "If-Match: $tag" -H 'Idempotency-Key: "edit-notes-3"' -d '{"title":"groceries","items":["tea"]}' "$base/notes/3"
echo "    The same key with another body: 422"
show -X PUT -H "If-Match: $tag" -H 'Idempotency-Key: "edit-notes-3"' -d '{"title":"groceries","items":["coffee"]}' "$base/notes/3"

if [ "${1:-}" = "--once" ]; then
	exit 0
fi
echo
echo "==> Caddy is on $base (logs in bin/caddy.log), the backend on http://127.0.0.1:9001. Ctrl-C stops both."
wait
