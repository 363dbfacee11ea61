#!/usr/bin/env bash
# Builds the same Caddy as CI (xcaddy.json) and runs the load benchmark:
# plain reverse_proxy against write_guard + reverse_proxy on loopback,
# alternating A/B/B/A (GETs of tagged resources, GETs of untagged ones that
# etags auto hashes, conditional PUTs), then 64 writers on one resource, the
# lost-update workload and date-validated writes on one resource.
# Arguments go to bench/loadbench (see -help); -before-caddy bin measures a
# Caddy built from an earlier commit beside this one. Bounded: about
# 4 × reps × duration per workload, plus the contention and date runs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
	if [ "$(id -u)" = 0 ]; then
		apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
	else
		echo "the load benchmark needs wrk (apt-get install wrk)" >&2
		exit 1
	fi
fi

go -C tools run ./buildcaddy -config ../xcaddy.json -output ../bin/caddy >/dev/null
go build -o bin/loadbench ./bench/loadbench
exec bin/loadbench -caddy bin/caddy "$@"
