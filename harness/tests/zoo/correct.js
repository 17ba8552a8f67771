#!/usr/bin/env node
// A correct u32be echo server in Node: buffers until whole frames are present.
// Usage: node correct.js PORT
'use strict';
const net = require('net');
const port = Number(process.argv[2]);

net.createServer((sock) => {
  sock.setNoDelay(true);
  sock.on('error', () => sock.destroy());
  let buf = Buffer.alloc(0);
  sock.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 4) {
      const n = buf.readUInt32BE(0);
      if (n > 8 << 20) { sock.destroy(); return; } // refuse absurd lengths
      if (buf.length < 4 + n) break;
      const head = Buffer.alloc(4);
      head.writeUInt32BE(n);
      sock.write(Buffer.concat([head, buf.subarray(4, 4 + n)]));
      buf = buf.subarray(4 + n);
    }
  });
  // A peer that half-closes still gets its replies; one that leaves mid-frame is dropped.
  sock.on('end', () => sock.end());
}).listen(port, '127.0.0.1');
