/**
 * The MoE router on the GPU, one workgroup per token row: router logits (and the shared-expert gate logit),
 * then softmax and top-k by the architecture's rule, writing expert ids and weights for the expert kernels.
 * Nothing returns to the CPU.
 *
 * @module
 */

import type { RouterMode } from "../engine/config.ts";
import type { DType } from "../engine/types.ts";
import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { checkRowLength, prelude, weightChunk, weightDecl, weightDotFn } from "./wgsl.ts";

/** Shapes and rule of a router. */
export interface RouterParams {
  /** Experts E. */
  experts: number;
  /** Hidden size H. */
  hidden: number;
  /** Experts per token. */
  topK: number;
  /** Router semantics. */
  mode: RouterMode;
  /** Renormalize kept softmax weights (softmax_topk). */
  normalize: boolean;
  /** Also compute sigmoid(shared_gate · x) (Qwen2-MoE shared expert). */
  sharedGate: boolean;
  /** Weight precision. */
  dtype: DType;
}

const WG = 256;

/**
 * WGSL of the router. Bindings: 0 x [R, H] f32 (normalized); 1 router weight [E, H]; 2 shared-gate weight
 * [1, H] (any buffer when unused); 3 ids [R, k] u32; 4 weights [R, k] f32; 5 shared gate [R] f32.
 * Grid: (rows). Ties keep the lower expert id first.
 */
export function routerWgsl(p: RouterParams): string {
  checkRowLength("router", p.hidden, p.dtype);
  const ne = p.experts + (p.sharedGate ? 1 : 0);
  const tpe = Math.max(1, 2 ** Math.floor(Math.log2(Math.max(1, Math.floor(WG / ne)))));
  const perPass = WG / tpe;
  const ch = weightChunk(p.dtype);
  const select = p.mode === "softmax_topk"
    ? `
    var mx = -3.0e38;
    for (var e = 0u; e < E; e++) { mx = max(mx, lg[e]); }
    var z = 0.0;
    for (var e = 0u; e < E; e++) { z += exp(lg[e] - mx); }
    var kept = 0.0;
    for (var j = 0u; j < TOPK; j++) {
      var best = 0u;
      var bv = -3.4e38;
      for (var e = 0u; e < E; e++) {
        if (!taken[e] && lg[e] > bv) { bv = lg[e]; best = e; }
      }
      taken[best] = true;
      sel[j] = best;
      let pj = exp(bv - mx) / z;
      pw[j] = pj;
      kept += pj;
    }
    for (var j = 0u; j < TOPK; j++) {
      ids[r * TOPK + j] = sel[j];
      wts[r * TOPK + j] = ${p.normalize ? "pw[j] / kept" : "pw[j]"};
    }`
    : `
    var z = 0.0;
    var top = 0.0;
    for (var j = 0u; j < TOPK; j++) {
      var best = 0u;
      var bv = -3.4e38;
      for (var e = 0u; e < E; e++) {
        if (!taken[e] && lg[e] > bv) { bv = lg[e]; best = e; }
      }
      taken[best] = true;
      sel[j] = best;
      if (j == 0u) { top = bv; }
      pw[j] = exp(bv - top);
      z += pw[j];
    }
    for (var j = 0u; j < TOPK; j++) {
      ids[r * TOPK + j] = sel[j];
      wts[r * TOPK + j] = pw[j] / z;
    }`;
  return `${prelude()}
const E: u32 = ${p.experts}u;
const NE: u32 = ${ne}u;
const TOPK: u32 = ${p.topK}u;
const H4: u32 = ${p.hidden / 4}u;
const KC: u32 = ${p.hidden / ch}u;
const XSTEP: u32 = ${ch / 4}u;
const TPE: u32 = ${tpe}u;
const PER_PASS: u32 = ${perPass}u;
@group(0) @binding(0) var<storage, read> xs: array<vec4<f32>>;
${weightDecl(1, "wr", p.dtype)}
${weightDecl(2, "wsg", p.dtype)}
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> wts: array<f32>;
@group(0) @binding(5) var<storage, read_write> sg: array<f32>;
${weightDotFn("wr", p.dtype, "xs")}
${weightDotFn("wsg", p.dtype, "xs")}
var<workgroup> part: array<f32, ${WG}>;
var<workgroup> lg: array<f32, ${ne}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.x;
  if (r >= st.rows) { return; }
  let t = li % TPE;
  for (var e0 = 0u; e0 < NE; e0 += PER_PASS) {
    let e = e0 + li / TPE;
    var acc = 0.0;
    if (e < NE) {
      for (var c = t; c < KC; c += TPE) {
        if (e < E) { acc += dot_wr(e * KC + c, r * H4 + c * XSTEP); } else { acc += dot_wsg(c, r * H4 + c * XSTEP); }
      }
    }
    part[li] = acc;
    workgroupBarrier();
    if (t == 0u && e < NE) {
      var s = 0.0;
      for (var i = 0u; i < TPE; i++) { s += part[li + i]; }
      lg[e] = s;
    }
    workgroupBarrier();
  }
  if (li == 0u) {
    var taken: array<bool, ${p.experts}>;
    var sel: array<u32, ${p.topK}>;
    var pw: array<f32, ${p.topK}>;
    ${select}
    ${p.sharedGate ? "sg[r] = 1.0 / (1.0 + exp(-lg[E]));" : ""}
  }
}`;
}

/** The router program. */
export function routerProgram(device: GPUDevice, ring: StepRing, p: RouterParams): Promise<Program> {
  return P.get(device, ring, "router", routerWgsl(p), ["read", "read", "read", "write", "write", "write"]);
}
