"""python-binary-memcached, memcached's binary protocol client: sets, gets, deletes,
increments on a few connections. Usage: mc_client.py PORT"""
import sys
import bmemcached

port = int(sys.argv[1])
for conn in range(3):
    c = bmemcached.Client((f"127.0.0.1:{port}",))
    c.set(f"k{conn}", "v" * (conn * 2000 + 1))
    print(len(c.get(f"k{conn}") or ""), c.get("missing"))
    c.set("n", "5"); print(c.incr("n", 2))
    c.delete(f"k{conn}")
    print(c.get(f"k{conn}"))
    c.disconnect_all()
