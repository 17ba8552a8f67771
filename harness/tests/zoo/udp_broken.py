#!/usr/bin/env python3
"""A deliberately broken UDP echo receiver, for chopstick's own tests.

Usage: udp_broken.py PORT

BUG: it reads with recvfrom(1024). On Linux a larger datagram is silently cut to the
first 1024 bytes (the rest is discarded by the kernel), and this receiver echoes the
cut data as if it were the whole request. chopstick must report silent truncation.
"""
import socket
import sys

PORT = int(sys.argv[1])
BUFSIZE = 1024  # BUG: smaller than the datagrams clients send, and never checked


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", PORT))
    while True:
        data, peer = sock.recvfrom(BUFSIZE)
        try:
            sock.sendto(data, peer)
        except OSError:
            pass


if __name__ == "__main__":
    main()
