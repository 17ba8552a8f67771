#!/usr/bin/env python3
"""A correct framed client receiver, for `chopstick check --client`.

Usage: client_correct.py PORT [--framing u32be|i32le] [--output echo|lines-hex]

It connects to 127.0.0.1:PORT, delivers each whole message its receiver reads and hands
it back: echoed on the socket framed the same way, or printed as one hex line. At a clean
end of the stream it exits 0; a stream that ends inside a frame is an error (stderr,
exit 1), never a short message.
"""
import socket
import struct
import sys

MAX_MESSAGE = 8 << 20  # refuse absurd lengths instead of allocating them


class Cut(Exception):
    """The stream ended inside a frame."""


def recv_exact(sock, n):
    """Reads exactly n bytes: recv() may return fewer, so it loops."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise Cut(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_message(sock, fmt):
    """The receiver: one whole message, or None at a clean end of the stream."""
    first = sock.recv(1)
    if not first:
        return None
    (n,) = struct.unpack(fmt, first + recv_exact(sock, 3))
    if n < 0 or n > MAX_MESSAGE:
        raise Cut(f"bad length {n}")
    return recv_exact(sock, n)


def main():
    port = int(sys.argv[1])
    args = sys.argv[2:]
    fmt = {"u32be": ">I", "i32le": "<i"}[args[args.index("--framing") + 1] if "--framing" in args else "u32be"]
    lines = "--output" in args and args[args.index("--output") + 1] == "lines-hex"
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while (msg := recv_message(sock, fmt)) is not None:
            if lines:
                sys.stdout.write(msg.hex() + "\n")
                sys.stdout.flush()
            else:
                sock.sendall(struct.pack(fmt, len(msg)) + msg)
    except (Cut, OSError) as e:
        sys.stderr.write(f"client: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
