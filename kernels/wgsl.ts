/**
 * WGSL snippets shared by the kernels: how weights and KV-cache entries of each precision are declared and
 * read. f16 data is stored packed two per `u32` (element 2j in the low half) and read with
 * `unpack2x16float`, so the f16 storage paths need no `shader-f16` feature and run on every adapter;
 * arithmetic is always f32.
 *
 * @module
 */

import type { DType } from "../engine/types.ts";
import { STEP_WGSL } from "./gpu.ts";

/** Elements of one vector load of a weight row: 8 f16 (a vec4<u32>) or 4 f32 (a vec4<f32>). */
export function weightChunk(dtype: DType): number {
  return dtype === "f16" ? 8 : 4;
}

/** Throws unless rows of `k` elements can be read in whole chunks of `dtype`. */
export function checkRowLength(label: string, k: number, dtype: DType): void {
  const chunk = weightChunk(dtype);
  if (k % chunk !== 0) {
    throw new RangeError(
      `Cannot build kernel ${label}: row length ${k} is not a multiple of ${chunk} for ${dtype} weights`,
    );
  }
}

/** Declaration of a read-only weight array at `binding`. */
export function weightDecl(binding: number, name: string, dtype: DType): string {
  const t = dtype === "f16" ? "vec4<u32>" : "vec4<f32>";
  return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<${t}>;`;
}

/**
 * A function `dot_<name>(c, x4)`: the dot product of weight chunk `c` of `name` with the 4-vectors of
 * activation array `xs` starting at vec4 index `x4` (one vec4 for f32 chunks, two for f16 chunks).
 */
export function weightDotFn(name: string, dtype: DType, xs: string): string {
  if (dtype === "f16") {
    return `
fn dot_${name}(c: u32, x4: u32) -> f32 {
  let p = ${name}[c];
  let a = vec4<f32>(unpack2x16float(p.x), unpack2x16float(p.y));
  let b = vec4<f32>(unpack2x16float(p.z), unpack2x16float(p.w));
  return dot(a, ${xs}[x4]) + dot(b, ${xs}[x4 + 1u]);
}`;
  }
  return `
fn dot_${name}(c: u32, x4: u32) -> f32 {
  return dot(${name}[c], ${xs}[x4]);
}`;
}

/**
 * For a mat-vec with the RMSNorm of its input fused in: a function `ndot_<name>(x4, g4, c0[, c1])` returning,
 * over one weight chunk (of each of one or two rows `c0`, `c1` of `name`) and the activations `xs` from vec4
 * `x4`, the dot products of the rows with the activations scaled by the norm weight `gw` (vec4s from `g4`) and,
 * last, the sum of the activations' squares: `vec2(w·(x∘g), Σx²)` or `vec3(w0·(x∘g), w1·(x∘g), Σx²)`. The
 * caller multiplies the reduced dot products by the row's `inverseSqrt(Σx² / K + eps)`.
 */
export function normedDotFn(name: string, dtype: DType, xs: string, rows: 1 | 2): string {
  const args = rows === 1 ? "c0: u32" : "c0: u32, c1: u32";
  const ret = rows === 1 ? "vec2<f32>" : "vec3<f32>";
  if (dtype === "f16") {
    const unpack = (r: number) =>
      `let p${r} = ${name}[c${r}];
  let a${r} = vec4<f32>(unpack2x16float(p${r}.x), unpack2x16float(p${r}.y));
  let b${r} = vec4<f32>(unpack2x16float(p${r}.z), unpack2x16float(p${r}.w));`;
    const dots = Array.from({ length: rows }, (_, r) => `dot(a${r}, y0) + dot(b${r}, y1)`).join(", ");
    return `
fn ndot_${name}(x4: u32, g4: u32, ${args}) -> ${ret} {
  ${Array.from({ length: rows }, (_, r) => unpack(r)).join("\n  ")}
  let x0 = ${xs}[x4];
  let x1 = ${xs}[x4 + 1u];
  let y0 = x0 * gw[g4];
  let y1 = x1 * gw[g4 + 1u];
  return ${ret}(${dots}, dot(x0, x0) + dot(x1, x1));
}`;
  }
  const dots = Array.from({ length: rows }, (_, r) => `dot(${name}[c${r}], y0)`).join(", ");
  return `
fn ndot_${name}(x4: u32, g4: u32, ${args}) -> ${ret} {
  let x0 = ${xs}[x4];
  let y0 = x0 * gw[g4];
  return ${ret}(${dots}, dot(x0, x0));
}`;
}

/** Declaration of the RMSNorm weight `gw` ([K] f32 read as vec4s) of a fused mat-vec at `binding`. */
export function normWeightDecl(binding: number): string {
  return `@group(0) @binding(${binding}) var<storage, read> gw: array<vec4<f32>>;`;
}

/** A function `scalar_<name>(i)` reading element `i` of a packed weight array (for small, odd reads). */
export function weightScalarFn(name: string, dtype: DType): string {
  if (dtype === "f16") {
    return `
fn scalar_${name}(i: u32) -> f32 {
  let p = ${name}[i / 8u];
  let j = i % 8u;
  var w = p.x;
  if (j >= 6u) { w = p.w; } else if (j >= 4u) { w = p.z; } else if (j >= 2u) { w = p.y; }
  let v = unpack2x16float(w);
  return select(v.x, v.y, (j & 1u) == 1u);
}`;
  }
  return `
fn scalar_${name}(i: u32) -> f32 {
  return ${name}[i / 4u][i % 4u];
}`;
}

/**
 * How a mat-vec kernel spreads its work: `tpo` threads (a power of two) share one output's dot product and a
 * workgroup computes `outs` outputs (`tpo · outs` threads).
 */
export interface MatvecShape {
  /** Threads per output. */
  tpo: number;
  /** Outputs per workgroup. */
  outs: number;
  /**
   * Down projections only: an output's threads split into this many teams, each summing other experts (default
   * 1: all threads over every expert in turn).
   */
  split?: number;
  /**
   * Packed kernels whose weight set has several code paths (kernels/qmatvec.ts): a thread's chunks in a loop,
   * this many per pass, instead of unrolled whole (default 0). Less code for each path that runs to fetch;
   * used where a thread has more chunks than this, a multiple of it.
   */
  step?: number;
  /**
   * Packed kernels with staged activations and rows of whole 32-value blocks: the activations staged as int8
   * per block of 32 (scale `max |x| / 127`, kernels/cpu/act_quant.ts) and chunked 2-, 3-, 4- and 8-bit rows
   * summed with integer dot products (`dot4I8Packed`, four levels per instruction; default false).
   */
  int8?: boolean;
}

/**
 * Throws unless `s` is a valid mat-vec shape: powers of two, at most 256 threads, teams of whole threads, and
 * a step of a whole number of chunks.
 */
export function checkMatvecShape(label: string, s: MatvecShape): void {
  const ok = (v: number) => Number.isInteger(v) && v > 0 && (v & (v - 1)) === 0;
  const split = s.split ?? 1;
  if (!ok(s.tpo) || !ok(s.outs) || !ok(split) || s.tpo * s.outs > 256 || split > s.tpo) {
    throw new RangeError(
      `Cannot build ${label}: threads per output ${s.tpo}, outputs ${s.outs} and teams ${split} must be ` +
        `powers of two, at most 256 threads and at most one team per thread`,
    );
  }
  if (s.step !== undefined && !(Number.isInteger(s.step) && s.step >= 0)) {
    throw new RangeError(`Cannot build ${label}: the step ${s.step} must be a whole number of chunks`);
  }
}

/** Header of every kernel: the step uniform. */
export function prelude(): string {
  return STEP_WGSL;
}

/** WGSL `f32` literal of a JS number (always with a decimal point or exponent). */
export function f32Lit(v: number): string {
  if (!Number.isFinite(v)) throw new RangeError(`Cannot write ${v} as a WGSL f32 literal`);
  const s = String(v);
  return /[.eE]/.test(s) ? s : `${s}.0`;
}

/**
 * WGSL statements that load a [64 rows][16] tile of weight array `w` (rows n0.., inputs k0..) into the workgroup
 * array `ws` ([64 × 16] f32) with 256 threads (`li`): f32 rows as one vec4 per thread, f16 rows as one vec4<u32>
 * (8 values) on half the threads. `base` is the element offset of the matrix in `w` (an expert's weights);
 * rows ≥ N and inputs ≥ K load zeros. Expects consts N, K, BK = 16.
 */
export function weightTileLoad(dtype: DType, base = "0u"): string {
  if (dtype === "f16") {
    return `if (li < 128u) {
      let row = li / 2u; let kc = (li % 2u) * 8u;
      let n = n0 + row;
      var a = vec4<f32>(0.0); var b = vec4<f32>(0.0);
      if (n < N && k0 + kc < K) {
        let pk = w[(${base} + n * K + k0 + kc) / 8u];
        a = vec4<f32>(unpack2x16float(pk.x), unpack2x16float(pk.y));
        b = vec4<f32>(unpack2x16float(pk.z), unpack2x16float(pk.w));
      }
      let o = row * BK + kc;
      ws[o] = a.x; ws[o + 1u] = a.y; ws[o + 2u] = a.z; ws[o + 3u] = a.w;
      ws[o + 4u] = b.x; ws[o + 5u] = b.y; ws[o + 6u] = b.z; ws[o + 7u] = b.w;
    }`;
  }
  return `{
      let row = li / 4u; let kc = (li % 4u) * 4u;
      let n = n0 + row;
      var a = vec4<f32>(0.0);
      if (n < N && k0 + kc < K) { a = w[(${base} + n * K + k0 + kc) / 4u]; }
      let o = row * BK + kc;
      ws[o] = a.x; ws[o + 1u] = a.y; ws[o + 2u] = a.z; ws[o + 3u] = a.w;
    }`;
}

/**
 * WGSL declaring `acc0 … acc{rows−1}` (vec4<f32>, zero): the outputs of a thread of the tiled GEMMs, `rows` rows
 * × 4 features.
 */
export function tileAccumulators(rows: number): string {
  return Array.from({ length: rows }, (_, i) => `var acc${i} = vec4<f32>(0.0);`).join("\n  ");
}

/**
 * WGSL of one BK step of the tiled GEMMs: thread (tx, ty) multiplies rows ty·rows … of the activation tile `xt`
 * [rows of the tile][BK] by features tx·4 … tx·4+3 of the weight tile `ws` [BN][BK] into its accumulators.
 */
export function tileAccumulate(rows: number): string {
  const lines = Array.from(
    { length: rows },
    (_, i) => `      acc${i} += xt[(ty * ${rows}u${i ? ` + ${i}u` : ""}) * BK + kk] * b;`,
  );
  return `for (var kk = 0u; kk < BK; kk++) {
      let b = vec4<f32>(ws[(tx * 4u) * BK + kk], ws[(tx * 4u + 1u) * BK + kk], ws[(tx * 4u + 2u) * BK + kk],
        ws[(tx * 4u + 3u) * BK + kk]);
${lines.join("\n")}
    }`;
}
