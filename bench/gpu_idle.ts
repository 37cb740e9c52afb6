/**
 * How the GPU's state after idle time or a busy main thread changes kernel speed, and what keeps or brings it
 * back (the measurements behind kernels/keep_awake.ts). A probe kernel in which 2,048 workgroups of 256 threads
 * each read one 64 KiB buffer (from cache) is timed by timestamp queries (µs per dispatch, best of 3 passes of
 * 50) after a scenario:
 *
 *   deno run -A bench/gpu_idle.ts --scenario fresh|idle|busy|burn [--keep-awake MS]
 *
 * - fresh: right after the device is made;
 * - idle: after 3 s without GPU work (the main thread free);
 * - busy: after 2 s of the main thread filling 1 GiB of buffers with random words;
 * - burn: after `busy`, then saturating work in steps of 250 ms, timing the probe after each step.
 * `--keep-awake MS` submits a one-workgroup dispatch every MS milliseconds from a timer meanwhile (0: none).
 * Run it with `EDGEMIX_GPU_KEEP_AWAKE=0`, so that the device's own keep-awake stays out of the way.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  acquireGpu,
  type Dispatch,
  encodeDispatch,
  Program,
  StepRing,
  storageBuffer,
  uploadBuffer,
} from "../kernels/gpu.ts";
import { prelude } from "../kernels/wgsl.ts";
import { PassTimer, submitRepeated } from "./gpu_timer.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { scenario: { type: "string", default: "fresh" }, "keep-awake": { type: "string", default: "0" } },
});
const scenario = values.scenario, keepMs = Number(values["keep-awake"]);
if (!["fresh", "idle", "busy", "burn"].includes(scenario)) {
  throw new TypeError(`Cannot run: unknown --scenario ${scenario} (fresh, idle, busy or burn)`);
}
const ctx = await acquireGpu();
if (!ctx.hasTimestamps) {
  throw new Error("Cannot run the benchmark: the adapter has no timestamp-query feature");
}
if (ctx.keepAwake) console.error("note: the device's keep-awake is on (set EDGEMIX_GPU_KEEP_AWAKE=0)");
const device = ctx.device;
const ring = new StepRing(device, 2);
const probe = await Program.get(
  device,
  ring,
  "idle-probe",
  `${prelude()}
@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> o: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  var s = vec4<f32>(0.0);
  for (var i = li; i < 4096u; i += 256u) { s += a[i]; }
  if (s.x == 1234.5) { o[wg.x] = s.y; }
}`,
  ["read", "write"],
);
// a: [4096] vec4<f32> (64 KiB); o: [16384] f32, never written in practice.
const a = uploadBuffer(device, "idle.a", new Float32Array(16384).map((_, i) => Math.sin(i)));
const o = storageBuffer(device, "idle.o", 1 << 16);
const d: Dispatch = { program: probe, group: probe.bind("idle-probe", [a, o]), grid: [2048, 1, 1] };
const off = ring.set(0, { pos: 0, rows: 1, step: 0, srcRing: false, ringIn: 0, logitsRow: 0 });
ring.flush(device);
const timer = new PassTimer(device, "idle");

/** Submits `n` probe dispatches in one pass (untimed). */
const submit = (n: number) => submitRepeated(device, ring, d, off, n, "idle");

/** µs per probe dispatch (best of 3 passes of 50; the first pass counts, it is what a scenario left). */
async function timeProbe(): Promise<number> {
  let best = Infinity;
  for (let trial = 0; trial < 3; trial++) {
    const t = await timer.pass((p) => {
      for (let i = 0; i < 50; i++) encodeDispatch(p, ring, d, off);
    });
    best = Math.min(best, t.gpuUs / 50);
  }
  return best;
}

const ticker = keepMs > 0 ? setInterval(() => submit(1), keepMs) : undefined;
const results: Record<string, number> = { fresh_us: await timeProbe() };
if (scenario === "idle") await new Promise((r) => setTimeout(r, 3000));
if (scenario === "busy" || scenario === "burn") {
  // 1 GiB of xorshift words, written into four buffers (the main thread busy for ~2 s).
  let x = 2463534242;
  for (let b = 0; b < 4; b++) {
    const w = new Uint32Array(64 << 20);
    for (let i = 0; i < w.length; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      w[i] = x >>>= 0;
    }
    uploadBuffer(device, `idle.fill-${b}`, w);
  }
  await device.queue.onSubmittedWorkDone();
}
if (scenario !== "fresh") results.after_us = await timeProbe();
if (scenario === "burn") {
  const t0 = performance.now();
  for (let step = 1; step <= 8; step++) {
    const t1 = performance.now();
    while (performance.now() - t1 < 250) {
      for (let i = 0; i < 4; i++) submit(1000);
      await device.queue.onSubmittedWorkDone();
    }
    results[`burn_${((performance.now() - t0) / 1000).toFixed(2)}s_us`] = await timeProbe();
  }
}
if (ticker !== undefined) clearInterval(ticker);
console.log(JSON.stringify({ device: ctx.adapterName, scenario, keepAwakeMs: keepMs, ...results }));
