"""dnspython's own DNS-over-TCP client: a few connections, several queries each (sent
one after another on the same connection). Usage: dns_client.py PORT"""
import sys, socket
import dns.message, dns.query

port = int(sys.argv[1])
names = ["alpha", "beta", "gamma", "nothere"]
for conn in range(3):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for i, n in enumerate(names[conn:] + names[:conn]):
            q = dns.message.make_query(f"{n}.chopstick.test", "A", id=conn * 100 + i)
            dns.query.send_tcp(s, q)
            r, _ = dns.query.receive_tcp(s)
            print(n, r.rcode(), [str(a) for a in r.answer])
