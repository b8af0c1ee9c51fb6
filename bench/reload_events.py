#!/usr/bin/env python3
"""keygate's CPU while a watched directory is busy with files it does not read.

    python3 bench/reload_events.py BINARY [BINARY ...] [--seconds 10] [--rate 1000] [--rounds 3]

For each binary (e.g. an old and a new build of target/release/keygate), in a fresh temp
directory: keygate.toml and its secret file side by side, keygate started on that config
(gateway and admin on 127.0.0.1 port 0, stdout in a file outside the watched directory).
Once it has made its start-up look, two windows of --seconds each:
  idle: nothing happens;
  busy: a file beside the config (busy.log, never named by the config) gets --rate
        appends a second on one open descriptor, i.e. --rate inotify IN_MODIFY events/s.
CPU is keygate's utime+stime from /proc/PID/stat (clock ticks, shown in ms; threads
that ended count too) before and after each window. Rounds alternate the binaries; the
medians are printed. No traffic is sent at all; every
window is bounded by --seconds; each keygate is this script's child, stopped by pid.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = """[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[secrets.echo]
file = "{key}"

[[routes]]
name = "echo"
prefix = "/echo"
upstream = "http://127.0.0.1:9"
inject = {{ header = "X-Api-Key" }}
secret = "echo"
allow = ["127.0.0.0/8"]
"""


def stat_ms(pid):
    """utime + stime of the whole process, in ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) * 1000.0 / CLK_TCK


def wait_line(log_path, message, deadline):
    while time.monotonic() < deadline:
        try:
            with open(log_path) as f:
                for line in f:
                    try:
                        if json.loads(line).get("message") == message:
                            return
                    except ValueError:
                        pass
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    sys.exit(f"no {message!r} line in {log_path} in time")


def measure(binary, seconds, rate):
    with tempfile.TemporaryDirectory() as root:
        conf_dir = os.path.join(root, "conf")
        os.mkdir(conf_dir)
        key = os.path.join(conf_dir, "key")
        with open(key, "w") as f:
            f.write("bench-reload-events-key\n")
        os.chmod(key, 0o600)
        config = os.path.join(conf_dir, "keygate.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(key=key))
        log_path = os.path.join(root, "keygate.log")
        with open(log_path, "w") as out:
            p = subprocess.Popen([binary, "run", "-c", config], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        try:
            wait_line(log_path, "listening", time.monotonic() + 30)
            # The start-up look follows the listening lines within milliseconds.
            time.sleep(1.0)

            before = stat_ms(p.pid)
            time.sleep(seconds)
            idle = stat_ms(p.pid) - before

            busy_path = os.path.join(conf_dir, "busy.log")
            fd = os.open(busy_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            written = 0
            try:
                before = stat_ms(p.pid)
                start = time.monotonic()
                end = start + seconds
                while True:
                    now = time.monotonic()
                    if now >= end:
                        break
                    # Catch up to the rate, then sleep to the next write's time.
                    due = int((now - start) * rate) + 1
                    while written < due:
                        os.write(fd, b"unrelated line %d\n" % written)
                        written += 1
                    time.sleep(max(0.0, start + written / rate - time.monotonic()))
                busy = stat_ms(p.pid) - before
            finally:
                os.close(fd)
            if p.poll() is not None:
                sys.exit(f"{binary} exited during the run")
            return {"idle_ms": idle, "busy_ms": busy, "events": written}
        finally:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=1000, help="unrelated events per second")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.seconds > 60 or a.rate > 20000:
        sys.exit("bounded: --seconds <= 60, --rate <= 20000")
    results = {b: [] for b in a.binaries}
    for r in range(a.rounds):
        order = a.binaries[r % len(a.binaries):] + a.binaries[:r % len(a.binaries)]
        for b in order:
            m = measure(b, a.seconds, a.rate)
            results[b].append(m)
            print(f"round {r + 1} {b}: {json.dumps(m)}", flush=True)
    print(f"\nmedians over {a.rounds} round(s), {a.seconds:g} s windows, {a.rate} unrelated events/s:")
    print(f"{'binary':<40} {'idle ms':>9} {'busy ms':>9} {'events':>8}")
    for b, ms in results.items():
        med = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
        print(f"{b:<40} {med['idle_ms']:>9.0f} {med['busy_ms']:>9.0f} {med['events']:>8.0f}")


if __name__ == "__main__":
    main()
