#!/usr/bin/env python3
"""Correct u32be echo servers for `chopstick bench`: same replies, different cost shapes.

Usage: bench_receiver.py PORT per_message|per_read

Both read into a buffer (recv of up to 64 KiB), answer every complete frame in it with
one sendall per read, and do the same fixed work per message (a few SHA-256 rounds over
the payload, standing in for parsing and handling a request).
- per_message: nothing else. Its CPU per message barely depends on how requests arrive.
- per_read: also keeps a chatty debug log per recv, as many servers do (what was read and
  from whom, the buffer before and after parsing, how many frames were answered):
  five lines per recv. Correct under any fragmentation, but 64-byte pieces
  cost it those lines per piece where whole pipelined writes cost them once per batch: a
  performance bug that no correctness check shows, and that `chopstick bench`'s paced
  profiles expose.

The constants are chosen so the per-message work dominates Python's own cost of a recv
and a sendall (~12 us here), which a paced profile adds per piece to *both* receivers:
with less work per message, per_message itself would look read-bound.
"""
import hashlib
import logging
import socket
import struct
import sys
import threading

PORT = int(sys.argv[1])
MODE = sys.argv[2]
if MODE not in ("per_message", "per_read"):
    sys.exit(f"unknown mode {MODE!r} (per_message or per_read)")
MAX_FRAME = 8 << 20
HASH_ROUNDS = 48


logging.basicConfig(
    stream=sys.stderr,
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
)
log = logging.getLogger("receiver")


def handle(body):
    digest = body
    for _ in range(HASH_ROUNDS):
        digest = hashlib.sha256(digest).digest()
    return body if digest else b""


def serve_conn(conn, peer):
    buf = bytearray()
    with conn:
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionError:
                return
            if not chunk:
                return  # EOF; a partial frame left in buf is dropped, never answered
            if MODE == "per_read":
                log.info("read %d bytes from %s:%d", len(chunk), peer[0], peer[1])
                log.info("buffer before parsing: %d bytes", len(buf) + len(chunk))
            buf += chunk
            out = bytearray()
            at = 0
            while len(buf) - at >= 4:
                (n,) = struct.unpack_from(">I", buf, at)
                if n > MAX_FRAME:
                    return  # refuse absurd lengths instead of allocating them
                if len(buf) - at - 4 < n:
                    break
                body = bytes(buf[at + 4 : at + 4 + n])
                at += 4 + n
                reply = handle(body)
                out += struct.pack(">I", len(reply)) + reply
            del buf[:at]
            if MODE == "per_read":
                log.info("parsed up to byte %d", at)
                log.info("answered %d bytes of replies", len(out))
                log.info("%d bytes left for the next read", len(buf))
            if out:
                try:
                    conn.sendall(out)
                except ConnectionError:
                    return


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(128)
    while True:
        conn, peer = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve_conn, args=(conn, peer), daemon=True).start()


if __name__ == "__main__":
    main()
