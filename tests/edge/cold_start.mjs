// The first answer of a fresh Worker: starts `workerd serve CONFIG` RUNS
// times and times each from spawn to the first 200 at URL (polled every
// 2 ms), then stops it. Prints the median and the runs in milliseconds.
// Two Workers timed this way differ by what their first request costs
// beyond workerd's own start: module compilation and instantiation, the
// isolate's set-up, the first response.
//
//   node tests/edge/cold_start.mjs WORKERD CONFIG URL RUNS
import { spawn } from "node:child_process";
import http from "node:http";

const [workerd, config, url, runs] = process.argv.slice(2);
const headers = { "CF-Connecting-IP": "20.190.128.1" };

function answered() {
  return new Promise((resolve) => {
    const req = http.get(url, { headers }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("error", () => resolve(false));
    req.setTimeout(1000, () => req.destroy());
  });
}

async function once() {
  const started = process.hrtime.bigint();
  const child = spawn(workerd, ["serve", config], { stdio: "ignore" });
  try {
    for (;;) {
      if (await answered()) return Number(process.hrtime.bigint() - started) / 1e6;
      if (Number(process.hrtime.bigint() - started) > 30e9) throw new Error(`nothing answered at ${url}`);
      await new Promise((r) => setTimeout(r, 2));
    }
  } finally {
    child.kill();
    await new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", r)));
  }
}

const times = [];
for (let i = 0; i < Number(runs); i++) times.push(await once());
const sorted = [...times].sort((a, b) => a - b);
console.log(`median ${sorted[Math.floor(sorted.length / 2)].toFixed(1)} ms; runs ${times.map((t) => t.toFixed(1)).join(" ")}`);
