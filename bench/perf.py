#!/usr/bin/env python3
"""Where each candidate's CPU time goes, by sampling (BENCHMARKS.md, round 9).

    python3 bench/perf.py KEYGATE_BINARY [--rate 5000] [--seconds 8] [--top 25]

keygate and nginx serve bench/driver.py's job (prefix route, 10k-CIDR allowlist matched
last, key injected over the caller's copy) against the nginx stub, one after the other,
each at the same fixed rate from oha while `perf record -e cpu-clock` samples every
thread of it. Prints, per candidate, the CPU µs per request (the scheduler's run time,
as ab.py reads it) split by where the samples fell (kernel, the binary, libc, vDSO), and
the top symbols in µs per request. Sampling adds its own cost to every candidate alike:
read the split and the ratios, not the absolute figures. Loopback only; needs perf
(root, or perf_event_paranoid ≤ 1), oha and nginx.
"""
import argparse
import collections
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver as d  # noqa: E402


def samples(data, key):
    """(symbol or object -> samples) from `perf report`, and the total."""
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                          "--sort", key, "-F", "sample," + key, "--percent-limit", "0"],
                         capture_output=True, text=True).stdout
    found = collections.Counter()
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            found[parts[1].strip()] += int(parts[0])
    return found, sum(found.values())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("keygate")
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    work = d.side_by_side("perf")
    d.ARGS.keygate = os.path.abspath(a.keygate)
    d.CIDRS = d.cidr_list(10_000)
    d.write(f"{work}/keygate.toml", d.keygate_config(work, d.CIDRS))
    d.write(f"{work}/stub.conf", d.stub_config(work))
    d.write(f"{work}/allow.geo", d.geo_text(d.CIDRS))
    d.write(f"{work}/nginx.conf", d.nginx_config(work, f"{work}/allow.geo"))
    report = []
    try:
        d.start("stub", ["nginx", "-c", f"{work}/stub.conf", "-p", work, "-e", f"{work}/stub.err"], d.ARGS.gen_cpu)
        for cand in ["keygate", "nginx"]:
            p = d.start_proxy(cand, d.ARGS.proxy_cpu)
            time.sleep(1)
            data = f"{work}/{cand}.data"
            pids = ",".join(str(pid) for pid in d.tree(p.pid))
            rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "10000", "-p", pids,
                                    "-o", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            before = d.cpu_split(p.pid)
            r = d.oha(cand, a.rate, a.seconds)
            cpu, _, _ = d.cpu_per_request(before, d.cpu_split(p.pid), r["ok"])
            rec.send_signal(2)
            rec.wait(timeout=60)
            d.stop(p)
            report.append((cand, cpu, data))
    finally:
        d.stop_all()
    for cand, cpu, data in report:
        by_object, total = samples(data, "dso")
        by_symbol, _ = samples(data, "sym")
        per = cpu / total if total else 0.0
        print(f"{cand}: {cpu:.1f} µs per request while sampled")
        for name, n in by_object.most_common(6):
            print(f"  {n * per:7.2f} µs  {name}")
        print("  top symbols:")
        for name, n in by_symbol.most_common(a.top):
            print(f"  {n * per:7.2f} µs  {name}")
    print(f"perf data: {work}")


if __name__ == "__main__":
    main()
