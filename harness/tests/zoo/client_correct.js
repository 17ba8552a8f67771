#!/usr/bin/env node
// A correct u32be client receiver in Node, for `chopstick check --client`: it buffers
// until whole frames are present and hands each message back (echoed, framed the same
// way, or with --output lines-hex printed as one hex line). A stream that ends inside a
// frame is an error (stderr, exit 1), never a short message.
// Usage: node client_correct.js PORT [--output echo|lines-hex]
'use strict';
const net = require('net');
const port = Number(process.argv[2]);
const lines = process.argv.includes('lines-hex');
const MAX_MESSAGE = 8 << 20; // refuse absurd lengths

// The receiver: push bytes in, get whole messages out.
class MessageReader {
  constructor() { this.buf = Buffer.alloc(0); }
  push(chunk) {
    this.buf = Buffer.concat([this.buf, chunk]);
    const out = [];
    while (this.buf.length >= 4) {
      const n = this.buf.readUInt32BE(0);
      if (n > MAX_MESSAGE) throw new Error(`bad length ${n}`);
      if (this.buf.length < 4 + n) break;
      out.push(this.buf.subarray(4, 4 + n));
      this.buf = this.buf.subarray(4 + n);
    }
    return out;
  }
  pending() { return this.buf.length; }
}

const fail = (why) => { process.stderr.write(`client: ${why}\n`); process.exit(1); };
const reader = new MessageReader();
const sock = net.connect(port, '127.0.0.1', () => sock.setNoDelay(true));
sock.on('data', (chunk) => {
  let msgs;
  try { msgs = reader.push(chunk); } catch (e) { fail(e.message); }
  for (const msg of msgs) {
    if (lines) {
      process.stdout.write(msg.toString('hex') + '\n');
    } else {
      const head = Buffer.alloc(4);
      head.writeUInt32BE(msg.length);
      sock.write(Buffer.concat([head, msg]));
    }
  }
});
sock.on('end', () => {
  if (reader.pending()) fail(`connection closed inside a frame (${reader.pending()} bytes)`);
  sock.end();
});
sock.on('error', (e) => fail(e.message));
