#!/usr/bin/env python3
"""User-space instructions per request, under callgrind (BENCHMARKS.md, round 7).

    python3 bench/instructions.py N1 N2 NAME=KEYGATE_BINARY... [nginx] [haproxy] [--cache]

Each candidate serves bench/driver.py's job (prefix route, 10k-CIDR allowlist matched
last, key injected over the caller's copy) against the nginx stub, under
`valgrind --tool=callgrind --trace-children=yes`, once for N1 and once for N2 sequential
requests on one keep-alive connection; (Ir(N2) - Ir(N1)) / (N2 - N1) is what one request
costs in user space, start-up and shutdown cancelled out. Unlike CPU time, the count
does not depend on what else the machine runs. nginx runs with `master_process off`
(its worker's counts are then the process's). Loopback only; needs valgrind and nginx.

With --cache, callgrind also simulates the caches and branch predictor
(`--cache-sim=yes --branch-sim=yes`, the host's cache sizes) and each candidate's line
adds data reads and writes, L1 instruction and data misses and mispredicted branches
per request, by the same difference (BENCHMARKS.md, round 15).
"""
import glob, os, re, socket, subprocess, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver as d
CACHE = "--cache" in sys.argv
args = [a for a in sys.argv[1:] if a != "--cache"]
n1, n2 = int(args[0]), int(args[1])
cands = args[2:]
work = d.side_by_side("instructions")
d.CIDRS = d.cidr_list(10_000)
d.write(f"{work}/keygate.toml", d.keygate_config(work, d.CIDRS))
d.write(f"{work}/stub.conf", d.stub_config(work))
d.write(f"{work}/allow.geo", d.geo_text(d.CIDRS))
d.write(f"{work}/allow.txt", "\n".join(d.CIDRS) + "\n")
d.write(f"{work}/nginx.conf", "master_process off;\n" + d.nginx_config(work, f"{work}/allow.geo"))
d.write(f"{work}/haproxy.cfg", d.haproxy_config(work, f"{work}/allow.txt"))
VG = ["valgrind", "--tool=callgrind", "--trace-children=yes"] + (["--cache-sim=yes", "--branch-sim=yes"] if CACHE else [])
def run(cand, binary, n):
    out = f"{work}/callgrind.{cand}.{n}"
    for f in glob.glob(out + ".*"): os.remove(f)
    vg = VG + [f"--callgrind-out-file={out}.%p"]
    if cand == "nginx": argv = vg + ["nginx", "-c", f"{work}/nginx.conf", "-p", work, "-e", f"{work}/nginx.err"]; port = d.PORTS["nginx"]; kind = "nginx"
    elif cand == "haproxy": argv = vg + ["haproxy", "-W", "-db", "-f", f"{work}/haproxy.cfg"]; port = d.PORTS["haproxy"]; kind = "haproxy"
    else: argv = vg + [binary, "run", "-c", f"{work}/keygate.toml"]; kind = "keygate"
    p = d.start(cand, argv, 1)
    if kind == "keygate": d.wait_http(d.PORTS["keygate_admin"], "/readyz", timeout=300)
    port, path, key = d.target(kind)
    deadline = time.time() + 120
    while True:
        try: s = socket.create_connection(("127.0.0.1", port)); break
        except OSError:
            if time.time() > deadline: raise
            time.sleep(0.2)
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-RJM-API-Key: {key}\r\n\r\n".encode()
    for _ in range(n):
        s.sendall(req); buf = b""
        while b'{"ok":true}' not in buf:
            c = s.recv(65536)
            if not c: raise RuntimeError(f"{cand}: closed")
            buf += c
    s.close()
    d.stop(p)
    time.sleep(1)
    totals = {}
    for f in glob.glob(out + ".*"):
        text = open(f).read()
        events = re.search(r"^events: (.*)$", text, re.M)
        m = re.search(r"^summary: (.*)$", text, re.M) or re.search(r"^totals: (.*)$", text, re.M)
        if not (events and m):
            continue
        for event, count in zip(events.group(1).split(), m.group(1).split()):
            totals[event] = totals.get(event, 0) + int(count)
    return totals
try:
    stub = d.start("stub", ["nginx", "-c", f"{work}/stub.conf", "-p", work, "-e", f"{work}/stub.err"], 0)
    for c in cands:
        name, _, binary = c.partition("=")
        a, b = run(name, binary, n1), run(name, binary, n2)
        per = {e: (b.get(e, 0) - a.get(e, 0)) / (n2 - n1) for e in b}
        line = f"{name}: {per['Ir']:.0f} instructions per request (Ir {a['Ir']} at {n1}, {b['Ir']} at {n2})"
        if CACHE:
            line += "; per request: " + ", ".join(
                f"{label} {per.get(e, 0):.0f}"
                for e, label in [("Dr", "data reads"), ("Dw", "data writes"), ("I1mr", "I1 misses"),
                                 ("D1mr", "D1 read misses"), ("D1mw", "D1 write misses"), ("Bcm", "mispredicted branches")]
            )
        print(line, flush=True)
finally:
    d.stop_all()
