/**
 * The attention input stage in one dispatch: q/k RMSNorm (per head or over the whole projection), the optional
 * q/k/v clamp, rotary embedding of q and k, and the append of k and v to the KV cache at their positions.
 *
 * @module
 */

import type { QkNorm } from "../engine/config.ts";
import type { DType } from "../engine/types.ts";
import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { f32Lit, prelude } from "./wgsl.ts";

/** Shapes and constants of the q/k stage. */
export interface QkRopeParams {
  /** Query heads. */
  nH: number;
  /** Key/value heads. */
  nKV: number;
  /** Head width (even). */
  hd: number;
  /** Positions the KV cache holds. */
  capacity: number;
  /**
   * The cache is a ring of `capacity` slots: position p is written to slot p mod capacity (the full-precision
   * buffer of a compressed cache). Default false: slot = position.
   */
  ring?: boolean;
  /** Where q/k norms apply. */
  qkNorm: QkNorm;
  /** RMSNorm epsilon. */
  eps: number;
  /** Clamp bound (0: none). */
  clip: number;
  /** KV cache precision. */
  kvDtype: DType;
}

// 256 threads: a whole-projection q/k norm (2,048 wide at the OLMoE shape) is 8 loads per thread, not 32.
const WG = 256;

/**
 * WGSL of the q/k stage. Bindings: 0 qkv [R, (nH + 2 nKV) hd] f32; 1 rope [positions, hd] f32 (cos of the hd/2
 * frequencies, then their sin); 2 norm weights f32 (q weights then k weights; unused without q/k norm);
 * 3 q out [R, nH, hd] f32; 4 K cache, 5 V cache [lanes, nKV, capacity, hd] (f32, or f16 packed in u32; with
 * `ring`, position p in slot p mod capacity).
 * Grid: (nH + nKV, rows). Row r is at position `row_pos(r)` of lane `row_lane(r)` (see STEP_WGSL).
 */
export function qkRopeWgsl(p: QkRopeParams): string {
  const qDim = p.nH * p.hd, kvDim = p.nKV * p.hd;
  const f16 = p.kvDtype === "f16";
  const norm = p.qkNorm === "none" ? 0 : p.qkNorm === "per_head" ? 1 : 2;
  const cacheType = f16 ? "u32" : "f32";
  const store = (cache: string, idx: string, a: string, b: string) =>
    f16
      ? `${cache}[(${idx}) / 2u] = pack2x16float(vec2<f32>(${a}, ${b}));`
      : `${cache}[${idx}] = ${a}; ${cache}[${idx} + 1u] = ${b};`;
  return `${prelude()}
const NH: u32 = ${p.nH}u;
const NKV: u32 = ${p.nKV}u;
const HD: u32 = ${p.hd}u;
const HALF: u32 = ${p.hd / 2}u;
const QDIM: u32 = ${qDim}u;
const KVDIM: u32 = ${kvDim}u;
const QKV: u32 = ${qDim + 2 * kvDim}u;
const CAP: u32 = ${p.capacity}u;
const QNW: u32 = ${norm === 1 ? p.hd : qDim}u;
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> rope: array<f32>;
@group(0) @binding(2) var<storage, read> nw: array<f32>;
@group(0) @binding(3) var<storage, read_write> qout: array<f32>;
@group(0) @binding(4) var<storage, read_write> kc: array<${cacheType}>;
@group(0) @binding(5) var<storage, read_write> vc: array<${cacheType}>;
var<workgroup> vals: array<f32, ${p.hd}>;
var<workgroup> part: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.y;
  if (r >= st.rows) { return; }
  let pos = row_pos(r);
  let lane = row_lane(r);
  let slot = wg.x;
  let isQ = slot < NH;
  let head = select(slot - NH, slot, isQ);
  let base = r * QKV + select(QDIM + head * HD, head * HD, isQ);
  var inv = 1.0;
  ${
    norm === 0 ? "" : `
  let regionStart = ${norm === 1 ? "base" : "r * QKV + select(QDIM, 0u, isQ)"};
  let regionLen = ${norm === 1 ? "HD" : "select(KVDIM, QDIM, isQ)"};
  var s = 0.0;
  for (var i = li; i < regionLen; i += ${WG}u) { let v = qkv[regionStart + i]; s += v * v; }
  part[li] = s;
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k >>= 1u) {
    if (li < k) { part[li] += part[li + k]; }
    workgroupBarrier();
  }
  inv = inverseSqrt(part[0] / f32(regionLen) + ${f32Lit(p.eps)});`
  }
  for (var i = li; i < HD; i += ${WG}u) {
    var v = qkv[base + i];
    ${norm === 0 ? "" : `v = (v * inv) * nw[select(QNW, 0u, isQ) + ${norm === 1 ? "i" : "head * HD + i"}];`}
    ${p.clip > 0 ? `v = clamp(v, ${f32Lit(-p.clip)}, ${f32Lit(p.clip)});` : ""}
    vals[i] = v;
  }
  workgroupBarrier();
  let ropeRow = pos * HD;
  for (var m = li; m < HALF; m += ${WG}u) {
    let i0 = 2u * m;
    let i1 = i0 + 1u;
    let j0 = i0 % HALF;
    let j1 = i1 % HALF;
    let c0 = rope[ropeRow + j0]; let s0 = rope[ropeRow + HALF + j0];
    let c1 = rope[ropeRow + j1]; let s1 = rope[ropeRow + HALF + j1];
    let o0 = select(vals[i0] * c0 + vals[i0 - HALF] * s0, vals[i0] * c0 - vals[i0 + HALF] * s0, i0 < HALF);
    let o1 = select(vals[i1] * c1 + vals[i1 - HALF] * s1, vals[i1] * c1 - vals[i1 + HALF] * s1, i1 < HALF);
    if (isQ) {
      let qo = (r * NH + head) * HD;
      qout[qo + i0] = o0;
      qout[qo + i1] = o1;
    } else {
      let co = ((lane * NKV + head) * CAP + ${p.ring ? "pos % CAP" : "pos"}) * HD + i0;
      ${store("kc", "co", "o0", "o1")}
      let vb = r * QKV + QDIM + KVDIM + head * HD;
      var v0 = qkv[vb + i0];
      var v1 = qkv[vb + i1];
      ${
    p.clip > 0
      ? `v0 = clamp(v0, ${f32Lit(-p.clip)}, ${f32Lit(p.clip)}); v1 = clamp(v1, ${f32Lit(-p.clip)}, ${
        f32Lit(p.clip)
      });`
      : ""
  }
      ${store("vc", "co", "v0", "v1")}
    }
  }
}`;
}

/** The q/k stage program. */
export function qkRopeProgram(device: GPUDevice, ring: StepRing, p: QkRopeParams): Promise<Program> {
  return P.get(device, ring, "qk-rope", qkRopeWgsl(p), ["read", "read", "read", "write", "write", "write"]);
}
