/**
 * What one dispatch costs inside a compute pass, apart from its work: GPU time per dispatch (timestamp queries
 * around a pass of `--reps` dispatches) and CPU time to encode it, for
 * - `chain`: a one-workgroup kernel that reads and writes the same buffer (every dispatch depends on the last,
 *   as the layers of a decode step do: a barrier between each);
 * - `independent`: the same kernel writing one of `--buffers` distinct buffers in turn (no dependency between
 *   neighbours, so no barrier is needed);
 * - `norm`: a one-workgroup RMSNorm-sized kernel (128 threads reading 2,048 floats) in a chain;
 * - `wide`: the chain kernel with 1,024 workgroups;
 * - `alternate`: the chain and norm kernels in turn (a pipeline change at every dispatch, as in a decode step).
 * The decode step of an OLMoE-shape model has ~180 dispatches: this says how much of a step is their overhead and
 * how much fusing kernels can save.
 *
 *   deno run -A bench/dispatch_cost.ts [--reps 1000] [--buffers 16]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { acquireGpu, type Dispatch, Program, StepRing, storageBuffer } from "../kernels/gpu.ts";
import { prelude } from "../kernels/wgsl.ts";
import { PassTimer } from "./gpu_timer.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { reps: { type: "string", default: "1000" }, buffers: { type: "string", default: "16" } },
});
const reps = Number(values.reps), nBuf = Number(values.buffers);
const ctx = await acquireGpu();
if (!ctx.hasTimestamps) {
  throw new Error("Cannot run the benchmark: the adapter has no timestamp-query feature");
}
const device = ctx.device;
const ring = new StepRing(device, 2);

// bump: y[0] += 1 by thread 0 of workgroup 0; norm: 128 threads, sum of squares of x [2048] into y[0].
const bump = await Program.get(
  device,
  ring,
  "dispatch-bump",
  `${prelude()}
@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  if (wg.x == 0u && li == 0u) { y[0] = y[0] + 1.0; }
}`,
  ["write"],
);
const norm = await Program.get(
  device,
  ring,
  "dispatch-norm",
  `${prelude()}
@group(0) @binding(0) var<storage, read_write> y: array<f32>;
var<workgroup> part: array<f32, 128>;
@compute @workgroup_size(128)
fn main(@builtin(local_invocation_index) li: u32) {
  var s = 0.0;
  for (var i = li; i < 2048u; i += 128u) { let v = y[16u + i]; s += v * v; }
  part[li] = s;
  workgroupBarrier();
  for (var k = 64u; k > 0u; k >>= 1u) {
    if (li < k) { part[li] += part[li + k]; }
    workgroupBarrier();
  }
  if (li == 0u) { y[0] = y[0] + part[0]; }
}`,
  ["write"],
);
// Each buffer: [16 + 2048] f32.
const bufs = Array.from(
  { length: nBuf },
  (_, i) => storageBuffer(device, `dispatch.buf-${i}`, (16 + 2048) * 4),
);
const one = (p: Program, b: GPUBuffer, x = 1): Dispatch => ({
  program: p,
  group: p.bind(`dispatch.${p.label}`, [b]),
  grid: [x, 1, 1],
});
const cases: Record<string, Dispatch[]> = {
  chain: [one(bump, bufs[0])],
  independent: bufs.map((b) => one(bump, b)),
  norm: [one(norm, bufs[0])],
  wide: [one(bump, bufs[0], 1024)],
  // Two programs in turn, as the dispatches of a decode step change program every time.
  alternate: [one(bump, bufs[0]), one(norm, bufs[0])],
};

const timer = new PassTimer(device, "dispatch");
const off = ring.set(0, { pos: 0, rows: 1, step: 0, srcRing: false, ringIn: 0, logitsRow: 0 });
ring.flush(device);
await ctx.keepAwake?.warmUp();

const rows: { case: string; gpu_us: number; encode_us: number }[] = [];
for (const [name, ds] of Object.entries(cases)) {
  const t = await timer.perDispatch(ring, ds, off, reps, 3);
  const gpu = t.gpuUs, cpu = t.encodeUs;
  rows.push({ case: name, gpu_us: gpu, encode_us: cpu });
  console.log(JSON.stringify({ device: ctx.adapterName, case: name, reps, gpu_us: gpu, encode_us: cpu }));
}
console.log(`\n${ctx.adapterName}, ${reps} dispatches per pass`);
console.log("| case | GPU µs per dispatch | CPU µs to encode one |");
console.log("| --- | --- | --- |");
for (const r of rows) console.log(`| ${r.case} | ${r.gpu_us.toFixed(2)} | ${r.encode_us.toFixed(2)} |`);
