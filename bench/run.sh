#!/usr/bin/env bash
# keygate load benchmark: direct vs keygate vs nginx vs HAProxy, side by side.
#
# Needs (Debian, as root):
#   apt-get update && apt-get install -y nginx haproxy wrk python3 util-linux curl
#   cargo install oha --locked
#
# Usage: bench/run.sh [--quick] [--rounds N] [--seconds S] [--rates 1000,5000,10000]
#                     [--only main,scaling,reload]
#   full run: 5 interleaved rounds, 8 s per run (~20 min); --quick: 1 round, 3 s per run.
# Traffic stays on 127.0.0.1 (ports 18080-18083, 18090); every run is time-bounded;
# every daemon it starts (nginx stub, nginx, HAProxy, keygate) is stopped on exit.
# Results: target/bench/<time>/summary.md (+ results.jsonl, the raw samples).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in nginx haproxy wrk oha taskset python3 curl cargo; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "bench/run.sh: missing tools: ${missing[*]}" >&2
    echo "  apt-get update && apt-get install -y nginx haproxy wrk python3 util-linux curl" >&2
    echo "  cargo install oha --locked" >&2
    exit 2
fi
if (($(nproc) < 2)); then
    echo "bench/run.sh: needs 2 CPUs (generator on one, proxy on the other)" >&2
    exit 2
fi
for port in 18080 18081 18082 18083 18090; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "bench/run.sh: 127.0.0.1:$port is already in use" >&2
        exit 2
    fi
done

cargo build --release --quiet --bin keygate
work="$PWD/target/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$work"
{
    echo "# machine"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "kernel: $(uname -r)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "nginx: $(nginx -v 2>&1 | sed 's/.*\///')  haproxy: $(haproxy -v | head -1 | cut -d' ' -f3)"
    echo "wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f2)  oha: $(oha --version | cut -d' ' -f2)"
    echo "keygate: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
} | tee "$work/machine.txt"
python3 bench/driver.py --work "$work" --keygate "$PWD/target/release/keygate" "$@"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$work/machine.txt"
echo "results: $work/summary.md"
