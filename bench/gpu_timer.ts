/**
 * GPU time of compute passes from timestamp queries, for the benchmarks: a pass is encoded between a
 * beginning and an end timestamp, submitted, and its duration read back (one awaited round trip per pass); and
 * untimed passes of repeated dispatches, and a busy-work kernel to fill them.
 *
 * @module
 */

import { type Dispatch, encodeDispatch, Program, type StepRing, storageBuffer } from "../kernels/gpu.ts";
import { prelude } from "../kernels/wgsl.ts";

/** Submits `n` copies of dispatch `d` (step slot at byte `offset` of `ring`) in one untimed pass. */
export function submitRepeated(
  device: GPUDevice,
  ring: StepRing,
  d: Dispatch,
  offset: number,
  n: number,
  label: string,
): void {
  const enc = device.createCommandEncoder({ label });
  const pass = enc.beginComputePass({ label });
  for (let i = 0; i < n; i++) encodeDispatch(pass, ring, d, offset);
  pass.end();
  device.queue.submit([enc.finish()]);
}

/**
 * Busy work for the readback benchmarks: a kernel whose `groups` workgroups × 256 threads each read a 64 KiB
 * buffer `rounds` times (a: [16384] f32). Returns a function submitting `n` dispatches of it in one pass (step
 * slot 0 of `ring`).
 */
export async function spinWork(
  device: GPUDevice,
  ring: StepRing,
  label: string,
  rounds: number,
  groups: number,
): Promise<(n: number) => void> {
  const spin = await Program.get(
    device,
    ring,
    label,
    `${prelude()}
@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  var s = 0.0;
  for (var r = 0u; r < ${rounds}u; r++) {
    for (var i = li; i < 16384u; i += 256u) { s += a[i] * f32(r); }
  }
  if (s == 1234.5) { a[wg.x] = s; }
}`,
    ["write"],
  );
  const a = storageBuffer(device, `${label}.a`, 16384 * 4);
  const d: Dispatch = { program: spin, group: spin.bind(label, [a]), grid: [groups, 1, 1] };
  const off = ring.set(0, { pos: 0, rows: 1, step: 0, srcRing: false, ringIn: 0, logitsRow: 0 });
  ring.flush(device);
  return (n) => submitRepeated(device, ring, d, off, n, `${label}.work`);
}

/** Times of one pass: on the GPU, and on the CPU to encode it. */
export interface PassTime {
  /** GPU microseconds from the pass's first to its last timestamp. */
  gpuUs: number;
  /** CPU microseconds spent in `encode`. */
  encodeUs: number;
}

/** Times compute passes on `device` (which must have `timestamp-query`). */
export class PassTimer {
  readonly #device: GPUDevice;
  readonly #querySet: GPUQuerySet;
  readonly #resolve: GPUBuffer;
  readonly #readback: GPUBuffer;

  /** Makes the query set and buffers (labelled `label.…`). */
  constructor(device: GPUDevice, label = "bench") {
    if (!device.features.has("timestamp-query")) {
      throw new Error("Cannot time GPU passes: the device has no timestamp-query feature");
    }
    this.#device = device;
    this.#querySet = device.createQuerySet({ label: `${label}.timestamps`, type: "timestamp", count: 2 });
    this.#resolve = device.createBuffer({
      label: `${label}.resolve`,
      size: 16,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    this.#readback = device.createBuffer({
      label: `${label}.readback`,
      size: 16,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  /** Encodes one pass with `encode`, submits it and waits for its time. */
  async pass(encode: (pass: GPUComputePassEncoder) => void): Promise<PassTime> {
    const enc = this.#device.createCommandEncoder({ label: "timed" });
    const pass = enc.beginComputePass({
      label: "timed",
      timestampWrites: { querySet: this.#querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
    });
    const t0 = performance.now();
    encode(pass);
    const encodeUs = (performance.now() - t0) * 1000;
    pass.end();
    enc.resolveQuerySet(this.#querySet, 0, 2, this.#resolve, 0);
    enc.copyBufferToBuffer(this.#resolve, 0, this.#readback, 0, 16);
    this.#device.queue.submit([enc.finish()]);
    await this.#readback.mapAsync(GPUMapMode.READ);
    const [a, b] = new BigUint64Array(this.#readback.getMappedRange().slice(0));
    this.#readback.unmap();
    return { gpuUs: Number(b - a) / 1000, encodeUs };
  }

  /**
   * Time per dispatch of `reps` dispatches of `ds` in turn (step slot at byte `offset` of `ring`): the best of
   * `trials` passes after one that is discarded (pipeline warm-up).
   */
  async perDispatch(
    ring: StepRing,
    ds: readonly Dispatch[],
    offset: number,
    reps: number,
    trials = 5,
  ): Promise<PassTime> {
    let best: PassTime = { gpuUs: Infinity, encodeUs: Infinity };
    for (let trial = 0; trial <= trials; trial++) {
      const t = await this.pass((p) => {
        for (let i = 0; i < reps; i++) encodeDispatch(p, ring, ds[i % ds.length], offset);
      });
      if (trial === 0) continue;
      best = {
        gpuUs: Math.min(best.gpuUs, t.gpuUs / reps),
        encodeUs: Math.min(best.encodeUs, t.encodeUs / reps),
      };
    }
    return best;
  }
}
