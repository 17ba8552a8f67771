"""A Thrift service over TFramedTransport (4-byte big-endian frame length) using the
thrift library's own server and framed transport: the receiver under test is thrift's.
Usage: thrift_server.py PORT"""
import os
import sys
sys.path.insert(0, os.environ.get("THRIFT_GEN", sys.path[0] + "/gen"))
from calc import Calc
from thrift.transport import TSocket, TTransport
from thrift.protocol import TBinaryProtocol
from thrift.server import TServer

class Handler:
    def add(self, a, b):
        return a + b
    def echo(self, s):
        return s
    def ping(self):
        pass

port = int(sys.argv[1])
sock = TSocket.TServerSocket(host="127.0.0.1", port=port)
server = TServer.TThreadedServer(Calc.Processor(Handler()), sock,
    TTransport.TFramedTransportFactory(), TBinaryProtocol.TBinaryProtocolFactory(), daemon=True)
print(f"listening on 127.0.0.1:{port}", flush=True)
server.serve()
