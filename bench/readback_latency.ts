/**
 * When a readback (`GPUBuffer.mapAsync`) resolves relative to the GPU work around it, in this runtime: the
 * generation loop's schedule depends on it. Cases (milliseconds from the `mapAsync` call, best and median of 5):
 * - `alone`: a 16-byte copy, nothing else in the queue (the bare round trip);
 * - `behind`: the copy, then a second submission of `--work` ms of GPU work; the map of the copy resolves early
 *   if the runtime waits only for the copy, late if it waits for everything submitted;
 * - `after-work`: the copy submitted behind the long work (a floor: the work's time);
 * and whether the JavaScript thread runs meanwhile (1 ms interval timer ticks during the `behind` wait), and
 * where the wait happens behind `--work` ms of work: when the `mapAsync` call returns, when a zero-delay timer set
 * right after it fires, and when its promise resolves.
 *
 *   deno run -A bench/readback_latency.ts [--work 40]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { acquireGpu, StepRing, storageBuffer } from "../kernels/gpu.ts";
import { spinWork } from "./gpu_timer.ts";

const { values } = parseArgs({ args: Deno.args, options: { work: { type: "string", default: "40" } } });
const workMs = Number(values.work);
const ctx = await acquireGpu();
const device = ctx.device;
const ring = new StepRing(device, 2);
// Spin work: each of 1,024 workgroups × 256 threads reads a 64 KiB buffer 64 times (about 0.3–1 ms on an H200).
const submitWork = await spinWork(device, ring, "readback-spin", 64, 1024);
// src: [4] u32; staging: [4] u32 mappable.
const src = storageBuffer(device, "readback.src", 16);
const staging = device.createBuffer({
  label: "readback.staging",
  size: 16,
  usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
});

function submitCopy(): void {
  const enc = device.createCommandEncoder({ label: "readback.copy" });
  enc.copyBufferToBuffer(src, 0, staging, 0, 16);
  device.queue.submit([enc.finish()]);
}
async function mapMs(): Promise<number> {
  const t = performance.now();
  await staging.mapAsync(GPUMapMode.READ);
  const ms = performance.now() - t;
  staging.unmap();
  return ms;
}

// Calibrate the work: dispatches per millisecond from a 200-dispatch submission.
submitWork(200);
await device.queue.onSubmittedWorkDone();
const t0 = performance.now();
submitWork(200);
await device.queue.onSubmittedWorkDone();
const perMs = 200 / Math.max(1, performance.now() - t0 - 11);
const n = Math.max(1, Math.round(perMs * workMs));

const stats = (xs: number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  return { best: +s[0].toFixed(2), median: +s[Math.floor(s.length / 2)].toFixed(2) };
};
const out: Record<string, unknown> = { device: ctx.adapterName, workMs, dispatches: n };
const alone: number[] = [], behind: number[] = [], after: number[] = [];
const call: number[] = [], timer: number[] = [], resolve: number[] = [];
let ticks = 0;
for (let r = 0; r < 5; r++) {
  // Where the wait happens: in the mapAsync call itself, before a zero-delay timer, or only in the await.
  submitWork(n);
  submitCopy();
  const t = performance.now();
  const p = staging.mapAsync(GPUMapMode.READ);
  call.push(performance.now() - t);
  const fired = new Promise<number>((res) => setTimeout(() => res(performance.now() - t), 0));
  await p;
  resolve.push(performance.now() - t);
  timer.push(await fired);
  staging.unmap();
  submitCopy();
  alone.push(await mapMs());
  submitCopy();
  submitWork(n);
  const iv = setInterval(() => ticks++, 1);
  behind.push(await mapMs());
  clearInterval(iv);
  await device.queue.onSubmittedWorkDone();
  submitWork(n);
  submitCopy();
  after.push(await mapMs());
}
out.alone = stats(alone);
out.callReturns = stats(call);
out.zeroTimerFires = stats(timer);
out.mapResolves = stats(resolve);
out.behind = stats(behind);
out.afterWork = stats(after);
out.timerTicksPerBehindMs = +(ticks / behind.reduce((x, y) => x + y, 0)).toFixed(2);
console.log(JSON.stringify(out));
