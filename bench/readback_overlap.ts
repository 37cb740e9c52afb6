/**
 * Whether work can be submitted while a readback waits, in this runtime. Deno's `GPUBuffer.mapAsync` polls the
 * device with wgpu's blocking wait (every submitted command buffer finishes), then sleeps 10 ms before it
 * resolves; the JavaScript thread is free during that sleep. A submission made then starts at once, so the GPU
 * need not idle for the sleep. Cases (milliseconds from the first submission, best and median of 5), each two
 * batches of `--work` ms of GPU work, each batch ending in a 16-byte copy to its own staging buffer:
 * - `serial`: batch 1, its readback awaited, then batch 2 and its readback (the GPU idles ~10 ms between);
 * - `afterCall`: batch 2 submitted right after the `mapAsync` call of batch 1 (works if the call itself waits
 *   for the GPU, i.e. the runtime polls the operation eagerly; otherwise the first map waits for both);
 * - `inTimer`: batch 2 submitted from a zero-delay timer set right after that call;
 * with `first` (when the first map resolved) and `call` (how long the `mapAsync` call took).
 *
 *   deno run -A bench/readback_overlap.ts [--work 20]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { acquireGpu, StepRing, storageBuffer } from "../kernels/gpu.ts";
import { spinWork } from "./gpu_timer.ts";

const { values } = parseArgs({ args: Deno.args, options: { work: { type: "string", default: "20" } } });
const workMs = Number(values.work);
const ctx = await acquireGpu();
const device = ctx.device;
const ring = new StepRing(device, 2);
// Spin work: each of 256 workgroups × 256 threads reads a 64 KiB buffer 16 times.
const spin = await spinWork(device, ring, "overlap-spin", 16, 256);
// src: [4] u32; staging1, staging2: [4] u32 mappable.
const src = storageBuffer(device, "overlap.src", 16);
const staging = [1, 2].map((i) =>
  device.createBuffer({
    label: `overlap.staging${i}`,
    size: 16,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  })
);

/** Submits `n` spin dispatches, then a copy into staging buffer `i`. */
function batch(n: number, i: number): void {
  spin(n);
  const enc = device.createCommandEncoder({ label: "overlap.copy" });
  enc.copyBufferToBuffer(src, 0, staging[i], 0, 16);
  device.queue.submit([enc.finish()]);
}

// Calibrate: dispatches per millisecond from a 100-dispatch batch, its readback's ~10 ms taken off.
batch(100, 0);
await staging[0].mapAsync(GPUMapMode.READ);
staging[0].unmap();
const t0 = performance.now();
batch(100, 0);
await staging[0].mapAsync(GPUMapMode.READ);
staging[0].unmap();
const perMs = 100 / Math.max(0.5, performance.now() - t0 - 10);
const n = Math.max(1, Math.round(perMs * workMs));

const stats = (xs: number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  return { best: +s[0].toFixed(2), median: +s[Math.floor(s.length / 2)].toFixed(2) };
};
type Mode = "serial" | "afterCall" | "inTimer";
const res: Record<string, { total: number[]; first: number[]; call: number[] }> = {};
for (let r = 0; r < 5; r++) {
  for (const mode of ["serial", "afterCall", "inTimer"] as Mode[]) {
    const acc = res[mode] ??= { total: [], first: [], call: [] };
    const t = performance.now();
    batch(n, 0);
    if (mode === "serial") {
      await staging[0].mapAsync(GPUMapMode.READ);
      acc.first.push(performance.now() - t);
      batch(n, 1);
    } else {
      const tc = performance.now();
      const p = staging[0].mapAsync(GPUMapMode.READ);
      acc.call.push(performance.now() - tc);
      if (mode === "afterCall") batch(n, 1);
      else setTimeout(() => batch(n, 1), 0);
      await p;
      acc.first.push(performance.now() - t);
    }
    await staging[1].mapAsync(GPUMapMode.READ);
    acc.total.push(performance.now() - t);
    staging[0].unmap();
    staging[1].unmap();
  }
}
const out: Record<string, unknown> = { device: ctx.adapterName, workMs, dispatches: n };
for (const [k, v] of Object.entries(res)) {
  out[k] = {
    total: stats(v.total),
    first: stats(v.first),
    ...(v.call.length ? { call: stats(v.call) } : {}),
  };
}
console.log(JSON.stringify(out));
