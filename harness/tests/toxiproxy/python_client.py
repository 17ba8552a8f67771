"""Drives `chopstick proxy --api` with the real toxiproxy-python client (PyPI 0.1.1).

Run by harness/tests/proxy_api.rs: argv = API port, echo upstream address.
Every toxic is observed from outside, through sockets; bounds are generous (a busy
machine only makes things slower, so lower bounds on time are safe, upper ones loose).
Prints one line per check; exits non-zero on the first failure.
"""
import socket
import struct
import sys
import threading
import time

import requests
from toxiproxy import Toxiproxy
from toxiproxy.exceptions import NotFound, ProxyExists

API_PORT = int(sys.argv[1])
ECHO = sys.argv[2]
BASE = "http://127.0.0.1:%d" % API_PORT
WAIT = 20  # seconds: no socket operation may block longer


def ok(what):
    print("ok:", what, flush=True)


def connect(proxy):
    host, port = proxy.listen.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=WAIT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s, n):
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def roundtrip(proxy, payload=b"ping"):
    s = connect(proxy)
    start = time.monotonic()
    s.sendall(payload)
    got = recv_exactly(s, len(payload))
    took = time.monotonic() - start
    s.close()
    assert got == payload, got
    return took


def read_until_eof(s, limit=1 << 22):
    reads, total = [], b""
    while len(total) < limit:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        reads.append(len(chunk))
        total += chunk
    return reads, total


def frames(n, size):
    return b"".join(struct.pack(">I", size) + bytes([i % 251]) * size for i in range(n))


t = Toxiproxy()
t.update_api_consumer("127.0.0.1", API_PORT)
assert t.running()
assert b"chopstick" in t.version(), t.version()
t.destroy_all()
ok("version")

p = t.create(upstream=ECHO, name="echo")
assert p.listen.startswith("127.0.0.1:") and not p.listen.endswith(":0"), p.listen
assert "echo" in t.proxies()
assert t.get_proxy("echo").upstream == ECHO
roundtrip(p)
ok("create and list")

# Toxiproxy's status codes, through the client's exceptions and raw.
r = requests.post(BASE + "/proxies", json={"name": "echo", "upstream": ECHO})
assert r.status_code == 409 and r.json() == {"error": "proxy already exists", "status": 409}, r.text
try:
    t.create(upstream=ECHO, name="echo")
    raise AssertionError("duplicate accepted")
except ProxyExists:
    pass
r = requests.get(BASE + "/proxies/nope")
assert r.status_code == 404 and r.json()["error"] == "proxy not found", r.text
try:
    p.destroy_toxic("nope")
    raise AssertionError("missing toxic deleted")
except NotFound:
    pass
r = requests.post(BASE + "/proxies", data="{not json")
assert r.status_code == 400 and r.json()["error"].startswith("bad request body"), r.text
r = requests.post(BASE + "/proxies", json={"name": "x"})
assert r.status_code == 400 and r.json()["error"] == "missing required field: upstream", r.text
r = requests.post(BASE + "/proxies/echo/toxics", json={"type": "nope"})
assert r.status_code == 400 and r.json()["error"] == "invalid toxic type", r.text
r = requests.get(BASE + "/version", headers={"User-Agent": "Mozilla/5.0"})
assert r.status_code == 403, r.status_code
ok("status codes")

# disable / enable
p.disable()
try:
    host, port = p.listen.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=2)
    s.close()
    raise AssertionError("disabled proxy accepted a connection")
except ConnectionRefusedError:
    pass
assert t.get_proxy("echo").enabled is False
p.enable()
roundtrip(p)
with p.down():
    assert t.get_proxy("echo").enabled is False
roundtrip(p)
ok("disable and enable")

# latency, on a connection opened before the toxic: live change.
s = connect(p)
s.sendall(b"a")
assert recv_exactly(s, 1) == b"a"
p.add_toxic(type="latency", attributes={"latency": 300, "jitter": 0})
start = time.monotonic()
s.sendall(b"b")
assert recv_exactly(s, 1) == b"b"
took = time.monotonic() - start
assert took >= 0.28, took
p.destroy_toxic("latency_downstream")
s.close()
assert roundtrip(p) < took + 10
ok("latency %.0f ms (asked 300) on a live connection" % (took * 1000))

# bandwidth: 50 KB at 50 KB/s takes about a second.
p.add_toxic(type="bandwidth", attributes={"rate": 50})
s = connect(p)
data = b"x" * 50000
start = time.monotonic()
s.sendall(data)
assert recv_exactly(s, len(data)) == data
took = time.monotonic() - start
s.close()
assert took >= 0.9, took
p.destroy_toxic("bandwidth_downstream")
ok("bandwidth: 50 KB in %.2f s at 50 KB/s" % took)

# slicer: one 2000-byte write arrives as many reads.
p.add_toxic(type="slicer", attributes={"average_size": 20, "size_variation": 5, "delay": 3000})
s = connect(p)
s.sendall(b"y" * 2000)
reads, total = [], b""
while len(total) < 2000:
    chunk = s.recv(1 << 16)
    assert chunk
    reads.append(len(chunk))
    total += chunk
s.close()
assert total == b"y" * 2000
assert len(reads) >= 20, reads
p.destroy_toxic("slicer_downstream")
ok("slicer: 2000 bytes in %d reads" % len(reads))

# limit_data: the connection closes after 100 bytes.
p.add_toxic(type="limit_data", attributes={"bytes": 100})
s = connect(p)
s.sendall(b"z" * 300)
reads, total = read_until_eof(s)
s.close()
assert total == b"z" * 100, len(total)
p.destroy_toxic("limit_data_downstream")
ok("limit_data: closed after %d bytes" % len(total))

# reset_peer: the client's first bytes reset the connection.
p.add_toxic(type="reset_peer", stream="upstream", attributes={"timeout": 0})
s = connect(p)
s.sendall(b"boom")
try:
    got = s.recv(100)
    raise AssertionError("no reset, got %r" % got)
except ConnectionResetError:
    pass
s.close()
p.destroy_toxic("reset_peer_upstream")
ok("reset_peer resets")

# timeout: data stops while the toxic is there (0 = hold); flows again once removed.
s = connect(p)
p.add_toxic(type="timeout", attributes={"timeout": 0})
s.sendall(b"lost")
s.settimeout(1.0)
try:
    got = s.recv(100)
    raise AssertionError("data passed a timeout toxic: %r" % got)
except socket.timeout:
    pass
s.settimeout(WAIT)
p.destroy_toxic("timeout_downstream")
s.sendall(b"back")
assert recv_exactly(s, 4) == b"back"
s.close()
p.add_toxic(type="timeout", attributes={"timeout": 300})
s = connect(p)
s.sendall(b"lost")
start = time.monotonic()
reads, total = read_until_eof(s)
took = time.monotonic() - start
s.close()
assert total == b"" and took >= 0.25, (total, took)
p.destroy_toxic("timeout_downstream")
ok("timeout stops data; timeout=300 closed after %.2f s" % took)

# slow_close: the FIN comes back late.
p.add_toxic(type="slow_close", attributes={"delay": 300})
s = connect(p)
s.sendall(b"q")
assert recv_exactly(s, 1) == b"q"
start = time.monotonic()
s.shutdown(socket.SHUT_WR)
reads, total = read_until_eof(s)
took = time.monotonic() - start
s.close()
assert took >= 0.28, took
p.destroy_toxic("slow_close_downstream")
ok("slow_close: FIN after %.2f s" % took)

# chopstick's frame-aware toxics: every read ends at a frame boundary cut.
FRAME = 24  # u32be header + 20-byte body
ALLOWED = {0, 1, 2, 3, 4, 5, 14, 23}  # length field, header end, body first/middle/last, frame end
p.add_toxic(type="boundary", name="b", attributes={"framing": "u32be", "pause_us": 3000, "seed": 7})
shown = p.get_toxic("b")
assert shown.attributes["framing"] == "u32be" and shown.attributes["seed"] == 7, shown.attributes
s = connect(p)
s.sendall(frames(10, 20))
got, ends = b"", []
while len(got) < 10 * FRAME:
    chunk = s.recv(1 << 20)
    assert chunk
    got += chunk
    ends.append(len(got))
s.close()
assert got == frames(10, 20)
bad = [e for e in ends if e % FRAME not in ALLOWED]
assert not bad and len(ends) >= 5, (ends, bad)
p.destroy_toxic("b")
ok("boundary toxic: %d reads, all ending at frame cuts" % len(ends))

p.add_toxic(type="disconnect", name="d", attributes={"framing": "u32be", "mode": "close", "at": "mid-header"})
s = connect(p)
s.sendall(frames(10, 20))
reads, total = read_until_eof(s)
s.close()
assert total and len(total) % FRAME in (1, 2, 3), len(total)
p.destroy_toxic("d")
ok("disconnect toxic: closed after %d bytes, inside a length field" % len(total))

# The same toxics on the client-to-server stream, as the README asks for them
# (`add_toxic(type="boundary", stream="upstream", attributes={"framing": "u32be"})`),
# seen where they matter: at the upstream server's reads.
def record_reads(listener, out):
    """Accepts one connection, records where each read ended until EOF."""
    conn, _ = listener.accept()
    conn.settimeout(WAIT)
    ends, total = [], 0
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        total += len(chunk)
        ends.append(total)
    conn.close()
    out.append(ends)


def upstream_read_ends(toxic):
    """Sends ten 20-byte frames through a fresh proxy carrying `toxic` (add_toxic's
    keyword arguments); where the upstream server's reads ended."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(WAIT)
    out = []
    reader = threading.Thread(target=record_reads, args=(listener, out))
    reader.start()
    proxy = t.create(upstream="127.0.0.1:%d" % listener.getsockname()[1], name="framed")
    proxy.add_toxic(**toxic)
    s = connect(proxy)
    s.sendall(frames(10, 20))
    s.shutdown(socket.SHUT_WR)
    reader.join(WAIT)
    s.close()
    listener.close()
    proxy.destroy()
    assert out, "the upstream saw no end of stream"
    return out[0]


ends = upstream_read_ends(dict(type="boundary", stream="upstream", attributes={"framing": "u32be"}))
bad = [e for e in ends if e % FRAME not in ALLOWED]
assert ends[-1] == 10 * FRAME and not bad and len(ends) >= 5, (ends, bad)
ok("boundary toxic upstream: %d reads at the server, all ending at frame cuts" % len(ends))

ends = upstream_read_ends(dict(type="split", stream="upstream",
                               attributes={"framing": "u32be", "max": 4, "pause_us": 3000}))
sizes = [b - a for a, b in zip([0] + ends, ends)]
assert ends[-1] == 10 * FRAME and len(ends) >= 20, ends
ok("split toxic upstream: %d reads at the server, %d bytes at most" % (len(ends), max(sizes)))

# populate (client-side, as toxiproxy-python does it) and reset.
made = t.populate([{"name": "two", "upstream": ECHO, "listen": "127.0.0.1:0"}])
assert len(made) == 1 and "two" in t.proxies()
two = t.get_proxy("two")
roundtrip(two)
p.add_toxic(type="latency", attributes={"latency": 5000})
two.disable()
assert t.reset()
assert p.toxics() == {} and t.get_proxy("two").enabled is True
assert roundtrip(p) < 4.5
ok("populate and reset")

# destroy
assert p.destroy() and two.destroy()
assert t.proxies() == {}
ok("destroy")
print("all python checks passed")
