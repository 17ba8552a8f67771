#!/usr/bin/env python3
"""Varint-framed echo servers (protobuf delimited streams: LEB128 length, then payload).

Usage: varint.py PORT MODE

MODE:
  correct           reads the length byte by byte until a byte without the high bit,
                    then loops until the whole payload is there
  single_recv_len   BUG: takes the length from one recv(5) ("a varint is at most 5 bytes"),
                    then keeps what followed it as the start of the payload; a length
                    split across reads (a 2-byte prefix cut after its first byte) is
                    decoded from the part that came, and the stream goes out of step
"""
import socket
import sys
import threading

PORT, MODE = int(sys.argv[1]), sys.argv[2]
MAX = 8 << 20


def encode_varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf):
    """(value, bytes used) from the front of buf; used == len(buf) if it never ended."""
    value, shift = 0, 0
    for i, b in enumerate(buf):
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i + 1
    return value, len(buf)


class Cut(Exception):
    pass


class Reader:
    """Buffered reads from one connection: bytes past a frame stay for the next one."""

    def __init__(self, conn):
        self.conn, self.buf = conn, bytearray()

    def fill(self):
        chunk = self.conn.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def exact(self, n):
        while len(self.buf) < n:
            if not self.fill():
                raise Cut()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def length_correct(self):
        """Waits for a byte without the high bit (at most 5 bytes: more is corrupt)."""
        i = 0
        while True:
            if i == len(self.buf) and not self.fill():
                if i == 0:
                    return None
                raise Cut()
            while i < len(self.buf):
                i += 1
                if not self.buf[i - 1] & 0x80:
                    n, used = decode_varint(self.buf)
                    del self.buf[:used]
                    return n
                if i == 5:
                    raise Cut()

    def length_single_recv(self):
        """BUG: decodes the length from what one recv gave; a prefix split across
        reads is taken from the part that came, and the stream goes out of step."""
        if not self.buf and not self.fill():
            return None
        n, used = decode_varint(self.buf)
        del self.buf[:used]
        return n


def serve_conn(conn):
    reader = Reader(conn)
    read_len = reader.length_correct if MODE == "correct" else reader.length_single_recv
    with conn:
        try:
            while True:
                n = read_len()
                if n is None:
                    return
                if n > MAX:
                    return  # refuse absurd lengths instead of allocating them
                body = reader.exact(n)
                conn.sendall(encode_varint(len(body)) + body)
        except (Cut, ConnectionError):
            return


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
