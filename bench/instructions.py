#!/usr/bin/env python3
"""User-space instructions per request, under callgrind (BENCHMARKS.md, round 7).

    python3 bench/instructions.py N1 N2 NAME=KEYGATE_BINARY... [nginx] [haproxy]

Each candidate serves bench/driver.py's job (prefix route, 10k-CIDR allowlist matched
last, key injected over the caller's copy) against the nginx stub, under
`valgrind --tool=callgrind --trace-children=yes`, once for N1 and once for N2 sequential
requests on one keep-alive connection; (Ir(N2) - Ir(N1)) / (N2 - N1) is what one request
costs in user space, start-up and shutdown cancelled out. Unlike CPU time, the count
does not depend on what else the machine runs. nginx runs with `master_process off`
(its worker's counts are then the process's). Loopback only; needs valgrind and nginx.
"""
import glob, os, re, socket, subprocess, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver as d
n1, n2 = int(sys.argv[1]), int(sys.argv[2])
cands = sys.argv[3:]
work = d.side_by_side("instructions")
d.CIDRS = d.cidr_list(10_000)
d.write(f"{work}/keygate.toml", d.keygate_config(work, d.CIDRS))
d.write(f"{work}/stub.conf", d.stub_config(work))
d.write(f"{work}/allow.geo", d.geo_text(d.CIDRS))
d.write(f"{work}/allow.txt", "\n".join(d.CIDRS) + "\n")
d.write(f"{work}/nginx.conf", "master_process off;\n" + d.nginx_config(work, f"{work}/allow.geo"))
d.write(f"{work}/haproxy.cfg", d.haproxy_config(work, f"{work}/allow.txt"))
VG = ["valgrind", "--tool=callgrind", "--trace-children=yes"]
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
    total = 0
    for f in glob.glob(out + ".*"):
        m = re.search(r"^summary: (\d+)", open(f).read(), re.M) or re.search(r"^totals: (\d+)", open(f).read(), re.M)
        total += int(m.group(1)) if m else 0
    return total
try:
    stub = d.start("stub", ["nginx", "-c", f"{work}/stub.conf", "-p", work, "-e", f"{work}/stub.err"], 0)
    for c in cands:
        name, _, binary = c.partition("=")
        a, b = run(name, binary, n1), run(name, binary, n2)
        print(f"{name}: {(b - a) / (n2 - n1):.0f} instructions per request (Ir {a} at {n1}, {b} at {n2})", flush=True)
finally:
    d.stop_all()
