#!/usr/bin/env python3
"""Real servers nobody on this project wrote, checked with their own recorded traffic.

For each server (dnsmasq's DNS over TCP, memcached's binary protocol, a Thrift service
on the thrift library's TFramedTransport server): start it on loopback, record its real
client's connections through `chopstick proxy --record`, then

- `chopstick check --traffic FILE` on 3 seeds must find 0 failures (exit 0);
- the same server behind a deliberately broken framed receiver (`broken_front.py`: the
  header read with one recv, the body read with one recv, one request per connection)
  must be caught (exit 1) with a reproducer that `chopstick replay` confirms (exit 1).

Every process is started with a deadline and killed at the end. Prints one line per
check and a closing `N passed, N failed` line; exits 1 on any failure.

Usage: real_servers.py CHOPSTICK_BINARY [WORKDIR]   (REAL_SERVERS=dnsmasq,... to choose)
Needs: dnsmasq, memcached and thrift-compiler (Debian), and dnspython,
python-binary-memcached and thrift (PyPI).

Status (not yet run by ci/run): dnsmasq passes on 3 seeds and every broken front is
caught. memcached does not work yet: a length spec with `offset=` decodes frames to
their body, so the recorded requests lose memcached's 8 header bytes (magic, opcode,
key length...) and are replayed with zeros there; the server then closes on every
request, and the liveness probe after a disconnect is reported as a hang. Replaying
offset framings needs whole frames in the recording. The thrift service is untried.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHOPSTICK = os.path.abspath(sys.argv[1])
WORK = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="chopstick-real-")
SEEDS = [1, 2, 3]
STEP_TIMEOUT = 240  # seconds any one command may take before it counts as hung
PROCS = []
RESULTS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {deadline}s")


def start(argv, what, port, **kw):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, **kw)
    PROCS.append(proc)
    wait_port(port, proc, what)
    return proc


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT, **kw)


def record(name, server_port, framing, client):
    """Runs `client` through a recording proxy; returns the traffic file."""
    port = free_port()
    path = os.path.join(WORK, f"{name}.traffic.json")
    proxy = start([CHOPSTICK, "proxy", "--listen", f"127.0.0.1:{port}",
                   "--upstream", f"127.0.0.1:{server_port}", "--framing", framing,
                   "--record", path, "--seed", "1"], "recording proxy", port)
    out = run(client + [str(port)], cwd=HERE)
    stop(proxy)
    if out.returncode != 0:
        raise RuntimeError(f"{name} client failed through the proxy: {out.stderr[-2000:]}")
    with open(path) as f:
        traffic = json.load(f)
    conns = traffic["connections"]
    requests = sum(len(c["requests"]) for c in conns)
    errors = sum(len(c["errors"]) for c in conns)
    if not conns or requests == 0 or errors:
        raise RuntimeError(f"{name}: bad recording ({len(conns)} conns, {requests} requests, {errors} errors)")
    print(f"# {name}: recorded {len(conns)} connections, {requests} requests")
    return path


def check(name, what, target_port, framing, traffic, seed, want_rc, extra=()):
    report = os.path.join(WORK, f"{name}-{what}-s{seed}.json")
    arts = os.path.join(WORK, f"artifacts-{name}-{what}-s{seed}")
    argv = [CHOPSTICK, "check", "--connect", f"127.0.0.1:{target_port}", "--framing", framing,
            "--traffic", traffic, "--seed", str(seed), "--json", report,
            "--artifacts", arts, *extra]
    out = run(argv)
    ok = out.returncode == want_rc
    detail = ""
    if ok and want_rc == 1:
        with open(report) as f:
            failures = json.load(f)["failures"]
        repro = next((x.get("reproducer") for x in failures if x.get("reproducer")), None)
        if repro is None:
            ok, detail = False, "no reproducer written"
        else:
            rep = run([CHOPSTICK, "replay", repro])
            ok = rep.returncode == 1
            detail = f"{failures[0]['class']}, replay rc {rep.returncode}"
    elif not ok:
        detail = (out.stdout + out.stderr)[-3000:]
    verdict = "ok" if ok else "FAIL"
    print(f"{verdict} {name} {what} seed {seed}: rc {out.returncode} (want {want_rc}) {detail}".rstrip())
    RESULTS.append(ok)


def front(upstream, offset, width, adjust, bug):
    port = free_port()
    start([sys.executable, os.path.join(HERE, "broken_front.py"), str(port), str(upstream),
           str(offset), str(width), str(adjust), bug], f"front ({bug})", port)
    return port


def server_dnsmasq():
    port = free_port()
    hosts = os.path.join(HERE, "dns.hosts")
    start(["dnsmasq", "-k", f"--port={port}", "--listen-address=127.0.0.1",
           "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
           "--user=root", "--pid-file=", "--log-facility=-"], "dnsmasq", port)
    return port


def server_memcached():
    port = free_port()
    start(["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-u", "root",
           "-B", "binary"], "memcached", port)
    return port


def server_thrift():
    gen = os.path.join(WORK, "gen")
    os.makedirs(gen, exist_ok=True)
    out = run(["thrift", "--gen", "py", "-out", gen, os.path.join(HERE, "calc.thrift")])
    if out.returncode != 0:
        raise RuntimeError(f"thrift compiler: {out.stderr}")
    port = free_port()
    env = dict(os.environ, THRIFT_GEN=gen)
    start([sys.executable, os.path.join(HERE, "thrift_server.py"), str(port)], "thrift server",
          port, env=env)
    os.environ["THRIFT_GEN"] = gen
    return port


# name, server, framing, (offset, width, adjust) for the front, client, check flags
SERVERS = [
    ("dnsmasq", server_dnsmasq, "u16be", (0, 2, 0), [sys.executable, "dns_client.py"], []),
    ("memcached", server_memcached, "u32be,offset=8,adjust=12", (8, 4, 12),
     [sys.executable, "mc_client.py"], ["--concurrency", "1"]),
    ("thrift", server_thrift, "u32be", (0, 4, 0), [sys.executable, "thrift_client.py"], []),
]
BUGS = ["single_recv_header", "single_recv_body", "one_request"]


def main():
    only = os.environ.get("REAL_SERVERS")
    try:
        for name, serve, framing, layout, client, extra in SERVERS:
            if only and name not in only.split(","):
                continue
            try:
                port = serve()
                traffic = record(name, port, framing, client)
                for seed in SEEDS:
                    check(name, "correct", port, framing, traffic, seed, 0, extra)
                correct_front = front(port, *layout, "none")
                check(name, "front-none", correct_front, framing, traffic, SEEDS[0], 0, extra)
                for bug in BUGS:
                    p = front(port, *layout, bug)
                    check(name, bug, p, framing, traffic, SEEDS[0], 1, extra)
            except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError) as e:
                print(f"FAIL {name}: {e}")
                RESULTS.append(False)
    finally:
        for p in PROCS:
            stop(p)
    passed = sum(RESULTS)
    failed = len(RESULTS) - passed
    print(f"real servers: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
