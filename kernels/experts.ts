/**
 * Expert-indexed grouped mat-vecs of the MoE block: every chosen (row, expert) pair of every token runs in
 * one dispatch per projection, reading the expert id the router wrote on the GPU.
 * - gate/up: `h[r·k + j] = silu(gate_e · x_r) ⊙ (up_e · x_r)` for expert e = ids[r, j];
 * - down: `x_r += α · (Σ_j w_rj · down_e · h[r·k + j] + s_r · down_shared · h_shared[r])`, the residual add fused.
 * Dense MLPs and the shared expert reuse them as one always-chosen expert.
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
  weightChunk,
  weightDecl,
  weightDotFn,
} from "./wgsl.ts";

/** Shape of the gate/up mat-vec (outputs: expert-hidden features, a gate and an up row each). */
export const GATEUP_SHAPE: MatvecShape = { tpo: 16, outs: 8 };
/** Shape of the down mat-vec. */
export const DOWN_SHAPE: MatvecShape = { tpo: 64, outs: 2, split: 8 };

/** Shapes of the gate/up projection. */
export interface GateUpParams {
  /** Hidden size H. */
  hidden: number;
  /** Expert width I. */
  inter: number;
  /** Experts per row k (1 for dense and shared). */
  topK: number;
  /** Weight precision. */
  dtype: DType;
  /**
   * The RMSNorm of x (this epsilon) fused in: x is the un-normalized input, the norm weight [H] f32 is bound
   * last, and each row's gate and up sums are scaled by its `1/rms` (no norm dispatch before it).
   */
  normEps?: number;
}

/**
 * WGSL of gate/up. Bindings: 0 x [R, H] f32; 1 W [E, 2I, H] (I gate rows then I up rows per expert);
 * 2 ids [R, k] u32; 3 h [R k, I] f32; with `normEps` 4 the norm weight [H] f32. Grid: (ceil(I / shape.outs),
 * rows · k).
 */
export function gateUpWgsl(p: GateUpParams, shape: MatvecShape = GATEUP_SHAPE): string {
  checkRowLength("gate-up", p.hidden, p.dtype);
  checkMatvecShape("gate-up", shape);
  const ch = weightChunk(p.dtype);
  const wg = shape.outs * shape.tpo;
  const norm = p.normEps !== undefined;
  // With the norm fused in, the output's TPO threads also sum the squares of the x values they read (together
  // the whole row) and both sums are scaled by the row's 1/rms.
  const body = norm
    ? `let d = ndot_w(r * H4 + c * XSTEP, c * XSTEP, gRow + c, uRow + c);
      g += d.x;
      u += d.y;
      ss += d.z;`
    : `g += dot_w(gRow + c, r * H4 + c * XSTEP);
      u += dot_w(uRow + c, r * H4 + c * XSTEP);`;
  const inv = norm ? ` * inverseSqrt(ps[li] / ${f32Lit(p.hidden)} + ${f32Lit(p.normEps!)})` : "";
  return `${prelude()}
const I: u32 = ${p.inter}u;
const TOPK: u32 = ${p.topK}u;
const H4: u32 = ${p.hidden / 4}u;
const KC: u32 = ${p.hidden / ch}u;
const XSTEP: u32 = ${ch / 4}u;
const TPO: u32 = ${shape.tpo}u;
@group(0) @binding(0) var<storage, read> xs: array<vec4<f32>>;
${weightDecl(1, "w", p.dtype)}
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> h: array<f32>;
${norm ? normWeightDecl(4) : ""}
${norm ? normedDotFn("w", p.dtype, "xs", 2) : weightDotFn("w", p.dtype, "xs")}
var<workgroup> pg: array<f32, ${wg}>;
var<workgroup> pu: array<f32, ${wg}>;
${norm ? `var<workgroup> ps: array<f32, ${wg}>;` : ""}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let slot = wg.y;
  if (slot >= st.rows * TOPK) { return; }
  let r = slot / TOPK;
  let e = ids[slot];
  let t = li % TPO;
  let i = wg.x * ${shape.outs}u + li / TPO;
  var g = 0.0;
  var u = 0.0;
  var ss = 0.0;
  if (i < I) {
    let gRow = (e * 2u * I + i) * KC;
    let uRow = (e * 2u * I + I + i) * KC;
    for (var c = t; c < KC; c += TPO) {
      ${body}
    }
  }
  pg[li] = g;
  pu[li] = u;
  ${norm ? "ps[li] = ss;" : ""}
  workgroupBarrier();
  for (var s = TPO / 2u; s > 0u; s >>= 1u) {
    if (t < s) { pg[li] += pg[li + s]; pu[li] += pu[li + s]; ${norm ? "ps[li] += ps[li + s];" : ""} }
    workgroupBarrier();
  }
  if (t == 0u && i < I) {
    let gv = pg[li]${inv};
    h[slot * I + i] = gv / (1.0 + exp(-gv)) * pu[li]${inv};
  }
}`;
}

/** Shapes of the down projection. */
export interface DownParams {
  /** Hidden size H. */
  hidden: number;
  /** Expert width I. */
  inter: number;
  /** Experts per row k. */
  topK: number;
  /** Shared expert width S (0: none). */
  shared: number;
  /** Weight precision. */
  dtype: DType;
  /** Residual multiplier α. */
  alpha: number;
}

/**
 * WGSL of down. Bindings: 0 h [R k, I] f32; 1 W [E, H, I]; 2 ids [R, k] u32; 3 weights [R, k] f32;
 * 4 x [R, H] f32 (read-modify-write); with a shared expert also 5 h_shared [R, S] f32, 6 W_shared [H, S],
 * 7 shared gate [R] f32. Grid: (ceil(H / shape.outs), rows).
 */
export function downWgsl(p: DownParams, shape: MatvecShape = DOWN_SHAPE): string {
  checkRowLength("down", p.inter, p.dtype);
  if (p.shared > 0) checkRowLength("shared-down", p.shared, p.dtype);
  checkMatvecShape("down", shape);
  const ch = weightChunk(p.dtype);
  const wg = shape.outs * shape.tpo;
  return `${prelude()}
const H: u32 = ${p.hidden}u;
const TOPK: u32 = ${p.topK}u;
const SPLIT: u32 = ${shape.split ?? 1}u;
const TPR: u32 = ${shape.tpo / (shape.split ?? 1)}u;
const I4: u32 = ${p.inter / 4}u;
const KC: u32 = ${p.inter / ch}u;
const XSTEP: u32 = ${ch / 4}u;
const TPO: u32 = ${shape.tpo}u;
@group(0) @binding(0) var<storage, read> hs: array<vec4<f32>>;
${weightDecl(1, "w", p.dtype)}
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read> wts: array<f32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;
${
    p.shared > 0
      ? `@group(0) @binding(5) var<storage, read> shs: array<vec4<f32>>;
${weightDecl(6, "ws", p.dtype)}
@group(0) @binding(7) var<storage, read> sg: array<f32>;
const S4: u32 = ${p.shared / 4}u;
const SC: u32 = ${p.shared / ch}u;
${weightDotFn("ws", p.dtype, "shs")}`
      : ""
  }
${weightDotFn("w", p.dtype, "hs")}
var<workgroup> part: array<f32, ${wg}>;
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.y;
  if (r >= st.rows) { return; }
  let t = li % TPO;
  let c = wg.x * ${shape.outs}u + li / TPO;
  var acc = 0.0;
  if (c < H) {
    // Teams of TPR threads sum different experts.
    for (var j = t / TPR; j < TOPK; j += SPLIT) {
      let slot = r * TOPK + j;
      let row = (ids[slot] * H + c) * KC;
      var d = 0.0;
      for (var q = t % TPR; q < KC; q += TPR) { d += dot_w(row + q, slot * I4 + q * XSTEP); }
      acc += wts[slot] * d;
    }
    ${
    p.shared > 0
      ? `var sd = 0.0;
    for (var q = t; q < SC; q += TPO) { sd += dot_ws(c * SC + q, r * S4 + q * XSTEP); }
    acc += sg[r] * sd;`
      : ""
  }
  }
  part[li] = acc;
  workgroupBarrier();
  for (var s = TPO / 2u; s > 0u; s >>= 1u) {
    if (t < s) { part[li] += part[li + s]; }
    workgroupBarrier();
  }
  if (t == 0u && c < H) { x[r * H + c] += ${f32Lit(p.alpha)} * part[li]; }
}`;
}

/** The gate/up program (`shape`: see {@linkcode gateUpWgsl}). */
export function gateUpProgram(
  device: GPUDevice,
  ring: StepRing,
  p: GateUpParams,
  shape: MatvecShape = GATEUP_SHAPE,
): Promise<Program> {
  const access: ("read" | "write")[] = ["read", "read", "read", "write"];
  return P.get(
    device,
    ring,
    "gate-up",
    gateUpWgsl(p, shape),
    p.normEps !== undefined ? [...access, "read"] : access,
  );
}

/** The down program (`shape`: see {@linkcode downWgsl}). */
export function downProgram(
  device: GPUDevice,
  ring: StepRing,
  p: DownParams,
  shape: MatvecShape = DOWN_SHAPE,
): Promise<Program> {
  const b: ("read" | "write")[] = ["read", "read", "read", "read", "write"];
  if (p.shared > 0) b.push("read", "read", "read");
  return P.get(device, ring, "down", downWgsl(p, shape), b);
}
