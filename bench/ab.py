#!/usr/bin/env python3
"""Side-by-side comparison of keygate builds (see BENCHMARKS.md, "Comparing builds").

    python3 bench/ab.py OLD_BINARY NEW_BINARY [...] [--rounds 3] [--seconds 5] [--peers]
                        [--floor target/release/examples/floor]

Every binary serves the job of bench/driver.py (prefix route, 10k-CIDR allowlist matched
last, X-RJM-API-Key injected over the caller's copy, keep-alive upstream) on its own port,
against the same nginx stub; rounds interleave the candidates (order rotated). Per round:
RSS idle and per idle keep-alive connection, CPU µs/request (and its user and kernel
parts) under oha at a fixed rate (proxy alone on its core), and wrk capacity (proxy + stub on one core). Prints medians.
All traffic is loopback; every load run is bounded by --seconds; every daemon is a child
stopped on exit. Needs the tools of bench/run.sh.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver as d  # noqa: E402

METRICS = ["cpu_us", "user_us", "sys_us", "rps", "p50_ms", "p99_ms", "idle_kib", "per_conn_kib", "failed"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--idle", type=int, default=1000, help="idle keep-alive connections held")
    ap.add_argument("--peers", action="store_true", help="also run nginx and HAProxy")
    ap.add_argument("--floor", metavar="BINARY",
                    help="also run examples/floor.rs (cargo build --release --example floor)")
    a = ap.parse_args()
    work = d.side_by_side("ab")
    d.CIDRS = d.cidr_list(10_000)
    base = d.keygate_config(work, d.CIDRS)
    d.write(f"{work}/stub.conf", d.stub_config(work))
    d.write(f"{work}/allow.geo", d.geo_text(d.CIDRS))
    d.write(f"{work}/allow.txt", "\n".join(d.CIDRS) + "\n")
    d.write(f"{work}/nginx.conf", d.nginx_config(work, f"{work}/allow.geo"))
    d.write(f"{work}/haproxy.cfg", d.haproxy_config(work, f"{work}/allow.txt"))
    builds = []
    for i, binary in enumerate(a.binaries):
        name, port, admin = f"k{i}", 18100 + i, 18120 + i
        d.PORTS[name] = port
        config = base.replace(f':{d.PORTS["keygate"]}"', f':{port}"').replace(
            f':{d.PORTS["keygate_admin"]}"', f':{admin}"')
        d.write(f"{work}/{name}.toml", config)
        builds.append((name, os.path.abspath(binary), admin))
    results = {}

    def rec(cand, metric, value):
        results.setdefault((cand, metric), []).append(value)

    try:
        stub = d.start("stub", ["nginx", "-c", f"{work}/stub.conf", "-p", work, "-e", f"{work}/stub.err"], d.ARGS.gen_cpu)
        d.check_answer("direct")
        for rnd in range(a.rounds):
            procs = {}
            d.pin(stub.pid, d.ARGS.gen_cpu)
            for name, binary, admin in builds:
                procs[name] = d.start(name, [binary, "run", "-c", f"{work}/{name}.toml"], d.ARGS.proxy_cpu)
                d.wait_http(admin, "/readyz", timeout=60)
                d.check_answer(name)
            cands = [name for name, _, _ in builds]
            if a.peers:
                for peer in ["nginx", "haproxy"]:
                    procs[peer] = d.start_proxy(peer, d.ARGS.proxy_cpu)
                    cands.append(peer)
            if a.floor:
                d.PORTS["floor"] = 18130
                argv = [os.path.abspath(a.floor), "18130", str(d.PORTS["stub"]), f"{work}/export.key"]
                procs["floor"] = d.start("floor", argv, d.ARGS.proxy_cpu)
                d.check_answer("floor")
                cands.append("floor")
            time.sleep(1)
            for c in d.rotate(cands, rnd):
                pid = procs[c].pid
                rec(c, "idle_kib", d.rss_kib(pid))
                port, path, key = d.target(c)
                socks = d.hold_idle(port, path, key, a.idle)
                time.sleep(1)
                rec(c, "per_conn_kib", (d.rss_kib(pid) - results[(c, "idle_kib")][-1]) / a.idle)
                for s in socks:
                    s.close()
            for c in d.rotate(cands, rnd):
                pid = procs[c].pid
                before = d.cpu_split(pid)
                r = d.oha(c, a.rate, a.seconds)
                for metric, value in zip(("cpu_us", "user_us", "sys_us"),
                                         d.cpu_per_request(before, d.cpu_split(pid), r["ok"])):
                    rec(c, metric, value)
                rec(c, "p50_ms", r["p50_ms"])
                rec(c, "p99_ms", r["p99_ms"])
                rec(c, "failed", r["failed"])
            d.pin(stub.pid, d.ARGS.proxy_cpu)
            for c in d.rotate(cands, rnd):
                r = d.wrk(c, a.seconds)
                rec(c, "rps", r["rps"])
                rec(c, "failed", r["failed"])
            for p in procs.values():
                d.stop(p)
            d.log(f"round {rnd} done")
    finally:
        d.stop_all()
    with open(f"{work}/results.json", "w") as f:
        json.dump({f"{c}/{m}": v for (c, m), v in results.items()}, f, indent=1)
    for name, binary, _ in builds:
        print(f"{name} = {binary}")
    print(f"median of {a.rounds} rounds; CPU at {a.rate} req/s; failed = oha + wrk failures summed")
    print("candidate" + "".join(m.rjust(14) for m in METRICS))
    for c in sorted({c for c, _ in results}):
        row = [statistics.median(results[(c, m)]) if m != "failed" else sum(results[(c, m)]) for m in METRICS]
        print(c.ljust(9) + "".join(f"{v:14.2f}" for v in row))
    print(f"raw samples: {work}/results.json")


if __name__ == "__main__":
    main()
