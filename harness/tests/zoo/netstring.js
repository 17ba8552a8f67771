#!/usr/bin/env node
// Netstring echo servers in Node ("5:hello," -> "5:hello,").
// Usage: node netstring.js PORT MODE
//   correct          buffers until the digits, the colon, the payload and the comma are all there
//   digits_per_chunk BUG: parses the length from the start of each 'data' chunk, as if
//                    every chunk began a frame with its whole header; a header split across
//                    chunks (or a frame that starts mid-chunk after a partial one) goes astray
'use strict';
const net = require('net');
const port = Number(process.argv[2]);
const mode = process.argv[3];
const MAX = 8 << 20;

function reply(sock, payload) {
  sock.write(Buffer.concat([Buffer.from(`${payload.length}:`), payload, Buffer.from(',')]));
}

net.createServer((sock) => {
  sock.setNoDelay(true);
  sock.on('error', () => sock.destroy());
  let buf = Buffer.alloc(0);
  let pending = -1; // broken mode: payload length of the frame being collected
  sock.on('data', (chunk) => {
    if (mode === 'digits_per_chunk') {
      if (pending < 0) {
        const colon = chunk.indexOf(0x3a);
        // BUG: the digits are assumed to be at the front of this one chunk.
        pending = parseInt(chunk.subarray(0, colon < 0 ? chunk.length : colon).toString(), 10) || 0;
        chunk = colon < 0 ? Buffer.alloc(0) : chunk.subarray(colon + 1);
      }
      buf = Buffer.concat([buf, chunk]);
      while (pending >= 0 && buf.length >= pending + 1) {
        reply(sock, buf.subarray(0, pending));
        buf = buf.subarray(pending + 1);
        const colon = buf.indexOf(0x3a);
        if (buf.length === 0 || colon < 0) { pending = -1; buf = Buffer.alloc(0); break; }
        pending = parseInt(buf.subarray(0, colon).toString(), 10) || 0;
        buf = buf.subarray(colon + 1);
      }
      return;
    }
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      const colon = buf.indexOf(0x3a);
      if (colon < 0) {
        if (buf.length > 10) { sock.destroy(); return; } // more digits than any length we take
        break;
      }
      const digits = buf.subarray(0, colon).toString();
      if (!/^(0|[1-9][0-9]*)$/.test(digits)) { sock.destroy(); return; }
      const n = Number(digits);
      if (n > MAX) { sock.destroy(); return; } // refuse absurd lengths
      if (buf.length < colon + 1 + n + 1) break;
      if (buf[colon + 1 + n] !== 0x2c) { sock.destroy(); return; }
      reply(sock, buf.subarray(colon + 1, colon + 1 + n));
      buf = buf.subarray(colon + 1 + n + 1);
    }
  });
  // A peer that half-closes still gets its replies; one that leaves mid-frame is dropped.
  sock.on('end', () => sock.end());
}).listen(port, '127.0.0.1');
