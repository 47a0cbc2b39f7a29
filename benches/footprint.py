#!/usr/bin/env python3
"""benches/footprint.py — startup time and memory: licensegate beside HAProxy and nginx.

Usage: benches/footprint.py [--bin target/release/licensegate] [--runs 20]
                            [--connections 4000] [--idle 12] [--settle 30]
                            [--proxies relay,hyper,haproxy,nginx]

Measures, on loopback only:
  1. exec → ready (licensegate): time from spawning `licensegate run` (with
     the benchmarks' enforcing policy and a header license, so the policy
     compiles and the keyring loads) to the first `GET /readyz` that answers
     200, polled every 0.5 ms; median, min and max over --runs runs;
  2. for each proxy in front of the same upstream, at one worker/thread —
     licensegate enforcing that policy with `http1: relay` and with
     `http1: hyper`, HAProxy (`http-reuse always`) and nginx (`keepalive` to
     the upstream), from benches/haproxy.cfg.tmpl and
     benches/nginx-proxy.conf.tmpl:
       - RSS idle: VmRSS once one request went through and things settled;
       - N idle keep-alive clients: each sends one request carrying the
         benchmark license (`authorization: Bearer <JWT>`, a ~390-byte header
         line, and `x-user`; byte-identical for every proxy), gets its 200 and
         keeps its connection open; VmRSS with all N held --idle seconds
         (default 12) after the last answer, and what that adds per
         connection over idle;
       - the upstream connections the proxy holds meanwhile (1 s and --idle
         seconds after the last answer): ESTABLISHED TCP sockets to the upstream's port among
         the proxy's own file descriptors (/proc/PID/fd and
         /proc/PID/net/tcp); licensegate runs with upstream.max_connections
         above N so that a burst of new clients is not refused for want of
         upstream connections (see licensegate_config);
       - RSS after the N clients closed: once the proxy holds none of them
         ("at close"), 5 s later and --settle seconds later, and that last
         figure over idle (does the memory go back?).
     RSS is VmRSS summed over the proxy's processes (nginx: master and
     worker; their shared pages are counted twice, which the idle figure
     carries too).

The upstream is a small selectors-based HTTP/1.1 server in a child process
(one thread, any number of keep-alive connections). Prints Markdown tables
and writes target/bench/footprint.json. Nothing leaves 127.0.0.1.
"""

import argparse
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHES = os.path.join(ROOT, "benches")
# nginx and haproxy live in /usr/sbin, which is not on every user's PATH.
PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"

POLICY = open(os.path.join(BENCHES, "enforcing-policy.yaml")).read()
PROXIES = ("relay", "hyper", "haproxy", "nginx")
LABEL = {
    "relay": "licensegate (http1: relay)",
    "hyper": "licensegate (http1: hyper)",
    "haproxy": "HAProxy",
    "nginx": "nginx",
}


def log(message):
    print(f"[footprint] {message}", file=sys.stderr, flush=True)


# === The upstream ===

UPSTREAM_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n"


def serve_upstream(port):
    """Answer every request head with a fixed 200, keeping connections open:
    one thread and a selector, so thousands of idle connections cost
    nothing. Requests have no body (the benchmark sends GETs)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    pending = {}
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if sock is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                pending[conn] = b""
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                pending.pop(sock, None)
                sock.close()
                continue
            buf = pending[sock] + data
            answers = buf.count(b"\r\n\r\n")
            pending[sock] = buf[buf.rfind(b"\r\n\r\n") + 4:] if answers else buf
            if answers:
                # A few dozen bytes per answer: the socket buffer takes them.
                sock.setblocking(True)
                try:
                    sock.sendall(UPSTREAM_RESPONSE * answers)
                except OSError:
                    pass
                sock.setblocking(False)


# === Processes ===

STARTED = []


def spawn(argv, **kwargs):
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kwargs)
    STARTED.append(proc)
    return proc


def children(pid):
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def stop(proc):
    """SIGTERM the process (nginx: fast shutdown of its workers too), then
    SIGKILL it and any child left after 5 s."""
    if proc.poll() is not None:
        return
    kids = children(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for kid in kids:
        try:
            os.kill(kid, signal.SIGKILL)
        except OSError:
            pass


def stop_all():
    for proc in STARTED:
        stop(proc)


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def render(template, out, **values):
    with open(os.path.join(BENCHES, template)) as f:
        text = f.read()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    if "@" in "".join(line for line in text.splitlines() if not line.lstrip().startswith("#")):
        sys.exit(f"unrendered placeholder left in {out}")
    with open(out, "w") as f:
        f.write(text)


# === /proc ===

def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pids):
    return sum(status_kb(pid, "VmRSS") for pid in pids)


def socket_inodes(pids):
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def established(pids, local_port=None, remote_port=None):
    """ESTABLISHED TCP sockets held by `pids` with that local or remote port."""
    inodes = socket_inodes(pids)
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pids[0]}/net/{table}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] != "01" or int(fields[9]) not in inodes:
                        continue
                    local = int(fields[1].rsplit(":", 1)[1], 16)
                    remote = int(fields[2].rsplit(":", 1)[1], 16)
                    if local == local_port or remote == remote_port:
                        count += 1
        except OSError:
            pass
    return count


# === Clients ===

def ask_once(port, request, timeout=1.0):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def readyz(port):
    return ask_once(port, b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", 0.2)


def open_clients(port, request, n):
    """N keep-alive clients, each answered once; returns their sockets."""
    sel = selectors.DefaultSelector()
    socks, statuses = [], {}

    def collect(timeout):
        events = sel.select(timeout=timeout)
        for key, _ in events:
            try:
                head = key.fileobj.recv(4096)
            except OSError:
                head = b""
            status = head[9:12].decode(errors="replace") or "closed"
            statuses[status] = statuses.get(status, 0) + 1
            sel.unregister(key.fileobj)
        return len(events)

    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
        # Keep the accept backlog short: collect answers as we go.
        while sum(statuses.values()) < i + 1 - 512:
            if not collect(10):
                break
    while sum(statuses.values()) < n:
        if not collect(10):
            break
    sel.close()
    if statuses != {"200": n}:
        for s in socks:
            s.close()
        raise RuntimeError(f"{sum(statuses.values())} of {n} answered: {statuses}")
    return socks


# === The proxies ===

class Target:
    """A proxy under test: its process(es), port and how to tell it is up."""

    def __init__(self, name, proc, port, ready):
        self.name, self.proc, self.port, self.ready = name, proc, port, ready

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)


def start_licensegate(args, tmp, engine, upstream_port):
    port, admin = free_ports(2)
    config = f"{tmp}/{engine}.yaml"
    with open(config, "w") as f:
        f.write(licensegate_config(tmp, port, admin, upstream_port, args.connections, engine))
    proc = spawn([args.bin, "run", "--config", config], stdout=subprocess.DEVNULL,
                 stderr=open(f"{tmp}/{engine}.log", "w"),
                 env={**os.environ, "LICENSEGATE_LOG": "warn"})
    return Target(engine, proc, port, lambda: readyz(admin))


def licensegate_config(tmp, port, admin, upstream_port, connections, engine):
    # upstream.max_connections above N: an inbound connection keeps its
    # upstream connection until it has been quiet for a watchdog period
    # (5-10 s by default), so N clients arriving within seconds hold up to N
    # upstream connections, and beyond the default 1024 the rest would get
    # 503 upstream_overloaded. The table shows how many are held.
    return (f"listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin}\nworkers: 1\n"
            f"upstream: {{url: 'http://127.0.0.1:{upstream_port}', "
            f"max_connections: {connections + 100}}}\n"
            f"license: {{keys: '{tmp}/bench.pem', source: header}}\n"
            f"policy: {{paths: ['{tmp}/policy.yaml']}}\n"
            f"http1: {engine}\n"
            # Set, not derived from a budget: the benchmark measures what N
            # connections cost, whatever a container would allow.
            f"limits: {{max_connections: {connections + 100}}}\n")


def start_haproxy(args, tmp, upstream_port, request):
    port, h2_port = free_ports(2)
    cfg = f"{tmp}/haproxy.cfg"
    render("haproxy.cfg.tmpl", cfg, PORT=port, H2_PORT=h2_port, UPSTREAM_PORT=upstream_port,
           WORKERS=1, MAXCONN=2 * args.connections + 1024)
    proc = spawn(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL,
                 stderr=open(f"{tmp}/haproxy.log", "w"), env={**os.environ, "PATH": PATH})
    return Target("haproxy", proc, port, lambda: ask_once(port, close_after(request)))


def start_nginx(args, tmp, upstream_port, request):
    port, h2_port = free_ports(2)
    d = f"{tmp}/nginx"
    os.makedirs(d)
    # Started as root, nginx runs its worker as "nobody": let it traverse.
    os.chmod(tmp, 0o755)
    os.chmod(d, 0o755)
    render("nginx-proxy.conf.tmpl", f"{d}/nginx.conf", DIR=d, PORT=port, H2_PORT=h2_port,
           UPSTREAM_PORT=upstream_port, WORKERS=1,
           WORKER_CONNECTIONS=2 * args.connections + 1024)
    proc = spawn(["nginx", "-p", f"{d}/", "-e", f"{d}/error.log", "-c", f"{d}/nginx.conf"],
                 stdout=subprocess.DEVNULL, stderr=open(f"{d}/stderr.log", "w"),
                 env={**os.environ, "PATH": PATH})
    return Target("nginx", proc, port, lambda: ask_once(port, close_after(request)))


def close_after(request):
    return request.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")


def wait_ready(target, seconds=10):
    deadline = time.monotonic() + seconds
    while not target.ready():
        if target.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{target.name} did not become ready (exit {target.proc.poll()})")
        time.sleep(0.01)


def measure(target, args, request, upstream_port):
    wait_ready(target)
    # One request through, so pools and lazy state exist before "idle".
    if not ask_once(target.port, close_after(request)):
        raise RuntimeError(f"{target.name} did not answer 200 to the benchmark request")
    time.sleep(1)
    pids = target.pids()
    idle = rss_kb(pids)
    began = time.monotonic()
    socks = open_clients(target.port, request, args.connections)
    opened_s = time.monotonic() - began
    answered = time.monotonic()
    time.sleep(1)
    pids = target.pids()
    upstream_soon = established(pids, remote_port=upstream_port)
    # Memory is what idle clients hold, not how fast it was reached: sample
    # once every proxy had time to let go of what an idle client needs no
    # more (licensegate gives a quiet client's upstream connection back
    # after 5-10 s).
    time.sleep(max(0.0, answered + args.idle - time.monotonic()))
    held = rss_kb(pids)
    held_clients = established(pids, local_port=target.port)
    upstream = established(pids, remote_port=upstream_port)
    for s in socks:
        s.close()
    closed = time.monotonic()
    deadline = closed + 10
    while established(pids, local_port=target.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = {"close": rss_kb(pids)}
    for label, delay in (("5s", 5), ("settle", args.settle)):
        time.sleep(max(0.0, closed + delay - time.monotonic()))
        after[label] = rss_kb(pids)
    return {
        "rss_idle_kb": idle,
        "rss_at_n_kb": held,
        "per_connection_bytes": (held - idle) * 1024 // max(args.connections, 1),
        "clients_held": held_clients,
        "upstream_connections_after_1s": upstream_soon,
        "upstream_connections_at_n": upstream,
        "open_seconds": round(opened_s, 2),
        "rss_at_close_kb": after["close"],
        "rss_close_plus_5s_kb": after["5s"],
        "rss_close_plus_settle_kb": after["settle"],
        "settle_over_idle": round(after["settle"] / idle, 2) if idle else None,
    }


# === Checks of the machine ===

def raise_file_limit(connections):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * connections + 1024
    if hard != resource.RLIM_INFINITY and hard < connections + 256:
        sys.exit(f"the hard open-file limit ({hard}) is below {connections} connections; "
                 f"raise it (ulimit -Hn) or pass fewer --connections")
    new = want if hard == resource.RLIM_INFINITY else min(hard, max(soft, want))
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def check_sysctls(connections):
    """Warn when the kernel's queues or ports are too small for N clients."""
    def read(path):
        try:
            with open(path) as f:
                return f.read().split()
        except OSError:
            return None
    somaxconn = read("/proc/sys/net/core/somaxconn")
    if somaxconn and int(somaxconn[0]) < 512:
        log(f"warning: net.core.somaxconn is {somaxconn[0]}; clients are opened at most 512 "
            f"ahead of their answers, so connects may stall")
    ports = read("/proc/sys/net/ipv4/ip_local_port_range")
    if ports:
        available = int(ports[1]) - int(ports[0]) + 1
        # Each client takes an ephemeral port; the proxies' upstream
        # connections take a few more.
        if available < connections + 2048:
            log(f"warning: only {available} ephemeral ports "
                f"(net.ipv4.ip_local_port_range {ports[0]}-{ports[1]}) for {connections} clients")
    return {"somaxconn": somaxconn[0] if somaxconn else None,
            "ip_local_port_range": " ".join(ports) if ports else None}


# === Main ===

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/licensegate"))
    ap.add_argument("--runs", type=int, default=20, help="startup runs (0: skip)")
    ap.add_argument("--connections", type=int, default=4000)
    ap.add_argument("--idle", type=int, default=12,
                    help="seconds the N clients idle before RSS and upstream connections are read")
    ap.add_argument("--settle", type=int, default=30,
                    help="seconds after the clients closed for the last RSS sample")
    ap.add_argument("--proxies", default=",".join(PROXIES),
                    help=f"comma-separated, of {', '.join(PROXIES)}")
    ap.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        return serve_upstream(args.serve_upstream)
    wanted = [p for p in args.proxies.split(",") if p]
    unknown = set(wanted) - set(PROXIES)
    if unknown:
        sys.exit(f"unknown proxies: {', '.join(sorted(unknown))}; expected {', '.join(PROXIES)}")
    if args.connections < 1 or args.settle < 5 or args.idle < 1:
        sys.exit("--connections and --idle must be at least 1, --settle at least 5")
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"licensegate binary not found: {args.bin} (cargo build --release, or --bin)")
    nofile = raise_file_limit(args.connections)
    machine = check_sysctls(args.connections)
    machine["nofile"] = nofile

    tmp = tempfile.mkdtemp(prefix="licensegate-footprint.")
    (upstream_port,) = free_ports(1)
    upstream = spawn([sys.executable, os.path.abspath(__file__), "--serve-upstream",
                      str(upstream_port)])
    subprocess.run([args.bin, "license", "keygen", "--kid", "bench", "--private", f"{tmp}/k.key",
                    "--public", f"{tmp}/bench.pem"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(f"{tmp}/claims.yaml", "w") as f:
        f.write("sub: lic-footprint\nlic:\n  plan: pro\n  features: [reports]\n  seats: 100\n")
    token = subprocess.run([args.bin, "license", "issue", "--key", f"{tmp}/k.key", "--kid", "bench",
                            "--claims", f"{tmp}/claims.yaml", "--ttl", "2h"],
                           check=True, capture_output=True, text=True).stdout.strip()
    with open(f"{tmp}/policy.yaml", "w") as f:
        f.write(POLICY)
    license_header = f"authorization: Bearer {token}"
    request = (f"GET /x HTTP/1.1\r\nhost: app\r\n{license_header}\r\n"
               f"x-user: alice\r\n\r\n").encode()
    deadline = time.monotonic() + 5
    while not ask_once(upstream_port, close_after(request)):
        if time.monotonic() > deadline:
            sys.exit("the upstream did not start")
        time.sleep(0.01)

    startups = []
    if args.runs:
        port, admin = free_ports(2)
        config = f"{tmp}/startup.yaml"
        with open(config, "w") as f:
            f.write(licensegate_config(tmp, port, admin, upstream_port, args.connections, "relay"))
        for _ in range(args.runs):
            began = time.perf_counter()
            proc = spawn([args.bin, "run", "--config", config], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, "LICENSEGATE_LOG": "warn"})
            while not readyz(admin):
                if time.perf_counter() > began + 5 or proc.poll() is not None:
                    sys.exit("licensegate did not become ready")
                time.sleep(0.0005)
            startups.append((time.perf_counter() - began) * 1000)
            stop(proc)

    results, skipped = {}, {}
    for name in wanted:
        if name in ("haproxy", "nginx") and not shutil.which(name, path=PATH):
            skipped[name] = "not installed"
            log(f"{name}: not installed, skipped")
            continue
        log(f"{LABEL[name]}: {args.connections} clients, then {args.settle} s after they close")
        if name in ("relay", "hyper"):
            target = start_licensegate(args, tmp, name, upstream_port)
        elif name == "haproxy":
            target = start_haproxy(args, tmp, upstream_port, request)
        else:
            target = start_nginx(args, tmp, upstream_port, request)
        try:
            results[name] = measure(target, args, request, upstream_port)
        except RuntimeError as error:
            skipped[name] = str(error)
            log(f"{name}: {error}")
        finally:
            stop(target.proc)
    stop(upstream)

    result = {
        "connections": args.connections,
        "idle_seconds": args.idle,
        "settle_seconds": args.settle,
        "request_bytes": len(request),
        "license_header_bytes": len(license_header),
        "machine": machine,
        "startup_ms": {"median": statistics.median(startups), "min": min(startups),
                       "max": max(startups), "runs": len(startups)} if startups else None,
        "proxies": results,
        "skipped": skipped,
    }
    os.makedirs(os.path.join(ROOT, "target/bench"), exist_ok=True)
    out = os.path.join(ROOT, "target/bench/footprint.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    shutil.rmtree(tmp, ignore_errors=True)
    report(result, startups)
    print(f"\nJSON: {out}")


def report(result, startups):
    n, settle, idle = result["connections"], result["settle_seconds"], result["idle_seconds"]

    def mib(kb):
        return f"{kb / 1024:.1f} MiB"

    print(f"### Memory: {n:,} idle keep-alive clients, one worker each\n")
    print(f"Each client sent one {result['request_bytes']}-byte request (a "
          f"{result['license_header_bytes']}-byte license header line), got 200 and idled; "
          f"RSS (VmRSS) and upstream connections read {idle} s after the last answer "
          f"(upstream connections also 1 s after it).\n")
    print(f"| proxy | RSS idle | RSS at {n:,} | per idle connection | upstream connections held "
          f"(+1 s / +{idle} s) | RSS at close | +5 s | +{settle} s | +{settle} s / idle |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in result["proxies"].items():
        print(f"| {LABEL[name]} | {mib(r['rss_idle_kb'])} | {mib(r['rss_at_n_kb'])} | "
              f"{r['per_connection_bytes']:,} B | "
              f"{r['upstream_connections_after_1s']} / {r['upstream_connections_at_n']} | "
              f"{mib(r['rss_at_close_kb'])} | {mib(r['rss_close_plus_5s_kb'])} | "
              f"{mib(r['rss_close_plus_settle_kb'])} | {r['settle_over_idle']:.2f} |")
    for name, why in result["skipped"].items():
        print(f"| {LABEL[name]} | skipped: {why} | | | | | | | |")
    for name, r in result["proxies"].items():
        if r["clients_held"] != n:
            print(f"\n**Note:** {LABEL[name]} held {r['clients_held']} of the {n} client "
                  f"connections when measured.")
    if startups:
        print("\n| licensegate start | value |\n|---|---:|")
        print(f"| exec → /readyz 200, median of {len(startups)} (min–max) | "
              f"{statistics.median(startups):.1f} ms ({min(startups):.1f}–{max(startups):.1f}) |")


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        # Also on failure: never leave a proxy holding thousands of connections.
        stop_all()
