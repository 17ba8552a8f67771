#!/usr/bin/env python3
"""A correct UDP echo receiver, for chopstick's own tests.

Usage: udp_correct.py PORT [--upper]

It receives into a buffer one byte larger than the largest datagram it serves, so a
datagram that fills the buffer is known to be cut; such a request is answered with a
truncation report ("!truncated max=N head=<first 32 bytes>"), never served as if whole.
"""
import socket
import sys

PORT = int(sys.argv[1])
UPPER = "--upper" in sys.argv
MAX = 65507  # largest IPv4 UDP payload


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", PORT))
    while True:
        data, peer = sock.recvfrom(MAX + 1)
        if len(data) > MAX:
            reply = b"!truncated max=%d head=" % MAX + data[:32]
        elif UPPER:
            # ASCII a-z only, like chopstick's upper oracle (bytes.upper is ASCII-only too).
            reply = data.upper()
        else:
            reply = data
        try:
            sock.sendto(reply, peer)
        except OSError:
            pass  # a vanished peer costs only its own reply


if __name__ == "__main__":
    main()
