#!/usr/bin/env python3
"""A correct u32be echo server: loops until it has the whole header and the whole body.

Usage: correct.py PORT [--delay-ms N] [--upper] [--sequential]
--delay-ms sleeps before every reply, to prove chopstick raises no false alarm on slow servers.
--sequential serves one client to completion before accepting the next (no threads): correct,
             and what a concurrent check must not call hanging.
"""
import socket
import struct
import sys
import threading
import time

PORT = int(sys.argv[1])
DELAY = float(sys.argv[sys.argv.index("--delay-ms") + 1]) / 1000 if "--delay-ms" in sys.argv else 0.0
UPPER = "--upper" in sys.argv
SEQUENTIAL = "--sequential" in sys.argv


def recv_exact(conn, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            if buf:
                raise EOFError("peer closed mid-frame")  # a clean error, never a short message
            return None
        buf += chunk
    return bytes(buf)


def serve_conn(conn):
    with conn:
        try:
            while True:
                head = recv_exact(conn, 4)
                if head is None:
                    return
                (n,) = struct.unpack(">I", head)
                if n > 8 << 20:
                    return  # refuse absurd lengths instead of allocating them
                body = recv_exact(conn, n) if n else b""
                if body is None:
                    return  # EOF right after a complete header: also a cut
                if UPPER:
                    body = body.translate(bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
                if DELAY:
                    time.sleep(DELAY)
                conn.sendall(struct.pack(">I", len(body)) + body)
        except (EOFError, ConnectionError):
            return


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        if SEQUENTIAL:
            serve_conn(conn)
        else:
            threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
