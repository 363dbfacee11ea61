#!/usr/bin/env bash
# The whole test suite, with everything it runs against: installs what is
# missing (redis-server, for the tests of store redis; npm, and with it the
# json-server of integration/jsonserver, for the tests of Idempotency-Key in
# front of a real REST app; nginx-light, a real file server with WebDAV and
# mtime-size ETags, and chromium, a real browser with its HTTP cache, for
# the tests of etags auto) when it can, then vets and runs every test under
# the race detector. With CI set, tests that need a missing program fail
# rather than skip.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v npm >/dev/null || missing+=(npm)
# nginx lives in /usr/sbin, which is not in every PATH.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get update -qq && apt-get install -y -qq "${missing[@]}"
		# The packages start servers on the default ports; the tests run their own.
		if command -v service >/dev/null; then
			service redis-server stop >/dev/null 2>&1 || true
			service nginx stop >/dev/null 2>&1 || true
		fi
	else
		echo "missing: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})" >&2
		exit 1
	fi
fi

# json-server, at the version integration/jsonserver/package-lock.json pins.
if [ ! -x integration/jsonserver/node_modules/.bin/json-server ]; then
	npm ci --prefix integration/jsonserver --no-audit --no-fund
fi

go vet ./...
go test -race -count=1 ./...
