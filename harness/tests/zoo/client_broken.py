#!/usr/bin/env python3
"""Deliberately broken framed client receivers, one bug each, for chopstick's own tests.

Usage: client_broken.py PORT BUG [--output echo|lines-hex]

Each BUG is a client-side receiver mistake seen in the wild; `chopstick check --client`
must catch every one:
  single_read_header  reads the u32be header with one recv(4) (a split header crashes it)
  single_read_body    reads the body with one recv(n) (a split body gives a short message)
  tutorial_exec       the tutorial remote-exec client, `--framing i32le`:
                      struct.unpack('i', client.recv(4)), then a recv(1024) body loop that
                      reads past the frame's end and spins forever at EOF
  spins_on_cut        a right receiver that busy-loops when the stream ends mid-frame
"""
import socket
import struct
import sys

PORT, BUG = int(sys.argv[1]), sys.argv[2]
LINES = "--output" in sys.argv and sys.argv[sys.argv.index("--output") + 1] == "lines-hex"
FMT = "<i" if BUG == "tutorial_exec" else ">I"


def recv_exact(sock, n):
    """The correct loop, for whatever part of the protocol a bug does not concern."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return buf  # the caller decides what a cut means
        buf += chunk
    return buf


def recv_message(client):
    """The receiver under test: a message, or None at the end of the stream."""
    if BUG == "single_read_header":
        head = client.recv(4)  # BUG: may return 1..3 bytes
        if not head:
            return None
        (n,) = struct.unpack(">I", head)  # struct.error on a short header
        return recv_exact(client, n)
    if BUG == "single_read_body":
        head = recv_exact(client, 4)
        if len(head) < 4:
            return None
        (n,) = struct.unpack(">I", head)
        return client.recv(n) if n else b""  # BUG: may return fewer than n bytes
    if BUG == "tutorial_exec":
        header = client.recv(4)  # BUG: may return fewer than 4 bytes
        if not header:
            return None
        total_size = struct.unpack("i", header)[0]
        recv_size = 0
        recv_data = b""
        while recv_size < total_size:  # BUG: spins forever once recv() returns b""
            data = client.recv(1024)  # BUG: reads on into the next message
            recv_size += len(data)
            recv_data += data
        return recv_data
    # spins_on_cut
    head = recv_exact(client, 4)
    if not head:
        return None
    n = struct.unpack(">I", head)[0] if len(head) == 4 else -1
    body = recv_exact(client, n) if n >= 0 else b""
    if n < 0 or len(body) < n:
        while True:  # BUG: waits for bytes that can never come
            client.recv(1)
    return body


def main():
    client = socket.create_connection(("127.0.0.1", PORT))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (msg := recv_message(client)) is not None:
        if LINES:
            print(msg.hex(), flush=True)
        else:
            client.sendall(struct.pack(FMT, len(msg)) + msg)


if __name__ == "__main__":
    main()
