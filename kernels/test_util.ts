/**
 * Helpers for kernel tests: a device, random data, buffers from arrays, one-dispatch runs and tolerances.
 * GPU tests need a WebGPU adapter (llvmpipe is enough); set EDGEMIX_SKIP_GPU_TESTS=1 to skip them where none
 * exists. Without that variable a missing adapter fails the tests rather than passing them silently.
 *
 * @module
 */

import { dequantize } from "../engine/quant/pack.ts";
import { quantizeRtn } from "../engine/quant/quantize.ts";
import type { DType } from "../engine/types.ts";
import { buildQuantSet, type QuantMatrix } from "./qmatvec.ts";
import {
  acquireGpu,
  type Dispatch,
  encodeDispatch,
  type GpuContext,
  type Program,
  readBuffer,
  StepRing,
  type StepValues,
  uploadBuffer,
} from "./gpu.ts";

/** Whether GPU tests are skipped on purpose. */
export const SKIP_GPU = Deno.env.get("EDGEMIX_SKIP_GPU_TESTS") === "1";

/** The shared device and a step ring for tests. */
export async function testGpu(): Promise<{ ctx: GpuContext; device: GPUDevice; ring: StepRing }> {
  const ctx = await acquireGpu();
  ring ??= new StepRing(ctx.device, 8);
  return { ctx, device: ctx.device, ring };
}
let ring: StepRing | undefined;

/** A seeded generator of uniform numbers in [lo, hi). */
export function rng(seed: number): (lo?: number, hi?: number) => number {
  let s = seed >>> 0 || 1;
  return (lo = -1, hi = 1) => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return lo + (hi - lo) * (s / 4294967296);
  };
}

/** `n` random values in [lo, hi). */
export function randomArray(
  r: (lo?: number, hi?: number) => number,
  n: number,
  lo = -1,
  hi = 1,
): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = r(lo, hi);
  return a;
}

/**
 * Moves the values of `x` (rows of `k`) whose int8 level per block of 32 (scale `max |x| / 127`) is within 0.02
 * of a tie by 0.04 of a level, in place, and returns `x`: a GPU's f32 division (2.5 ULP in WGSL) may round
 * such a value to the other level than the CPU reference does, and a one-level difference is larger than the
 * kernel tests' tolerance. The block maxima (levels ±127) never move.
 */
export function int8SafeInputs(x: Float32Array, k: number): Float32Array {
  for (let o = 0; o < x.length; o += k) {
    for (let b = o; b < o + k; b += 32) {
      const end = Math.min(b + 32, o + k);
      let m = 0;
      for (let i = b; i < end; i++) m = Math.max(m, Math.abs(x[i]));
      const scale = Math.fround(m / 127);
      if (scale === 0) continue;
      for (let i = b; i < end; i++) {
        const v = x[i] / scale, f = v - Math.floor(v);
        if (Math.abs(f - 0.5) < 0.02) x[i] = Math.fround(x[i] + (f < 0.5 ? -0.04 : 0.04) * scale);
      }
    }
  }
  return x;
}

/** A weight array as the GPU stores it: f32 as is, f16 rounded and packed two per u32. */
export function weightData(values: Float32Array, dtype: DType): ArrayBufferView {
  return dtype === "f16" ? new Uint16Array(new Float16Array(values).buffer) : values;
}

/** `values` rounded to f16 and back (what an f16 weight holds). */
export function roundF16(values: Float32Array): Float32Array {
  return new Float32Array(new Float16Array(values));
}

/** Uploads `data` to a new buffer labelled `label`. */
export function buf(device: GPUDevice, label: string, data: ArrayBufferView): GPUBuffer {
  return uploadBuffer(device, label, data);
}

/** Runs dispatches in order with `step` in slot 0, then reads `bytes` of `out` back. */
export async function runAndRead(
  device: GPUDevice,
  ring: StepRing,
  dispatches: Dispatch[],
  step: Partial<StepValues>,
  out: GPUBuffer,
  bytes: number,
): Promise<ArrayBuffer> {
  const off = ring.set(0, { pos: 0, rows: 1, step: 0, srcRing: false, ringIn: 0, logitsRow: 0, ...step });
  ring.flush(device);
  const enc = device.createCommandEncoder({ label: "test" });
  const pass = enc.beginComputePass({ label: "test" });
  for (const d of dispatches) encodeDispatch(pass, ring, d, off);
  pass.end();
  device.queue.submit([enc.finish()]);
  return await readBuffer(device, out, 0, bytes);
}

/**
 * Binds `buffers` to `program`, runs one dispatch of `grid` with `rows` rows and reads `floats` f32 values of
 * `out` back.
 */
export async function runProgram(
  device: GPUDevice,
  ring: StepRing,
  program: Program,
  buffers: GPUBuffer[],
  grid: [number, number, number],
  rows: number,
  out: GPUBuffer,
  floats: number,
): Promise<Float32Array> {
  const group = program.bind("t", buffers);
  return new Float32Array(
    await runAndRead(device, ring, [{ program, group, grid }], { rows }, out, floats * 4),
  );
}

/** max|a - b| / max|b| (0 when b is all zeros and a equals it). */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0, m = 0;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return m === 0 ? d : d / m;
}

/** Relative RMS error ‖a − b‖₂ / ‖b‖₂ of `a` against the reference `b` (Infinity where `a` is not finite). */
export function relRmsError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0, m = 0;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    d += (a[i] - b[i]) ** 2;
    m += b[i] ** 2;
  }
  return Math.sqrt(m === 0 ? d : d / m);
}

/** A quantization scheme of a test matrix: "f16", or [bits, group]. */
export type TestScheme = "f16" | [number, number];

/** A random matrix [rows, cols] in scheme `s` and the values the kernels must compute with (dequantized). */
export function makeQuantMatrix(
  r: () => number,
  rows: number,
  cols: number,
  s: TestScheme,
): { m: QuantMatrix; w: Float32Array } {
  const raw = randomArray(r, rows * cols, -0.5, 0.5);
  if (s === "f16") {
    return { m: { rows, cols, f16: new Uint16Array(new Float16Array(raw).buffer) }, w: roundF16(raw) };
  }
  const p = quantizeRtn(raw, rows, cols, s[0], s[1]);
  return { m: p, w: dequantize(p) };
}

/** A packed weight set as the kernels bind it. */
export type TestQuantSet = ReturnType<typeof buildQuantSet>;

/**
 * Random experts, expert e's gate/up [2I, H] in `guSchemes[e]` and its down [H, I] in `dnSchemes[e]`: their packed
 * sets, and the values the kernels must compute with (dequantized, experts one after another, as expertsRef takes
 * them).
 */
export function makeQuantExperts(
  r: () => number,
  H: number,
  I: number,
  guSchemes: TestScheme[],
  dnSchemes: TestScheme[],
): { guSet: TestQuantSet; dnSet: TestQuantSet; guRef: Float32Array; dnRef: Float32Array } {
  const gu = guSchemes.map((s) => makeQuantMatrix(r, 2 * I, H, s));
  const dn = dnSchemes.map((s) => makeQuantMatrix(r, H, I, s));
  const guRef = new Float32Array(gu.length * 2 * I * H), dnRef = new Float32Array(dn.length * H * I);
  gu.forEach((g, e) => guRef.set(g.w, e * 2 * I * H));
  dn.forEach((d, e) => dnRef.set(d.w, e * H * I));
  return { guSet: buildQuantSet(gu.map((g) => g.m)), dnSet: buildQuantSet(dn.map((d) => d.m)), guRef, dnRef };
}

/** GPU buffers of a packed set's qw, qp and meta, in binding order. */
export function quantSetBuffers(device: GPUDevice, label: string, set: TestQuantSet): GPUBuffer[] {
  return [
    buf(device, `${label}.qw`, set.qw),
    buf(device, `${label}.qp`, set.qp),
    buf(device, `${label}.meta`, set.meta),
  ];
}
