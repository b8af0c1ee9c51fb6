#!/usr/bin/env bash
# What a CONNECT tunnel costs keygate: plain HTTP/1.1 vs HTTP/1.1 in TLS in a CONNECT
# tunnel, per request (keep-alive) and per new connection, side by side in one run.
# The release keygate runs as a child pinned to CPU 1; the load generator and the stub
# upstream run pinned to CPU 0. Loopback only; every run is bounded by --seconds.
#
# Usage: bench/tunnel.sh [--rounds N] [--seconds S] [--conns C]   (defaults 3, 3, 16)
set -euo pipefail
cd "$(dirname "$0")/.."
if (($(nproc) < 2)); then
    echo "bench/tunnel.sh: needs 2 CPUs (generator on one, keygate on the other)" >&2
    exit 2
fi
cargo bench --locked --bench tunnel --no-run --quiet
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
taskset -c 0 cargo bench --locked --quiet --bench tunnel -- "$@"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
