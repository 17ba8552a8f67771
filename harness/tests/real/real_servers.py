#!/usr/bin/env python3
"""Real servers nobody on this project wrote, checked with their own recorded traffic.

For each server (dnsmasq's DNS over TCP, memcached's binary protocol, a Thrift service
on the thrift library's TFramedTransport server): start it on loopback, record its real
client's connections through `chopstick proxy --record`, then

- `chopstick check --traffic FILE` on 3 seeds must find 0 failures (exit 0);
- the same server behind a correct framed front (`broken_front.py ... none`) must pass;
- behind a deliberately broken one (`broken_front.py`: the header read with one recv,
  the body read with one recv) it must be caught (exit 1) with a reproducer that
  `chopstick replay` confirms (exit 1).

Not checked: the front's `one_request` bug (answer the first request, then close). The
differential oracle judges a server against its own unfaulted runs, and a server that
closes after one reply does so in those runs too: by design that is its behaviour, not
a fault's doing, so it passes. Catching it needs the recording's reply counts as a
floor for the baselines (open). No empty messages occur in these protocols, so the
dropped-empty-message bug does not apply either.

Every process is started in its own process group with a deadline, written to
WORKDIR/pids (so whoever runs this can kill what is left if this script itself is
killed), and its group is killed at the end, also on SIGTERM/SIGINT. Prints one line
per check and a closing `N passed, N failed` line; exits 1 on any failure.

Usage: real_servers.py CHOPSTICK_BINARY [WORKDIR]
Environment: REAL_SERVERS=dnsmasq,memcached,thrift (which to run, default all),
REAL_CONNECTIONS=N (connections per fault profile, default 8).
Needs: dnsmasq, memcached and thrift (Debian: dnsmasq-base, memcached, thrift-compiler)
and the Python packages dnspython, python-binary-memcached and thrift; `ci/real`
installs them and runs this.

memcached's frames carry an 8-byte header before the length field (magic, opcode, key
length...): its framing is `u32be,offset=8,adjust=12,keep`, so the recording holds
whole frames and replay sends them as recorded.
"""
import json
import os
import pwd
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
STEP_TIMEOUT = 120  # seconds any one command may take before it counts as hung
CONNECTIONS = os.environ.get("REAL_CONNECTIONS", "8")
PROCS = []
RESULTS = []
os.makedirs(WORK, exist_ok=True)
PIDS = os.path.join(WORK, "pids")
with open(PIDS, "w") as f:
    # This script's own pid (ci/real starts it as a process group leader).
    f.write(f"{os.getpid()}\n")
ROOT = os.geteuid() == 0
USER = pwd.getpwuid(os.geteuid()).pw_name


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
    # stderr to a file, not a pipe nobody reads: a chatty server must never block on it.
    log = open(os.path.join(WORK, f"{what.split()[0]}-{port}.log"), "w")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log,
                            start_new_session=True, **kw)
    log.close()
    track(proc)
    wait_port(port, proc, what)
    return proc


def track(proc):
    """Notes a started process (a process group leader) for stop() and ci/real."""
    PROCS.append(proc)
    with open(PIDS, "a") as f:
        f.write(f"{proc.pid}\n")


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
    """Runs a command to its end in its own process group; killed (group and all) after
    STEP_TIMEOUT, which raises subprocess.TimeoutExpired."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)
    track(proc)
    try:
        out, err = proc.communicate(timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(proc, signal.SIGKILL)
        raise
    finally:
        PROCS.remove(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def supports(flag):
    """Whether this chopstick's `check` takes `flag` (e.g. --concurrency)."""
    return flag in run([CHOPSTICK, "check", "--help"]).stdout


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
    print(f"# {name}: recorded {len(conns)} connections, {requests} requests", flush=True)
    return path


def check(name, what, target_port, framing, traffic, seed, want_rc, extra=()):
    report = os.path.join(WORK, f"{name}-{what}-s{seed}.json")
    arts = os.path.join(WORK, f"artifacts-{name}-{what}-s{seed}")
    argv = [CHOPSTICK, "check", "--connect", f"127.0.0.1:{target_port}", "--framing", framing,
            "--traffic", traffic, "--seed", str(seed), "--json", report,
            "--artifacts", arts, "--connections", CONNECTIONS, *extra]
    if want_rc == 1:
        argv.append("--fail-fast")  # one confirmed, shrunk failure is the proof
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
    print(f"{verdict} {name} {what} seed {seed}: rc {out.returncode} (want {want_rc}) {detail}".rstrip(),
          flush=True)
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
           f"--user={USER}", "--pid-file=", "--log-facility=-"], "dnsmasq", port)
    return port


def server_memcached():
    port = free_port()
    # -u only matters (and is required) as root.
    user = ["-u", USER] if ROOT else []
    start(["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", *user,
           "-B", "binary", "-m", "16", "-c", "256"], "memcached", port)
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
    ("memcached", server_memcached, "u32be,offset=8,adjust=12,keep", (8, 4, 12),
     [sys.executable, "mc_client.py"], []),
    ("thrift", server_thrift, "u32be", (0, 4, 0), [sys.executable, "thrift_client.py"], []),
]
# broken_front.py's bugs that a fault can reveal (see the docstring for one_request).
BUGS = ["single_recv_header", "single_recv_body"]


def terminated(signum, _frame):
    raise SystemExit(f"real_servers.py: signal {signum}, stopping")


def main():
    signal.signal(signal.SIGTERM, terminated)
    only = os.environ.get("REAL_SERVERS")
    # Sessions of one template share keys (memcached's counter `n`): one at a time.
    serial = ["--concurrency", "1"] if supports("--concurrency") else []
    try:
        for name, serve, framing, layout, client, extra in SERVERS:
            if only and name not in only.split(","):
                continue
            try:
                port = serve()
                extra = [*extra, *serial]
                traffic = record(name, port, framing, client)
                for seed in SEEDS:
                    check(name, "correct", port, framing, traffic, seed, 0, extra)
                correct_front = front(port, *layout, "none")
                check(name, "front-none", correct_front, framing, traffic, SEEDS[0], 0, extra)
                for bug in BUGS:
                    p = front(port, *layout, bug)
                    check(name, bug, p, framing, traffic, SEEDS[0], 1, extra)
            except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError) as e:
                print(f"FAIL {name}: {e}", flush=True)
                RESULTS.append(False)
    except (SystemExit, KeyboardInterrupt) as e:
        print(f"FAIL interrupted: {e or 'SIGINT'}", flush=True)
        RESULTS.append(False)
    finally:
        for p in list(PROCS):
            stop(p)
    passed = sum(RESULTS)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
