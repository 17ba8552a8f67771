#!/usr/bin/env python3
"""Times `chopstick check` on every zoo server and prints a markdown table (issue 14).

Usage: python3 harness/tests/zoo/time_zoo.py [--exe target/release/chopstick]
                                             [--broken-seeds 1,2,3,4,5] [--correct-seeds 1,2,3]
                                             [--only NAME] [--extra 'ARGS ...']

Broken servers: `check --fail-fast` at the default workload, once per broken seed: wall
time to exit (start-up, pre-flight, concurrency probe, the first failure shrunk and
confirmed). Correct servers: a full default check, once per correct seed. Each row gives
the median and the max over seeds, the exit codes (1 expected for broken, 0 for correct),
the concurrency the probe chose and the load average, since the figures mean little on a
busy machine. Build first: `cargo build --release`. Every run is bounded (RUN_DEADLINE).
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
RUN_DEADLINE = 600  # seconds; a run that takes longer is reported as a timeout
# The interpreter itself, not a version manager's shim: pyenv's `python3` is a bash
# script that costs ~90 ms per start here, and a check restarts a broken server for
# every failing run it shrinks or confirms. That is the machine's cost, not chopstick's.
PY = sys.executable


def z(name):
    return os.path.join(HERE, name)


# (name, spawn command, extra check arguments)
BROKEN = [
    ("broken.py single_read_header", f"{PY} {z('broken.py')} {{port}} single_read_header", []),
    ("broken.py single_read_body", f"{PY} {z('broken.py')} {{port}} single_read_body", []),
    ("broken.js one_read_one_message", f"node {z('broken.js')} {{port}} one_read_one_message", []),
    ("broken.py dies_on_cut", f"{PY} {z('broken.py')} {{port}} dies_on_cut", []),
    ("broken.py spins_on_eof", f"{PY} {z('broken.py')} {{port}} spins_on_eof", []),
    ("broken.js drops_empty", f"node {z('broken.js')} {{port}} drops_empty", []),
    ("broken.py truncates_large", f"{PY} {z('broken.py')} {{port}} truncates_large", []),
    ("varint.py single_recv_len", f"{PY} {z('varint.py')} {{port}} single_recv_len", ["--framing", "varint"]),
    ("netstring.js digits_per_chunk", f"node {z('netstring.js')} {{port}} digits_per_chunk", ["--framing", "netstring"]),
    ("noisy.py --bug (differential)", f"{PY} {z('noisy.py')} {{port}} --bug", ["--oracle", "differential"]),
    ("raw_exec.py small_recv", f"{PY} {z('raw_exec.py')} {{port}} small_recv",
     ["--framing", "raw", "--reply-framing", "i32le", "--oracle", "upper", "--max-size", "4KiB"]),
]
CORRECT = [
    ("correct.py", f"{PY} {z('correct.py')} {{port}}", []),
    ("correct.py --delay-ms 3", f"{PY} {z('correct.py')} {{port}} --delay-ms 3", []),
    ("correct.py --sequential", f"{PY} {z('correct.py')} {{port}} --sequential", []),
    ("correct.js", f"node {z('correct.js')} {{port}}", []),
    ("varint.py correct", f"{PY} {z('varint.py')} {{port}} correct", ["--framing", "varint"]),
    ("netstring.js correct", f"node {z('netstring.js')} {{port}} correct", ["--framing", "netstring"]),
    ("noisy.py (differential)", f"{PY} {z('noisy.py')} {{port}}", ["--oracle", "differential"]),
    ("raw_exec.py correct", f"{PY} {z('raw_exec.py')} {{port}} correct",
     ["--framing", "raw", "--reply-framing", "i32le", "--oracle", "upper", "--max-size", "4KiB"]),
]


def run(exe, cmd, seed, args, fail_fast):
    """One check: (seconds, exit code, concurrency, findings)."""
    with tempfile.TemporaryDirectory() as d:
        report = os.path.join(d, "report.json")
        argv = [exe, "check", "--spawn", cmd, "--seed", str(seed), "--json", report,
                "--artifacts", d] + args
        if fail_fast:
            argv.append("--fail-fast")
        start = time.monotonic()
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=RUN_DEADLINE)
            code = p.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        took = time.monotonic() - start
        conc, findings = "?", "?"
        try:
            with open(report) as f:
                r = json.load(f)
            conc = r.get("concurrency", "?")
            findings = len(r.get("findings", []))
        except (OSError, ValueError):
            pass
        return took, code, conc, findings


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exe", default=os.path.join(ROOT, "target", "release", "chopstick"))
    ap.add_argument("--broken-seeds", default="1,2,3,4,5")
    ap.add_argument("--correct-seeds", default="1,2,3")
    ap.add_argument("--only", help="only servers whose name contains this")
    ap.add_argument("--extra", default="", help="more check arguments for every run")
    a = ap.parse_args()
    if not os.access(a.exe, os.X_OK):
        sys.exit(f"{a.exe}: not built (cargo build --release)")
    extra = shlex.split(a.extra)
    groups = [(BROKEN, [int(s) for s in a.broken_seeds.split(",")], True),
              (CORRECT, [int(s) for s in a.correct_seeds.split(",")], False)]
    print("| server | mode | seeds | median (s) | max (s) | exit codes | findings | concurrency | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for servers, seeds, fail_fast in groups:
        for name, cmd, args in servers:
            if a.only and a.only not in name:
                continue
            results = [run(a.exe, cmd, s, args + extra, fail_fast) for s in seeds]
            times = [r[0] for r in results]
            load = os.getloadavg()[0]
            print(f"| {name} | {'--fail-fast' if fail_fast else 'full check'} | {len(seeds)} "
                  f"| {statistics.median(times):.1f} | {max(times):.1f} "
                  f"| {','.join(str(r[1]) for r in results)} "
                  f"| {','.join(str(r[3]) for r in results)} "
                  f"| {','.join(str(r[2]) for r in results)} | {load:.1f} |", flush=True)


if __name__ == "__main__":
    main()
