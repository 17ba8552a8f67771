#!/usr/bin/env python3
"""The tutorial "remote exec" server shape: a raw command read with one recv, answered
with struct.pack('i', n) + output. It runs nothing: the "output" is the command
upper-cased, so chopstick's `upper` oracle can judge it.

Usage: raw_exec.py PORT MODE
  correct     recv(65536): a command arrives in one write, so one recv gets all of it
  small_recv  BUG: recv(1024): a longer command is read in pieces, each taken for a command
"""
import socket
import struct
import sys
import threading

PORT, MODE = int(sys.argv[1]), sys.argv[2]
BUF = 65536 if MODE == "correct" else 1024


def serve_conn(conn):
    with conn:
        try:
            while True:
                cmd = conn.recv(BUF)
                if not cmd:
                    return
                out = cmd.upper()
                conn.sendall(struct.pack("i", len(out)) + out)
        except ConnectionError:
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
