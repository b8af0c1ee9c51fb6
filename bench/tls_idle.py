#!/usr/bin/env python3
"""RSS per idle TLS keep-alive connection of a keygate binary.

    python3 bench/tls_idle.py target/release/keygate [N]   # N connections (default 1000)

Starts the binary on a TLS listener (a throw-away self-signed certificate made with
openssl in a temp directory) in front of a local stub, opens N connections that each
negotiate ALPN http/1.1, make one request and stay open, and prints the growth of
keygate's VmRSS divided by N. Loopback only; every wait is bounded.
"""
import http.server, os, socket, ssl, subprocess, sys, tempfile, threading, time
binary, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
up = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H); threading.Thread(target=up.serve_forever, daemon=True).start()
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
d = tempfile.mkdtemp(prefix="keygate-tls-idle-")
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "1", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
fd = os.open(f"{d}/k", os.O_WRONLY | os.O_CREAT, 0o600); os.write(fd, b"bench-key"); os.close(fd)
cfg = f'''[server]
listen = "127.0.0.1:{port}"
worker_threads = 1
max_connections = 5000
[server.tls]
cert = "{d}/cert.pem"
key = "{d}/key.pem"
[log]
access = false
level = "warn"
[secrets.k]
file = "{d}/k"
[[routes]]
name = "r"
prefix = "/r"
secret = "k"
upstream = "http://127.0.0.1:{up.server_address[1]}"
inject = {{ header = "x-key" }}
methods = ["GET"]
allow = ["127.0.0.1"]
'''
open(f"{d}/kg.toml", "w").write(cfg)
p = subprocess.Popen([binary, "run", "-c", f"{d}/kg.toml"])
ctx = ssl.create_default_context(cafile=f"{d}/cert.pem"); ctx.set_alpn_protocols(["http/1.1"])
deadline = time.time() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.05)
def rss():
    return int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1])
def one():
    c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    c.sendall(b"GET /r/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    got = b""
    while not got.endswith(b"ok"): got += c.recv(4096)
    return c
warm = [one() for _ in range(20)]
time.sleep(1); before = rss()
conns = [one() for _ in range(n)]
time.sleep(1); after = rss()
print(f"{binary}: {(after - before) / n:.1f} KiB per idle TLS connection ({n} held)")
for c in conns + warm: c.close()
p.terminate(); p.wait(5)
up.shutdown()
for name in ("kg.toml", "cert.pem", "key.pem", "k"):
    os.remove(f"{d}/{name}")
os.rmdir(d)
