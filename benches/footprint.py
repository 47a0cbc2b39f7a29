#!/usr/bin/env python3
"""benches/footprint.py — startup time and memory of the licensegate binary.

Usage: benches/footprint.py [--bin target/release/licensegate] [--runs 20]
                            [--connections 10000]

Measures, on loopback only:
  1. exec → ready: time from spawning `licensegate run` (with the demo-like
     enforcing policy and a header license, so the policy compiles and the
     keyring loads) to the first `GET /readyz` that answers 200, polled every
     0.5 ms; median, min and max over --runs runs;
  2. RSS idle (VmRSS once ready);
  3. RSS with N idle keep-alive connections: N clients each send one request
     and keep their connection open; VmRSS and VmHWM after all N answered.

Prints a Markdown table and writes target/bench/footprint.json. The upstream
is a tiny in-process HTTP server; nothing leaves 127.0.0.1.
"""

import argparse
import http.server
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

POLICY = open(os.path.join(ROOT, "benches/enforcing-policy.yaml")).read()


class Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        # One thread per upstream connection here: close it, so 10,000
        # client connections do not mean 10,000 upstream threads. The
        # client side stays keep-alive.
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def readyz(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


STARTED = []


def stop_all():
    for proc in STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(binary, config):
    began = time.perf_counter()
    proc = subprocess.Popen([binary, "run", "--config", config],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "LICENSEGATE_LOG": "warn"})
    STARTED.append(proc)
    return proc, began


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/licensegate"))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--connections", type=int, default=10000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections * 2 + 1024)), hard))

    class Upstream(http.server.ThreadingHTTPServer):
        request_queue_size = 4096
        daemon_threads = True

    upstream = Upstream(("127.0.0.1", 0), Quiet)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp(prefix="licensegate-footprint.")
    subprocess.run([args.bin, "license", "keygen", "--kid", "bench", "--private", f"{tmp}/k.key",
                    "--public", f"{tmp}/bench.pem"], check=True, stdout=subprocess.DEVNULL)
    with open(f"{tmp}/claims.yaml", "w") as f:
        f.write("sub: lic-footprint\nlic:\n  plan: pro\n  features: [reports]\n  seats: 100\n")
    token = subprocess.run([args.bin, "license", "issue", "--key", f"{tmp}/k.key", "--kid", "bench",
                            "--claims", f"{tmp}/claims.yaml", "--ttl", "2h"],
                           check=True, capture_output=True, text=True).stdout.strip()
    with open(f"{tmp}/policy.yaml", "w") as f:
        f.write(POLICY)
    port, admin = free_port(), free_port()
    config = f"{tmp}/config.yaml"
    with open(config, "w") as f:
        f.write(f"listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin}\nworkers: 1\n"
                f"upstream: {{url: 'http://127.0.0.1:{upstream.server_address[1]}'}}\n"
                f"license: {{keys: '{tmp}/bench.pem', source: header}}\n"
                f"policy: {{paths: ['{tmp}/policy.yaml']}}\n"
                f"limits: {{max_connections: {args.connections + 100}}}\n")

    startups = []
    for _ in range(args.runs):
        proc, began = start(args.bin, config)
        deadline = began + 5
        while not readyz(admin):
            if time.perf_counter() > deadline or proc.poll() is not None:
                sys.exit("licensegate did not become ready")
            time.sleep(0.0005)
        startups.append((time.perf_counter() - began) * 1000)
        proc.terminate()
        proc.wait()

    proc, began = start(args.bin, config)
    while not readyz(admin):
        time.sleep(0.001)
    idle_kb = rss_kb(proc.pid, "VmRSS")
    request = (f"GET /x HTTP/1.1\r\nhost: app\r\nauthorization: Bearer {token}\r\n"
               f"x-user: alice\r\n\r\n").encode()
    sel = selectors.DefaultSelector()
    socks, statuses = [], {}

    def collect(timeout):
        events = sel.select(timeout=timeout)
        for key, _ in events:
            status = key.fileobj.recv(4096)[9:12].decode(errors="replace") or "closed"
            statuses[status] = statuses.get(status, 0) + 1
            sel.unregister(key.fileobj)
        return len(events)

    for i in range(args.connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
        # Keep the accept backlog short: collect answers as we go.
        while sum(statuses.values()) < i + 1 - 512:
            collect(5)
    while sum(statuses.values()) < args.connections:
        if not collect(10):
            sys.exit(f"only {sum(statuses.values())} of {args.connections} answered: {statuses}")
    if set(statuses) != {"200"}:
        sys.exit(f"not every request was answered 200: {statuses}")
    time.sleep(0.5)  # let the watchdogs settle; memory is what is held, not how fast
    held_kb = rss_kb(proc.pid, "VmRSS")
    peak_kb = rss_kb(proc.pid, "VmHWM")
    for s in socks:
        s.close()
    proc.terminate()
    proc.wait()

    result = {
        "startup_ms": {"median": statistics.median(startups), "min": min(startups),
                       "max": max(startups), "runs": len(startups)},
        "rss_idle_kb": idle_kb,
        "connections": args.connections,
        "rss_with_connections_kb": held_kb,
        "peak_kb": peak_kb,
        "per_connection_bytes": (held_kb - idle_kb) * 1024 // max(args.connections, 1),
    }
    os.makedirs(os.path.join(ROOT, "target/bench"), exist_ok=True)
    with open(os.path.join(ROOT, "target/bench/footprint.json"), "w") as f:
        json.dump(result, f, indent=2)
    print("| measure | value |\n|---|---:|")
    print(f"| exec → /readyz 200, median of {len(startups)} (min–max) | "
          f"{result['startup_ms']['median']:.1f} ms ({min(startups):.1f}–{max(startups):.1f}) |")
    print(f"| RSS idle (enforcing policy loaded) | {idle_kb / 1024:.1f} MiB |")
    print(f"| RSS with {args.connections:,} idle keep-alive connections | {held_kb / 1024:.1f} MiB "
          f"(peak {peak_kb / 1024:.1f} MiB, {result['per_connection_bytes']:,} B per connection) |")


if __name__ == "__main__":
    try:
        main()
    finally:
        # Also on failure: never leave a proxy holding 10,000 connections.
        stop_all()
