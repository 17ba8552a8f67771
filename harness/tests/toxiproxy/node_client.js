// Drives `chopstick proxy --api` with the real toxiproxy-node-client (npm, v4).
// Run by harness/tests/proxy_api.rs: argv = API base URL, echo upstream address.
// Prints one line per check; exits non-zero on the first failure.
"use strict";
const net = require("net");
const assert = require("assert");
const { Toxiproxy } = require("toxiproxy-node-client");

const [api, echo] = process.argv.slice(2);
const WAIT_MS = 20000;

function ok(what) {
  console.log("ok:", what);
}

// Sends `payload` through `listen`, resolves with what came back and how long it took.
function roundtrip(listen, payload) {
  const [host, port] = [listen.slice(0, listen.lastIndexOf(":")), +listen.slice(listen.lastIndexOf(":") + 1)];
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const s = net.connect({ host, port, noDelay: true }, () => s.write(payload));
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => { s.destroy(); reject(new Error("timed out")); }, WAIT_MS);
    s.on("data", (d) => {
      got = Buffer.concat([got, d]);
      if (got.length >= payload.length) {
        clearTimeout(timer);
        s.end();
        resolve({ got, ms: Date.now() - start });
      }
    });
    s.on("error", (e) => { clearTimeout(timer); reject(e); });
  });
}

function refused(listen) {
  const port = +listen.slice(listen.lastIndexOf(":") + 1);
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    s.on("connect", () => { s.destroy(); resolve(false); });
    s.on("error", () => resolve(true));
  });
}

async function main() {
  const toxiproxy = new Toxiproxy(api);
  const version = await toxiproxy.getVersion();
  assert.match(version, /chopstick/);
  ok("version");

  const proxy = await toxiproxy.createProxy({ name: "node_echo", listen: "127.0.0.1:0", upstream: echo });
  assert.ok(!proxy.listen.endsWith(":0"), proxy.listen);
  const all = await toxiproxy.getAll();
  assert.ok("node_echo" in all);
  let r = await roundtrip(proxy.listen, Buffer.from("hello"));
  assert.strictEqual(r.got.toString(), "hello");
  await assert.rejects(toxiproxy.createProxy({ name: "node_echo", listen: "127.0.0.1:0", upstream: echo }), /409/);
  await assert.rejects(toxiproxy.get("missing"), /404/);
  ok("create, list, 409, 404");

  const disabled = await proxy.update({ enabled: false, listen: proxy.listen, upstream: echo });
  assert.strictEqual(disabled.enabled, false);
  assert.ok(await refused(proxy.listen));
  const enabled = await proxy.update({ enabled: true, listen: proxy.listen, upstream: echo });
  assert.strictEqual(enabled.enabled, true);
  r = await roundtrip(proxy.listen, Buffer.from("again"));
  assert.strictEqual(r.got.toString(), "again");
  ok("disable and enable");

  const toxic = await proxy.addToxic({ name: "slow", type: "latency", stream: "downstream", toxicity: 1, attributes: { latency: 300 } });
  assert.strictEqual(toxic.attributes.latency, 300);
  r = await roundtrip(proxy.listen, Buffer.from("x"));
  assert.ok(r.ms >= 280, `latency ${r.ms} ms`);
  const updated = await toxic.update({ attributes: { latency: 0 } });
  assert.strictEqual(updated.attributes.latency, 0);
  await toxic.remove();
  ok(`latency ${r.ms} ms, updated and removed`);

  // A frame-aware chopstick toxic through the node client: limit to inside a header.
  await proxy.addToxic({ name: "cut", type: "disconnect", stream: "downstream", toxicity: 1, attributes: { framing: "u32be", mode: "close", at: "mid-header" } });
  const frames = Buffer.concat(Array.from({ length: 10 }, (_, i) => {
    const f = Buffer.alloc(24, i);
    f.writeUInt32BE(20, 0);
    return f;
  }));
  const got = await new Promise((resolve, reject) => {
    const port = +proxy.listen.slice(proxy.listen.lastIndexOf(":") + 1);
    const s = net.connect({ host: "127.0.0.1", port }, () => s.write(frames));
    let buf = Buffer.alloc(0);
    s.on("data", (d) => { buf = Buffer.concat([buf, d]); });
    s.on("end", () => resolve(buf));
    s.on("error", reject);
    setTimeout(() => reject(new Error("no close")), WAIT_MS);
  });
  assert.ok(got.length > 0 && [1, 2, 3].includes(got.length % 24), `closed after ${got.length} bytes`);
  assert.ok(got.equals(frames.subarray(0, got.length)));
  ok(`disconnect toxic cut inside a length field after ${got.length} bytes`);

  const populated = await toxiproxy.populate([{ name: "node_two", listen: "127.0.0.1:0", upstream: echo }]);
  assert.ok("node_two" in populated);
  await toxiproxy.reset();
  const fresh = await toxiproxy.get("node_echo");
  assert.strictEqual(fresh.enabled, true);
  const shown = await (await toxiproxy.get("node_echo")).getToxic("cut").then(() => "present", (e) => String(e));
  assert.match(shown, /404/);
  ok("populate and reset");

  await fresh.remove();
  await populated.node_two.remove();
  assert.deepStrictEqual(Object.keys(await toxiproxy.getAll()), []);
  ok("destroy");
  console.log("all node checks passed");
}

main().catch((e) => { console.error(e); process.exit(1); });
