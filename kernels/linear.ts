/**
 * Linear layers `y = α · (x · Wᵀ + b)`, stored into y or added to it (the residual add is fused), in two
 * shapes: a mat-vec for decode (few rows; many workgroups, each owning a few output features, so the weights
 * stream once at full bandwidth) and a tiled GEMM for prefill (many rows; weight tiles shared through
 * workgroup memory).
 *
 * @module
 */

import type { DType } from "../engine/types.ts";
import { type Program, Program as P, type StepRing } from "./gpu.ts";
import {
  checkMatvecShape,
  checkRowLength,
  f32Lit,
  type MatvecShape,
  normedDotFn,
  normWeightDecl,
  prelude,
  tileAccumulate,
  tileAccumulators,
  weightChunk,
  weightDecl,
  weightDotFn,
  weightTileLoad,
} from "./wgsl.ts";

/** Shape and epilogue of a linear layer. */
export interface LinearParams {
  /** Label for pipelines and errors. */
  label: string;
  /** Output features N. */
  n: number;
  /** Input features K. */
  k: number;
  /** Weight precision. */
  dtype: DType;
  /** A bias [N] is bound after the weight. */
  bias: boolean;
  /** "store": y = α(xWᵀ + b); "add": y += α(xWᵀ + b). */
  mode: "store" | "add";
  /** Output scale α. */
  alpha: number;
  /**
   * Mat-vec only: the RMSNorm of x (this epsilon) is fused in — the kernel reads the un-normalized x, binds the
   * norm weight [K] f32 last, and scales each row's dot products by its `1/rms`, so no norm dispatch runs
   * before it.
   */
  normEps?: number;
}

/** Shape of the mat-vec: threads per output feature and output features per workgroup. */
export const GEMV_SHAPE: MatvecShape = { tpo: 32, outs: 8 };
/** Shape of the mat-vec for fewer than 1,024 outputs (a router): more workgroups, 64 threads per output. */
export const SMALL_GEMV_SHAPE: MatvecShape = { tpo: 64, outs: 4 };

/** The mat-vec shape for `n` output features. */
export function gemvShape(n: number): MatvecShape {
  return n < 1024 ? SMALL_GEMV_SHAPE : GEMV_SHAPE;
}

function epilogue(p: LinearParams, idx: string, v: string, n: string): string {
  const withBias = p.bias ? `(${v} + bias[${n}])` : v;
  const scaled = p.alpha === 1 ? withBias : `${f32Lit(p.alpha)} * ${withBias}`;
  return p.mode === "add" ? `y[${idx}] = y[${idx}] + ${scaled};` : `y[${idx}] = ${scaled};`;
}

function bindings(p: LinearParams): string {
  return `@group(0) @binding(0) var<storage, read> xs: array<vec4<f32>>;
${weightDecl(1, "w", p.dtype)}
${p.bias ? "@group(0) @binding(2) var<storage, read> bias: array<f32>;" : ""}
@group(0) @binding(${p.bias ? 3 : 2}) var<storage, read_write> y: array<f32>;
${p.normEps !== undefined ? normWeightDecl(p.bias ? 4 : 3) : ""}`;
}

/**
 * WGSL of the mat-vec. Bindings: 0 x [R, K] f32, 1 W [N, K], (2 bias [N]), then y [R, N] f32, and with `normEps`
 * last the norm weight [K] f32 (x is then the un-normalized input). Grid: ceil(N / shape.outs) workgroups (2-D
 * when above the per-dimension limit); rows: `st.rows`.
 */
export function gemvWgsl(p: LinearParams, shape: MatvecShape = GEMV_SHAPE): string {
  checkRowLength(p.label, p.k, p.dtype);
  checkMatvecShape(p.label, shape);
  const ch = weightChunk(p.dtype);
  const wg = shape.outs * shape.tpo;
  const norm = p.normEps !== undefined;
  // With the norm fused in, each of an output's TPO threads also sums the squares of the x values it reads;
  // together they read the whole row, so the reduced sum is the row's.
  const body = norm
    ? `{ let d = ndot_w(xrow + c * XSTEP, c * XSTEP, wrow + c); acc += d.x; ss += d.y; }`
    : `{ acc += dot_w(wrow + c, xrow + c * XSTEP); }`;
  return `${prelude()}
const N: u32 = ${p.n}u;
const K4: u32 = ${p.k / 4}u;
const KC: u32 = ${p.k / ch}u;
const XSTEP: u32 = ${ch / 4}u;
const TPO: u32 = ${shape.tpo}u;
${bindings(p)}
${norm ? normedDotFn("w", p.dtype, "xs", 1) : weightDotFn("w", p.dtype, "xs")}
var<workgroup> part: array<f32, ${wg}>;
${norm ? `var<workgroup> pss: array<f32, ${wg}>;` : ""}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let wid = wg.x + wg.y * nwg.x;
  if (wid * ${shape.outs}u >= N) { return; }
  let t = li % TPO;
  let n = wid * ${shape.outs}u + li / TPO;
  for (var r = 0u; r < st.rows; r++) {
    var acc = 0.0;
    var ss = 0.0;
    if (n < N) {
      let wrow = n * KC;
      let xrow = r * K4;
      for (var c = t; c < KC; c += TPO) ${body}
    }
    part[li] = acc;
    ${norm ? "pss[li] = ss;" : ""}
    workgroupBarrier();
    for (var s = TPO / 2u; s > 0u; s >>= 1u) {
      if (t < s) { part[li] += part[li + s]; ${norm ? "pss[li] += pss[li + s];" : ""} }
      workgroupBarrier();
    }
    if (t == 0u && n < N) {
      let v = part[li]${norm ? ` * inverseSqrt(pss[li] / ${f32Lit(p.k)} + ${f32Lit(p.normEps!)})` : ""};
      ${epilogue(p, "r * N + n", "v", "n")}
    }
    workgroupBarrier();
  }
}`;
}

/** Tile sizes of the GEMM: BM rows × BN features per workgroup, BK inputs per step. */
export const GEMM_BM = 64, GEMM_BN = 64, GEMM_BK = 16;

/**
 * WGSL of the tiled GEMM. Same bindings as {@linkcode gemvWgsl}.
 * Grid: (ceil(N / 64), ceil(rows / 64)); 256 threads, each computing 4 × 4 outputs.
 */
export function gemmWgsl(p: LinearParams): string {
  checkRowLength(p.label, p.k, p.dtype);
  if (p.normEps !== undefined) {
    throw new RangeError(`Cannot build the GEMM ${p.label}: a fused RMSNorm is for the mat-vec only`);
  }
  const loadW = weightTileLoad(p.dtype);
  return `${prelude()}
const N: u32 = ${p.n}u;
const K: u32 = ${p.k}u;
const BM: u32 = ${GEMM_BM}u;
const BN: u32 = ${GEMM_BN}u;
const BK: u32 = ${GEMM_BK}u;
${bindings(p)}
var<workgroup> xt: array<f32, ${GEMM_BM * GEMM_BK}>;
var<workgroup> ws: array<f32, ${GEMM_BN * GEMM_BK}>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let n0 = wg.x * BN;
  let m0 = wg.y * BM;
  if (m0 >= st.rows) { return; }
  let tx = li % 16u;
  let ty = li / 16u;
  ${tileAccumulators(4)}
  for (var k0 = 0u; k0 < K; k0 += BK) {
    {
      let row = li / 4u; let kc = (li % 4u) * 4u;
      let m = m0 + row;
      var a = vec4<f32>(0.0);
      if (m < st.rows && k0 + kc < K) { a = xs[(m * K + k0 + kc) / 4u]; }
      xt[row * BK + kc] = a.x; xt[row * BK + kc + 1u] = a.y; xt[row * BK + kc + 2u] = a.z; xt[row * BK + kc + 3u] = a.w;
    }
    ${loadW}
    workgroupBarrier();
    ${tileAccumulate(4)}
    workgroupBarrier();
  }
  let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + ty * 4u + i;
    if (m >= st.rows) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + tx * 4u + j;
      if (n < N) {
        let v = accs[i][j];
        ${epilogue(p, "m * N + n", "v", "n")}
      }
    }
  }
}`;
}

/** The mat-vec program (`shape`: see {@linkcode gemvWgsl}). */
export function gemvProgram(
  device: GPUDevice,
  ring: StepRing,
  p: LinearParams,
  shape: MatvecShape = GEMV_SHAPE,
): Promise<Program> {
  return P.get(device, ring, `gemv-${p.label}`, gemvWgsl(p, shape), linearBindings(p));
}

/** The GEMM program. */
export function gemmProgram(device: GPUDevice, ring: StepRing, p: LinearParams): Promise<Program> {
  return P.get(device, ring, `gemm-${p.label}`, gemmWgsl(p), linearBindings(p));
}

function linearBindings(p: LinearParams): ("read" | "write")[] {
  const b: ("read" | "write")[] = p.bias ? ["read", "read", "read", "write"] : ["read", "read", "write"];
  return p.normEps !== undefined ? [...b, "read"] : b;
}
