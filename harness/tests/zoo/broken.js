#!/usr/bin/env node
// Deliberately broken u32be echo servers in Node, for chopstick's own tests.
//
// Usage: node broken.js PORT BUG
//   one_read_one_message  treats every 'data' event as exactly one message (the classic
//                         sticky-packet bug: coalesced frames are lost, split ones garbled)
//   drops_empty           correct framing, but never replies to an empty message
'use strict';
const net = require('net');
const [port, bug] = [Number(process.argv[2]), process.argv[3]];

function frame(body) {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
}

net.createServer((sock) => {
  sock.setNoDelay(true);
  sock.on('error', () => sock.destroy());
  if (bug === 'one_read_one_message') {
    sock.on('data', (chunk) => {
      // BUG: assumes the chunk is one whole frame.
      if (chunk.length < 4) return;
      const n = chunk.readUInt32BE(0);
      sock.write(frame(chunk.subarray(4, 4 + n)));
    });
    return;
  }
  let buf = Buffer.alloc(0);
  sock.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 4) {
      const n = buf.readUInt32BE(0);
      if (buf.length < 4 + n) break;
      const body = buf.subarray(4, 4 + n);
      buf = buf.subarray(4 + n);
      if (bug === 'drops_empty' && n === 0) continue; // BUG: empty messages vanish
      sock.write(frame(body));
    }
  });
}).listen(port, '127.0.0.1');
