#!/usr/bin/env python3
"""A correct u32be server whose replies carry noise: each reply is
`t=<nanosecond timestamp> id=<random hex> n=<length> ` followed by the request payload.
No two runs answer alike, so only a differential oracle that masks noise can judge it.

Usage: noisy.py PORT [--bug]
--bug reads the 4-byte header with one recv (a framing bug: a header split across
reads is misparsed and the connection dropped).
"""
import os
import socket
import struct
import sys
import threading
import time

PORT = int(sys.argv[1])
BUG = "--bug" in sys.argv


def recv_exact(conn, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            if buf:
                raise EOFError("peer closed mid-frame")
            return None
        buf += chunk
    return bytes(buf)


def read_header(conn):
    if not BUG:
        return recv_exact(conn, 4)
    head = conn.recv(4)  # the bug: one recv is not always 4 bytes
    if not head:
        return None
    if len(head) < 4:
        raise EOFError("short header")
    return head


def serve_conn(conn):
    with conn:
        try:
            while True:
                head = read_header(conn)
                if head is None:
                    return
                (n,) = struct.unpack(">I", head)
                if n > 8 << 20:
                    return  # refuse absurd lengths instead of allocating them
                body = recv_exact(conn, n) if n else b""
                if body is None:
                    return
                noise = "t=%d id=%s n=%d " % (time.time_ns(), os.urandom(4).hex(), n)
                reply = noise.encode() + body
                conn.sendall(struct.pack(">I", len(reply)) + reply)
        except (EOFError, ConnectionError):
            return


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
