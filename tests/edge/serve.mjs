#!/usr/bin/env node
// Serves the compiled edge Worker (edge/build, from worker-build) in workerd
// through Miniflare, on a real loopback port, for the end-to-end tests and
// the benchmark.
//
//   node tests/edge/serve.mjs '<config JSON>'
//
// config: {
//   "bindings": { "ISSUER": "...", ... },   Worker variables
//   "kv": { "jwks": "..." },                KV seed (binding EDGE_KV)
//   "kvBinding": true,                      false: no EDGE_KV binding at all
//   "cf": { "colo": "TST" },                request.cf for every request
//   "port": 0,                              0: any free port
//   "countKvReads": false                   true: report every KV read
// }
//
// Prints one line `READY {"url": ..., "control": ...}` when it serves; every
// line the Worker logs follows as `LOG <line>`. With countKvReads, EDGE_KV is
// the real namespace seen through a thin wrapper (a workerd wrapped binding,
// in the Worker's own isolate) that prints `KV_READ <key>` on each read
// before the read happens, so a test observes KV reads from outside the
// Worker; the order of the lines is the order of events. The control server (loopback
// HTTP) changes the world under the running Worker:
//   PUT    /kv/<key>   body = new value
//   DELETE /kv/<key>
//   POST   /reload     a fresh isolate (what a new Cloudflare location sees),
//                      with KV and the Cache API kept
// It stops when its standard input closes (its parent went away) or on
// SIGINT/SIGTERM, and takes workerd with it.
import { createServer } from "node:http";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const buildDir = join(root, "edge", "build");
const config = JSON.parse(process.argv[2] ?? "{}");
const KV_BINDING = "EDGE_KV";

// The deployment's own compatibility date, so the tests run what deploys.
const wranglerToml = readFileSync(join(root, "wrangler.toml"), "utf8");
const compatibilityDate = /^compatibility_date\s*=\s*"([^"]+)"/m.exec(wranglerToml)?.[1];
if (!compatibilityDate) throw new Error("wrangler.toml has no compatibility_date");

// Storage on disk (a temporary directory), so that a reload, which restarts
// workerd, keeps KV and the Cache API as Cloudflare would.
const storage = mkdtempSync(join(tmpdir(), "aws2azure-edge-"));

// A line no Worker log line (JSON) can be mistaken for.
const KV_READ_MARK = "aws2azure-test-kv-read ";
// The wrapped binding: every method of a KV namespace, reads reported.
const KV_COUNTER = `
class KvNamespace {
  constructor(inner) { this.inner = inner; }
  get(key, options) { this.report(key); return this.inner.get(key, options); }
  getWithMetadata(key, options) { this.report(key); return this.inner.getWithMetadata(key, options); }
  put(key, value, options) { return this.inner.put(key, value, options); }
  delete(key) { return this.inner.delete(key); }
  list(options) { return this.inner.list(options); }
  report(key) { console.log(${JSON.stringify(KV_READ_MARK)} + JSON.stringify(key)); }
}
export default function (env) { return new KvNamespace(env.${KV_BINDING}); }
`;
const KV_COUNTER_WORKER = "kv-read-counter";
const countKvReads = config.countKvReads === true && config.kvBinding !== false;

const edge = {
  name: "edge",
  modules: true,
  scriptPath: join(buildDir, "index.js"),
  modulesRoot: buildDir,
  modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
  compatibilityDate,
  bindings: config.bindings ?? {},
  kvNamespaces: config.kvBinding === false || countKvReads ? [] : [KV_BINDING],
  wrappedBindings: countKvReads ? { [KV_BINDING]: KV_COUNTER_WORKER } : {},
  cache: true,
};
const options = {
  // The first worker is the one that serves HTTP.
  workers: countKvReads
    ? [
        edge,
        {
          name: KV_COUNTER_WORKER,
          modules: true,
          script: KV_COUNTER,
          // No compatibility date: a wrapped binding runs with the edge's.
          kvNamespaces: [KV_BINDING],
        },
      ]
    : [edge],
  kvPersist: join(storage, "kv"),
  cachePersist: join(storage, "cache"),
  cf: config.cf ?? { colo: "TST" },
  host: "127.0.0.1",
  port: config.port ?? 0,
  handleRuntimeStdio(stdout, stderr) {
    createInterface({ input: stdout }).on("line", (line) => {
      if (line.startsWith(KV_READ_MARK)) {
        console.log(`KV_READ ${JSON.parse(line.slice(KV_READ_MARK.length))}`);
      } else {
        console.log(`LOG ${line}`);
      }
    });
    createInterface({ input: stderr }).on("line", (line) => console.error(line));
  },
};

const mf = new Miniflare(options);
let stopping = false;
async function stop(code) {
  if (stopping) return;
  stopping = true;
  control.close();
  try {
    await mf.dispose();
  } finally {
    rmSync(storage, { recursive: true, force: true });
    process.exit(code);
  }
}

async function kv() {
  return mf.getKVNamespace(KV_BINDING, countKvReads ? KV_COUNTER_WORKER : "edge");
}

const control = createServer(async (req, res) => {
  try {
    const body = await new Promise((ok, fail) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => ok(Buffer.concat(chunks).toString("utf8")));
      req.on("error", fail);
    });
    const url = new URL(req.url, "http://control");
    const key = url.pathname.startsWith("/kv/") ? decodeURIComponent(url.pathname.slice(4)) : null;
    if (key && req.method === "PUT") {
      await (await kv()).put(key, body);
    } else if (key && req.method === "DELETE") {
      await (await kv()).delete(key);
    } else if (url.pathname === "/reload" && req.method === "POST") {
      await mf.setOptions(options);
    } else {
      res.writeHead(404).end("unknown control request\n");
      return;
    }
    res.writeHead(204).end();
  } catch (error) {
    res.writeHead(500).end(`${error?.stack ?? error}\n`);
  }
});

const url = await mf.ready;
const store = config.kvBinding === false ? null : await kv();
for (const [key, value] of Object.entries(config.kv ?? {})) await store.put(key, value);
await new Promise((ok) => control.listen(0, "127.0.0.1", ok));
const { port } = control.address();
console.log(`READY ${JSON.stringify({ url: url.href, control: `http://127.0.0.1:${port}/` })}`);

process.stdin.on("end", () => stop(0));
process.stdin.on("error", () => stop(0));
process.stdin.resume();
process.on("SIGINT", () => stop(0));
process.on("SIGTERM", () => stop(0));
