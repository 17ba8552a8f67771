"""The thrift library's own client over TFramedTransport: one connection, a few calls.
Usage: thrift_client.py PORT"""
import os
import sys
sys.path.insert(0, os.environ.get("THRIFT_GEN", sys.path[0] + "/gen"))
from calc import Calc
from thrift.transport import TSocket, TTransport
from thrift.protocol import TBinaryProtocol

port = int(sys.argv[1])
for conn in range(3):
    t = TTransport.TFramedTransport(TSocket.TSocket("127.0.0.1", port))
    c = Calc.Client(TBinaryProtocol.TBinaryProtocol(t))
    t.open()
    c.ping()
    print(c.add(conn, 40), c.echo("x" * (conn * 3000)), c.echo(""))
    t.close()
