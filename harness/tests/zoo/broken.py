#!/usr/bin/env python3
"""Deliberately broken u32be echo servers, one bug each, for chopstick's own tests.

Usage: broken.py PORT BUG

Each BUG is a receiver mistake seen in the wild; chopstick must catch every one:
  single_read_header  reads the 4-byte header with one recv() (a split header breaks it)
  single_read_body    reads the body with one recv(n) (a split body gives a short message)
  dies_on_cut         the whole process exits when a peer vanishes mid-frame
  spins_on_eof        busy-loops forever when a peer closes mid-frame (single-threaded: all hang)
  truncates_large     replies with at most 65536 bytes of the payload
  trusts_length       believes any length: waits for a body of the claimed size (a hostile
                      header of 4 GiB pins the connection instead of being refused)
"""
import socket
import struct
import sys
import threading

PORT, BUG = int(sys.argv[1]), sys.argv[2]


def recv_exact(conn, n):
    """The correct loop; used for whatever part of the protocol a bug does not concern."""
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None if not buf else buf  # caller decides what a cut means
        buf += chunk
    return buf


def serve_conn(conn):
    with conn:
        while True:
            if BUG == "single_read_header":
                head = conn.recv(4)  # BUG: may return 1..3 bytes
                if not head:
                    return
                (n,) = struct.unpack(">I", head.ljust(4, b"\0")[:4])
                body = recv_exact(conn, n) if n else b""
            elif BUG == "single_read_body":
                head = recv_exact(conn, 4)
                if head is None or len(head) < 4:
                    return
                (n,) = struct.unpack(">I", head)
                body = conn.recv(n) if n else b""  # BUG: may return fewer than n bytes
            elif BUG == "trusts_length":
                head = recv_exact(conn, 4)
                if head is None or len(head) < 4:
                    return
                (n,) = struct.unpack(">I", head)
                body = b""
                while len(body) < n:  # BUG: no upper bound on n, waits for all of it
                    chunk = conn.recv(min(n - len(body), 65536))
                    if not chunk:
                        return
                    body += chunk
            else:
                head = recv_exact(conn, 4)
                if head is None:
                    return
                if len(head) < 4:
                    on_cut(conn)
                    return
                (n,) = struct.unpack(">I", head)
                body = recv_exact(conn, n) if n else b""
                if body is None or len(body) < n:
                    on_cut(conn)
                    return
            if body is None:
                return
            if BUG == "truncates_large":
                body = body[:65536]  # BUG: large replies cut short
            conn.sendall(struct.pack(">I", len(body)) + body)


def on_cut(conn):
    if BUG == "dies_on_cut":
        sys.stderr.write("peer vanished mid-frame, giving up\n")
        sys.stderr.flush()
        import os
        os._exit(3)  # BUG: one bad peer takes the server down for everyone
    if BUG == "spins_on_eof":
        while True:  # BUG: recv() keeps returning b"" and we keep asking
            conn.recv(1)


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if BUG == "spins_on_eof":
            serve_conn(conn)  # single-threaded, so the spin starves everyone
        else:
            threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
