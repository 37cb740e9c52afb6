/**
 * The MoE routing step on the GPU. Router logits come from a mat-vec (kernels/linear.ts) over the router
 * weight [E, H], with the shared-expert gate as an extra row E when the model has one; this kernel turns each
 * token's logits into expert ids and weights by the architecture's rule, one workgroup per token, with every
 * expert's rank computed in parallel (no serial top-k loop). Nothing returns to the CPU.
 *
 * @module
 */

import type { RouterMode } from "../engine/config.ts";
import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { prelude } from "./wgsl.ts";

/** Bytes between the activation counters of two layers in one buffer (bind offsets are 256-byte aligned). */
export function countsStride(experts: number): number {
  return Math.ceil((experts * 4) / 256) * 256;
}

/** Shapes and rule of the top-k step. */
export interface TopKParams {
  /** Experts E. */
  experts: number;
  /** Experts per token. */
  topK: number;
  /** Router semantics. */
  mode: RouterMode;
  /** Renormalize kept softmax weights (softmax_topk). */
  normalize: boolean;
  /** Logit row E is the shared-expert gate: write sigmoid(it). */
  sharedGate: boolean;
}

const WG = 256;

/**
 * WGSL of the top-k step. Bindings: 0 logits [R, E (+1)] f32; 1 ids [R, k] u32; 2 weights [R, k] f32;
 * 3 shared gate [R] f32; 4 activation counts [E] atomic u32 (each kept expert of each row adds 1: the tokens
 * routed to it, accumulated across calls). Grid: (rows). Ties keep the lower expert id first.
 * - `softmax_topk`: p = softmax over all E; keep the k largest; divide by their sum iff `normalize`;
 * - `topk_softmax`: keep the k largest logits; weights = softmax over those k.
 */
export function topKWgsl(p: TopKParams): string {
  const ne = p.experts + (p.sharedGate ? 1 : 0);
  const weight = p.mode === "softmax_topk"
    ? (p.normalize ? "pw[j] / kept" : "pw[j]")
    : "exp(pw[j] - pw[0]) / kept";
  const kept = p.mode === "softmax_topk"
    ? "for (var i = 0u; i < TOPK; i++) { kept += pw[i]; }"
    : "for (var i = 0u; i < TOPK; i++) { kept += exp(pw[i] - pw[0]); }";
  return `${prelude()}
const E: u32 = ${p.experts}u;
const NE: u32 = ${ne}u;
const TOPK: u32 = ${p.topK}u;
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> wts: array<f32>;
@group(0) @binding(3) var<storage, read_write> sg: array<f32>;
@group(0) @binding(4) var<storage, read_write> counts: array<atomic<u32>>;
var<workgroup> lg: array<f32, ${p.experts}>;
var<workgroup> pw: array<f32, ${p.topK}>;
var<workgroup> red: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.x;
  if (r >= st.rows) { return; }
  // The max (and the softmax denominator) by tree reductions: a loop over every expert in every thread made
  // this step ~11 µs of an OLMoE-shape decode step on an H200.
  var m0 = -3.4e38;
  for (var e = li; e < E; e += ${WG}u) { let v = logits[r * NE + e]; lg[e] = v; m0 = max(m0, v); }
  red[li] = m0;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { red[li] = max(red[li], red[li + s]); }
    workgroupBarrier();
  }
  let mx = red[0];
  workgroupBarrier();
  var z = 0.0;
  ${
    p.mode === "softmax_topk"
      ? `var z0 = 0.0;
  for (var e = li; e < E; e += ${WG}u) { z0 += exp(lg[e] - mx); }
  red[li] = z0;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { red[li] += red[li + s]; }
    workgroupBarrier();
  }
  z = red[0];`
      : ""
  }
  for (var e = li; e < E; e += ${WG}u) {
    let v = lg[e];
    var rank = 0u;
    for (var o = 0u; o < E; o++) {
      let w = lg[o];
      rank += select(0u, 1u, w > v || (w == v && o < e));
    }
    if (rank < TOPK) {
      ids[r * TOPK + rank] = e;
      atomicAdd(&counts[e], 1u);
      pw[rank] = ${p.mode === "softmax_topk" ? "exp(v - mx) / z" : "v"};
    }
  }
  workgroupBarrier();
  if (li < TOPK) {
    let j = li;
    var kept = 0.0;
    ${kept}
    wts[r * TOPK + j] = ${weight};
  }
  ${p.sharedGate ? "if (li == 0u) { sg[r] = 1.0 / (1.0 + exp(-logits[r * NE + E])); }" : ""}
}`;
}

/** The top-k program. */
export function topKProgram(device: GPUDevice, ring: StepRing, p: TopKParams): Promise<Program> {
  return P.get(device, ring, "router-topk", topKWgsl(p), ["read", "write", "write", "write", "write"]);
}
