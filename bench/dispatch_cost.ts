/**
 * What one dispatch costs inside a compute pass, apart from its work: GPU time per dispatch (timestamp queries
 * around a pass of `--reps` dispatches) and CPU time to encode it, for
 * - `chain`: a one-workgroup kernel that reads and writes the same buffer (every dispatch depends on the last,
 *   as the layers of a decode step do: a barrier between each);
 * - `independent`: the same kernel writing one of `--buffers` distinct buffers in turn (no dependency between
 *   neighbours, so no barrier is needed);
 * - `norm`: a one-workgroup RMSNorm-sized kernel (128 threads reading 2,048 floats) in a chain;
 * - `wide`: the chain kernel with 1,024 workgroups.
 * The decode step of an OLMoE-shape model has ~180 dispatches: this says how much of a step is their overhead and
 * how much fusing kernels can save.
 *
 *   deno run -A bench/dispatch_cost.ts [--reps 1000] [--buffers 16]
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
} from "../kernels/gpu.ts";
import { prelude } from "../kernels/wgsl.ts";

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
};

const querySet = device.createQuerySet({ label: "dispatch.timestamps", type: "timestamp", count: 2 });
const resolve = device.createBuffer({
  label: "dispatch.resolve",
  size: 16,
  usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
});
const readback = device.createBuffer({
  label: "dispatch.readback",
  size: 16,
  usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
});
const off = ring.set(0, { pos: 0, rows: 1, step: 0, srcRing: false, ringIn: 0, logitsRow: 0 });
ring.flush(device);
await ctx.keepAwake?.warmUp();

const rows: { case: string; gpu_us: number; encode_us: number }[] = [];
for (const [name, ds] of Object.entries(cases)) {
  let gpu = Infinity, cpu = Infinity;
  for (let trial = 0; trial < 4; trial++) {
    const enc = device.createCommandEncoder({ label: "dispatch" });
    const pass = enc.beginComputePass({
      label: "dispatch",
      timestampWrites: { querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
    });
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) encodeDispatch(pass, ring, ds[i % ds.length], off);
    const t1 = performance.now();
    pass.end();
    enc.resolveQuerySet(querySet, 0, 2, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, readback, 0, 16);
    device.queue.submit([enc.finish()]);
    await readback.mapAsync(GPUMapMode.READ);
    const [a, b] = new BigUint64Array(readback.getMappedRange().slice(0));
    readback.unmap();
    if (trial === 0) continue;
    gpu = Math.min(gpu, Number(b - a) / 1000 / reps);
    cpu = Math.min(cpu, (t1 - t0) * 1000 / reps);
  }
  rows.push({ case: name, gpu_us: gpu, encode_us: cpu });
  console.log(JSON.stringify({ device: ctx.adapterName, case: name, reps, gpu_us: gpu, encode_us: cpu }));
}
console.log(`\n${ctx.adapterName}, ${reps} dispatches per pass`);
console.log("| case | GPU µs per dispatch | CPU µs to encode one |");
console.log("| --- | --- | --- |");
for (const r of rows) console.log(`| ${r.case} | ${r.gpu_us.toFixed(2)} | ${r.encode_us.toFixed(2)} |`);
