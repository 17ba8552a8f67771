"""A framed receiver in front of a real server: reads each request frame from its client
(optionally with a planted bug), forwards the frame to the upstream server, and relays
the upstream's replies back unchanged. With bug `none` the pair behaves as the upstream
alone; with a bug it is a deliberately broken variant of a real server.

Usage: broken_front.py PORT UPSTREAM_PORT OFFSET WIDTH ADJUST BUG
  OFFSET, WIDTH, ADJUST: the framing (bytes before a big-endian length field, its width,
  the value added to it); BUG: none | single_recv_header | single_recv_body | one_request
"""
import socket
import sys
import threading

port, upstream = int(sys.argv[1]), int(sys.argv[2])
offset, width, adjust = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
bug = sys.argv[6]
header_len = offset + width


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def replies(up, client):
    try:
        while True:
            data = up.recv(65536)
            if not data:
                break
            client.sendall(data)
    except OSError:
        pass
    try:
        client.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def serve(client):
    up = socket.create_connection(("127.0.0.1", upstream))
    relay = threading.Thread(target=replies, args=(up, client), daemon=True)
    relay.start()
    try:
        while True:
            if bug == "single_recv_header":
                header = client.recv(header_len)  # the bug: one recv may return less
                if not header:
                    break
            else:
                header = recv_exact(client, header_len)
                if header is None:
                    break
            n = int.from_bytes(header[offset:header_len], "big") + adjust
            if bug == "single_recv_body":
                body = client.recv(n) if n else b""  # the bug: one recv for the body
            else:
                body = recv_exact(client, n)
                if body is None:
                    break
            up.sendall(header + body)
            if bug == "one_request":
                break
    except (OSError, ValueError):
        pass
    try:
        up.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    relay.join(10)
    up.close()
    client.close()


srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
print(f"listening on 127.0.0.1:{port}", flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
