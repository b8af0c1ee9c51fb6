#!/usr/bin/env python3
"""Idle PSS of keygate builds beside nginx and HAProxy (BENCHMARKS.md, round 7).

    python3 bench/pss.py KEYGATE_BINARY... 

Each candidate is started with bench/driver.py's job (10k-CIDR allowlist) and its PSS
(`/proc/PID/smaps_rollup`, master and workers summed) read 1 s and 6 s after all are
ready. Give each keygate build its own file: processes running one file share its
pages, and PSS splits them. For a cold start as a new pod has, drop the page cache first
(`sync; echo 3 > /proc/sys/vm/drop_caches`, as root). Loopback only.
"""
import os
import subprocess
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver as d
work = d.side_by_side("pss")
d.CIDRS = d.cidr_list(10_000)
base = d.keygate_config(work, d.CIDRS)
d.write(f"{work}/stub.conf", d.stub_config(work))
d.write(f"{work}/allow.geo", d.geo_text(d.CIDRS)); d.write(f"{work}/allow.txt", "\n".join(d.CIDRS) + "\n")
d.write(f"{work}/nginx.conf", d.nginx_config(work, f"{work}/allow.geo")); d.write(f"{work}/haproxy.cfg", d.haproxy_config(work, f"{work}/allow.txt"))
def pss(pid):
    t = 0
    for p in d.tree(pid):
        for l in open(f"/proc/{p}/smaps_rollup"):
            if l.startswith("Pss:"): t += int(l.split()[1])
    return t
try:
    stub = d.start("stub", ["nginx", "-c", f"{work}/stub.conf", "-p", work, "-e", f"{work}/stub.err"], 0)
    procs = {}
    for i, b in enumerate(sys.argv[1:]):
        name, port, admin = f"k{i}", 18100 + i, 18120 + i
        d.PORTS[name] = port
        d.write(f"{work}/{name}.toml", base.replace(f':{d.PORTS["keygate"]}"', f':{port}"').replace(f':{d.PORTS["keygate_admin"]}"', f':{admin}"'))
        procs[name] = d.start(name, [b, "run", "-c", f"{work}/{name}.toml"], 1)
        d.wait_http(admin, "/readyz", timeout=60); d.check_answer(name)
    for peer in ["nginx", "haproxy"]:
        procs[peer] = d.start_proxy(peer, 1)
    for wait in (1, 5):
        time.sleep(wait)
        print(f"after +{wait}s:", "  ".join(f"{c} {pss(p.pid)/1024:.1f} MiB" for c, p in procs.items()), flush=True)
    for c, p in procs.items():
        if c.startswith("k"):
            print(c, "threads:", subprocess.run(["ps", "-L", "-o", "comm=", "-p", str(p.pid)], capture_output=True, text=True).stdout.split())
finally:
    d.stop_all()
