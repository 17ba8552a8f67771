#!/usr/bin/env node
// Deliberately broken u32be client receivers in Node, one bug each, for chopstick's own
// tests. Usage: node client_broken.js PORT BUG
//   one_read_one_message  treats each 'data' chunk as exactly one message
//   delivers_partial      buffers right, but at the end of the stream delivers what is
//                         left of a cut frame as a (short, phantom) message
'use strict';
const net = require('net');
const port = Number(process.argv[2]);
const bug = process.argv[3];

const sock = net.connect(port, '127.0.0.1', () => sock.setNoDelay(true));
const echo = (msg) => {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(msg.length);
  sock.write(Buffer.concat([head, msg]));
};
let buf = Buffer.alloc(0);
sock.on('data', (chunk) => {
  if (bug === 'one_read_one_message') {
    // BUG: a read may hold half a frame, or several.
    const n = chunk.readUInt32BE(0);
    echo(chunk.subarray(4, 4 + n));
    return;
  }
  buf = Buffer.concat([buf, chunk]);
  while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
    const n = buf.readUInt32BE(0);
    echo(buf.subarray(4, 4 + n));
    buf = buf.subarray(4 + n);
  }
});
sock.on('end', () => {
  // BUG: the rest of a cut frame is not a message.
  if (bug === 'delivers_partial' && buf.length >= 4) echo(buf.subarray(4));
  sock.end();
});
sock.on('error', (e) => { process.stderr.write(`client: ${e.message}\n`); process.exit(1); });
