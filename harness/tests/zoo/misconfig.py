#!/usr/bin/env python3
"""Servers that work, but not as `check --framing u32be --oracle echo` was told: each is
a misconfiguration chopstick's pre-flight must diagnose (exit 2, one clear reason)
instead of reporting a wall of identical failures.

Usage: misconfig.py PORT MODE
  text       a line protocol: answers every line with "ERR unknown command\\n"
  http       an HTTP server: answers anything with "HTTP/1.1 400 Bad Request"
  reply_le   reads u32be frames, but answers with a u32le length (another byte order)
  wraps      echoes the whole request frame, header included, inside a new u32be frame
  upper      a correct u32be server that upper-cases (the oracle should be `upper`)
  once       a correct u32be echo server that serves one connection and exits
  once_slow  the same, but it takes 0.5 s to exit and keeps listening meanwhile: a
             connection queued then is reset when it exits (what a slow exit under load
             does to `once`)
  silent     accepts and reads, never answers
"""
import socket
import struct
import sys
import threading
import time

PORT, MODE = int(sys.argv[1]), sys.argv[2]


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def frames(conn):
    """Yields (header, body) of each u32be request frame until EOF."""
    while True:
        head = recv_exact(conn, 4)
        if head is None:
            return
        (n,) = struct.unpack(">I", head)
        if n > 8 << 20:
            return
        body = recv_exact(conn, n) if n else b""
        if body is None:
            return
        yield head, body


def serve_conn(conn):
    with conn:
        try:
            if MODE == "text":
                while conn.recv(65536):
                    conn.sendall(b"ERR unknown command\n")
                return
            if MODE == "http":
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if MODE == "silent":
                while conn.recv(65536):
                    pass
                time.sleep(3600)  # holds the connection open, never answers
                return
            for head, body in frames(conn):
                if MODE == "reply_le":
                    conn.sendall(struct.pack("<I", len(body)) + body)
                elif MODE == "wraps":
                    inner = head + body
                    conn.sendall(struct.pack(">I", len(inner)) + inner)
                elif MODE == "upper":
                    conn.sendall(head + body.upper())
                else:
                    conn.sendall(head + body)
        except ConnectionError:
            return


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        if MODE in ("once", "once_slow"):
            serve_conn(conn)
            if MODE == "once_slow":
                time.sleep(0.5)
            return
        threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
