#!/usr/bin/env python3
"""keygate's CPU per request on each way a caller can speak to it, builds side by side.

    python3 bench/paths.py OLD_BINARY NEW_BINARY [...] [--rounds 3] [--seconds 5] [--rate 2000]

The job of bench/driver.py (prefix route, 10k-CIDR allowlist matched last, X-RJM-API-Key
injected over the caller's copy, keep-alive upstream, the same nginx stub), reached four
ways: HTTP/1.1 on plain TCP, HTTP/2 with prior knowledge on plain TCP, HTTP/1.1 over TLS
and HTTP/2 over TLS (ALPN). Each binary runs twice (a plain and a TLS listener, its
own ports; the certificate is made at run time by openssl and is for 127.0.0.1 only);
rounds interleave the binaries (order rotated), oha drives each path at a fixed rate
with 32 connections for --seconds, and keygate's CPU (the scheduler's run time of its
threads, driver.cpu_split) is divided by the 200 answers. Prints medians per path and binary, and new ÷ first per
round. All traffic is loopback; every load run is bounded; every daemon is a child.
Needs nginx, oha, openssl.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver as d  # noqa: E402

PATHS = ["h1", "h2c", "tls_h1", "tls_h2"]


def oha(port, tls, h2, rate, seconds):
    scheme = "https" if tls else "http"
    argv = ["taskset", "-c", str(d.ARGS.gen_cpu), "oha", "--no-tui", "--output-format", "json",
            "-z", f"{seconds}s", "-q", str(rate), "--latency-correction", "-c", "32",
            "-H", "X-RJM-API-Key: caller-dummy-key"]
    if tls:
        argv.append("--insecure")
    if h2:
        argv.append("--http2")
    argv.append(f"{scheme}://{d.HOST}:{port}/export/0.1/export")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"oha failed: {r.stderr[-2000:]}")
    j = json.loads(r.stdout)
    codes = {str(k): v for k, v in (j.get("statusCodeDistribution") or {}).items()}
    return codes.get("200", 0), sum(codes.values()) - codes.get("200", 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rate", type=int, default=2000)
    a = ap.parse_args()
    work = d.side_by_side("paths")
    cidrs = d.cidr_list(10_000)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{work}/tls.key", "-out", f"{work}/tls.crt", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    base = d.keygate_config(work, cidrs)
    d.write(f"{work}/stub.conf", d.stub_config(work))
    runs = []  # (name, binary, config, port, admin, tls)
    for i, binary in enumerate(a.binaries):
        for tls in (False, True):
            name = f"k{i}{'-tls' if tls else ''}"
            port, admin = 18140 + 2 * i + tls, 18160 + 2 * i + tls
            config = base.replace(f':{d.PORTS["keygate"]}"', f':{port}"').replace(
                f':{d.PORTS["keygate_admin"]}"', f':{admin}"')
            if tls:
                config = config.replace("[admin]", f'[server.tls]\ncert = "{work}/tls.crt"\nkey = "{work}/tls.key"\n[admin]', 1)
            d.write(f"{work}/{name}.toml", config)
            runs.append((f"k{i}", os.path.abspath(binary), f"{work}/{name}.toml", port, admin, tls))
    results = {}
    try:
        stub = d.start("stub", ["nginx", "-c", f"{work}/stub.conf", "-p", work, "-e", f"{work}/stub.err"], d.ARGS.gen_cpu)
        d.check_answer("direct")
        for rnd in range(a.rounds):
            for build, binary, config, port, admin, tls in d.rotate(runs, rnd):
                p = d.start(build, [binary, "run", "-c", config], d.ARGS.proxy_cpu)
                d.wait_http(admin, "/readyz", timeout=60)
                for h2 in (False, True):
                    path = ("tls_" if tls else "") + ("h2" if h2 else "h1")
                    path = "h2c" if path == "h2" else path
                    oha(port, tls, h2, a.rate, 1)  # warm-up: connections, pool, TLS sessions
                    before = d.cpu_split(p.pid)
                    ok, failed = oha(port, tls, h2, a.rate, a.seconds)
                    us = d.cpu_per_request(before, d.cpu_split(p.pid), ok)[0]
                    results.setdefault((path, build), []).append(us)
                    d.log(f"round {rnd} {path:7} {build}: {us:.1f} µs/request, ok {ok}, failed {failed}")
                    if failed:
                        raise RuntimeError(f"{build} {path}: {failed} failed requests")
                d.stop(p)
        d.stop(stub)
    finally:
        d.stop_all()
    with open(f"{work}/results.json", "w") as f:
        json.dump({f"{k[0]}/{k[1]}": v for k, v in results.items()}, f, indent=1)
    builds = sorted({b for _, b in results})
    for i, binary in enumerate(a.binaries):
        print(f"k{i} = {binary}")
    print(f"keygate CPU µs per request at {a.rate} req/s, median of {a.rounds} rounds (÷ k0 per round, median)")
    print("path    " + "".join(f"{b:>18}" for b in builds))
    for path in PATHS:
        row = f"{path:8}"
        for b in builds:
            v = results.get((path, b), [])
            ratio = statistics.median(x / y for x, y in zip(v, results[(path, "k0")])) if v else 0
            row += f"{statistics.median(v):10.1f} ({ratio:4.2f}×)" if v else " " * 18
        print(row)
    print(f"raw samples: {work}/results.json")


if __name__ == "__main__":
    main()
