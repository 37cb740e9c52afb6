/**
 * Causal attention of query rows over the KV cache (grouped-query heads, optional sliding window), one
 * workgroup per (row, head), streaming the keys in tiles of 64 with an online softmax (flash-decoding style:
 * running max, running sum, rescaled accumulator), so any context length runs in fixed workgroup memory.
 *
 * @module
 */

import type { DType } from "../engine/types.ts";
import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { splitMergeMain, writePartialWgsl } from "./split_merge.ts";
import { f32Lit, prelude } from "./wgsl.ts";

/** Shapes and constants of attention. */
export interface AttentionParams {
  /** Query heads. */
  nH: number;
  /** Key/value heads. */
  nKV: number;
  /** Head width (multiple of 4). */
  hd: number;
  /** Positions the KV cache holds. */
  capacity: number;
  /** Score scale. */
  scale: number;
  /** Sliding window (0: none). */
  window: number;
  /** KV cache precision. */
  kvDtype: DType;
  /**
   * Split-K (flash-decoding): each workgroup takes `split` keys of one (row, head) and writes an unnormalized
   * partial result that {@linkcode attentionCombineWgsl} merges; 0 (default) = one workgroup per (row, head).
   */
  split?: number;
}

const TK = 64;

/** Floats of one partial result of split-K attention: hd accumulators, the running max, the running sum. */
export function partialFloats(hd: number): number {
  return hd + 2;
}

/**
 * WGSL of attention. Bindings: 0 q [R, nH, hd] f32; 1 K cache, 2 V cache [lanes, nKV, capacity, hd] (f32, or f16
 * packed in u32); 3 out [R, nH hd] f32, or with `split` the partials [R, nH, ceil(capacity / split), hd + 2].
 * Grid: (nH, rows, splits); row r is at position `row_pos(r)` of lane
 * `row_lane(r)` (STEP_WGSL) and sees that lane's positions up to its own.
 */
export function attentionWgsl(p: AttentionParams): string {
  if (p.hd % 4 !== 0) {
    throw new RangeError(`Cannot build attention: head width ${p.hd} is not a multiple of 4`);
  }
  if (p.split) return splitAttentionWgsl(p);
  const f16 = p.kvDtype === "f16";
  const dpt = Math.ceil(p.hd / TK);
  const vLoad = f16
    ? `let pv = unpack2x16float(vc[e / 2u]); return select(pv.x, pv.y, (e & 1u) == 1u);`
    : `return vc[e];`;
  // The score of a key: its D4 vec4 loads issued eight at a time (a loop of one load and one dot per step
  // waits for each load in turn).
  const kDot: string[] = [];
  for (let c0 = 0; c0 < p.hd / 4; c0 += 8) {
    const cs = Array.from({ length: Math.min(8, p.hd / 4 - c0) }, (_, i) => c0 + i);
    for (const c of cs) {
      kDot.push(
        f16 ? `      let pk${c} = kc[kb + ${c}u];` : `      let kv${c} = kc[kb + ${c}u];`,
      );
    }
    for (const c of cs) {
      const kv = f16 ? `vec4<f32>(unpack2x16float(pk${c}.x), unpack2x16float(pk${c}.y))` : `kv${c}`;
      kDot.push(`      s += dot(qs[${c}u], ${kv});`);
    }
  }
  // Channels li + u·TK of the thread (u < dpt; the last may lie past HD when TK does not divide it).
  const chans = Array.from({ length: dpt }, (_, u) => u);
  const guard = (
    u: number,
    body: string,
  ) => (u * TK + TK > p.hd ? `if (li + ${u * TK}u < HD) { ${body} }` : body);
  const vChunk = chans.map((u) => {
    const e = `vt + j * HD + ${u * TK}u`;
    const loads = Array.from({ length: 8 }, (_, i) => `let w${u}_${i} = vload(${e} + ${i}u * HD);`).join(" ");
    return `      ${
      guard(
        u,
        `${loads}
        acc[${u}] += (p0 * w${u}_0 + p1 * w${u}_1 + p2 * w${u}_2 + p3 * w${u}_3) +
          (p4 * w${u}_4 + p5 * w${u}_5 + p6 * w${u}_6 + p7 * w${u}_7);`,
      )
    }`;
  }).join("\n");
  const vTail = chans.map((u) => `      ${guard(u, `acc[${u}] += pt[j] * vload(vt + j * HD + ${u * TK}u);`)}`)
    .join("\n");
  return `${prelude()}
const NH: u32 = ${p.nH}u;
const GROUP: u32 = ${p.nH / p.nKV}u;
const NKV: u32 = ${p.nKV}u;
const HD: u32 = ${p.hd}u;
const D4: u32 = ${p.hd / 4}u;
const CAP: u32 = ${p.capacity}u;
const TK: u32 = ${TK}u;
const WINDOW: u32 = ${p.window}u;
const SPLIT: u32 = ${p.split ?? 0}u;
const NS: u32 = ${p.split ? Math.ceil(p.capacity / p.split) : 1}u;
@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> kc: array<${f16 ? "vec2<u32>" : "vec4<f32>"}>;
@group(0) @binding(2) var<storage, read> vc: array<${f16 ? "u32" : "f32"}>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// Value element e of the cache.
fn vload(e: u32) -> f32 {
  ${vLoad}
}
var<workgroup> qs: array<vec4<f32>, ${p.hd / 4}>;
var<workgroup> pt: array<f32, ${TK}>;
@compute @workgroup_size(${TK})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let h = wg.x;
  let r = wg.y;
  if (r >= st.rows) { return; }
  let kvh = (row_lane(r) * NKV) + h / GROUP;
  let pos = row_pos(r);
  var start = 0u;
  if (WINDOW > 0u && pos + 1u > WINDOW) { start = pos + 1u - WINDOW; }
  for (var i = li; i < D4; i += TK) { qs[i] = q[(r * NH + h) * D4 + i] * ${f32Lit(p.scale)}; }
  workgroupBarrier();
  var m = -3.0e38;
  var l = 0.0;
  var acc: array<f32, ${dpt}>;
  var hi = pos;
  if (SPLIT > 0u) {
    start = max(start, wg.z * SPLIT);
    hi = min(pos, wg.z * SPLIT + SPLIT - 1u);
  }
  for (var base = start; base <= hi; base += TK) {
    let t = base + li;
    var s = -3.0e38;
    if (t <= hi) {
      s = 0.0;
      let kb = (kvh * CAP + t) * D4;
${kDot.join("\n")}
    }
    pt[li] = s;
    workgroupBarrier();
    var mt = m;
    for (var j = 0u; j < TK; j++) { mt = max(mt, pt[j]); }
    workgroupBarrier();
    pt[li] = select(0.0, exp(s - mt), t <= hi);
    let corr = exp(m - mt);
    m = mt;
    workgroupBarrier();
    var lt = 0.0;
    for (var j = 0u; j < TK; j++) { lt += pt[j]; }
    l = l * corr + lt;
    let n = min(TK, hi + 1u - base);
    // Eight keys at a time for every channel of the thread: their value loads are independent, so they are in
    // flight together.
    for (var u = 0u; u < ${dpt}u; u++) { acc[u] *= corr; }
    let vt = (kvh * CAP + base) * HD + li;
    var j = 0u;
    for (; j + 8u <= n; j += 8u) {
      let p0 = pt[j]; let p1 = pt[j + 1u]; let p2 = pt[j + 2u]; let p3 = pt[j + 3u];
      let p4 = pt[j + 4u]; let p5 = pt[j + 5u]; let p6 = pt[j + 6u]; let p7 = pt[j + 7u];
${vChunk}
    }
    for (; j < n; j++) {
${vTail}
    }
    workgroupBarrier();
  }
  if (SPLIT > 0u) {
    let po = ((r * NH + h) * NS + wg.z) * (HD + 2u);
    for (var u = 0u; u < ${dpt}u; u++) {
      let d = li + u * TK;
      if (d < HD) { out[po + d] = acc[u]; }
    }
    if (li == 0u) { out[po + HD] = m; out[po + HD + 1u] = l; }
    return;
  }
  for (var u = 0u; u < ${dpt}u; u++) {
    let d = li + u * TK;
    if (d < HD) { out[(r * NH + h) * HD + d] = acc[u] / l; }
  }
}`;
}

/** Threads of a split-K attention workgroup. */
const SPLIT_WG = 256;

/**
 * WGSL of split-K attention (decode: few rows, every key block its own workgroup), built for latency: one tile of
 * TK keys takes a round trip for the keys and one for the values. Scores: `kt` threads per key (4, 2 or 1: the
 * largest dividing hd / 4) each dot a strided share of the head's vec4s, issued together, summed in workgroup
 * memory. Values: thread (key group g, vec4 column c) sums `p_j · v_j[c]` over keys j ≡ g (mod groups), all its
 * loads in flight at once; the groups' sums are added at the end. Same bindings, grid and partials as
 * {@linkcode attentionWgsl} with `split`.
 */
function splitAttentionWgsl(p: AttentionParams): string {
  const split = p.split!;
  if (!Number.isInteger(split) || split < 1) {
    throw new RangeError(`Cannot build split-K attention: split ${split} is not a positive integer`);
  }
  const d4 = p.hd / 4;
  if (d4 > SPLIT_WG) {
    throw new RangeError(`Cannot build split-K attention: head width ${p.hd} is over ${4 * SPLIT_WG}`);
  }
  const f16 = p.kvDtype === "f16";
  const kt = d4 % 4 === 0 ? 4 : d4 % 2 === 0 ? 2 : 1; // threads per key (scores)
  const ni = d4 / kt; // vec4s per score thread
  const groups = Math.min(TK, Math.floor(SPLIT_WG / d4)); // key groups (values)
  const nj = Math.ceil(TK / groups); // keys per value thread
  const vec = (e: string) => (f16 ? `vec4<f32>(unpack2x16float(${e}.x), unpack2x16float(${e}.y))` : e);
  // Score loads in batches of 8, then their dots.
  const kLines: string[] = [];
  for (let i0 = 0; i0 < ni; i0 += 8) {
    const is = Array.from({ length: Math.min(8, ni - i0) }, (_, i) => i0 + i);
    for (const i of is) kLines.push(`let k${i} = kc[kb + ${i * kt}u];`);
    kLines.push(`s += ${is.map((i) => `dot(qs[kp + ${i * kt}u], ${vec(`k${i}`)})`).join(" + ")};`);
  }
  const vLines: string[] = [];
  for (let i = 0; i < nj; i++) {
    vLines.push(`let j${i} = kg + ${i * groups}u;`);
    vLines.push(`let v${i} = vc[vt + min(j${i}, n - 1u) * D4];`);
  }
  for (let i = 0; i < nj; i++) {
    // Keys past the tile's end (j ≥ n) weigh 0; their loads read the tile's last key.
    vLines.push(`let w${i} = select(0.0, pp[min(j${i}, TK - 1u)], j${i} < n);`);
  }
  vLines.push(
    `acc = acc * corr + ${Array.from({ length: nj }, (_, i) => `w${i} * ${vec(`v${i}`)}`).join(" + ")};`,
  );
  vLines.push(`ls = ls * corr + ${Array.from({ length: nj }, (_, i) => `w${i}`).join(" + ")};`);
  return `${prelude()}
const NH: u32 = ${p.nH}u;
const GROUP: u32 = ${p.nH / p.nKV}u;
const NKV: u32 = ${p.nKV}u;
const HD: u32 = ${p.hd}u;
const D4: u32 = ${d4}u;
const CAP: u32 = ${p.capacity}u;
const TK: u32 = ${TK}u;
const KT: u32 = ${kt}u;
const KG: u32 = ${groups}u;
const WINDOW: u32 = ${p.window}u;
const SPLIT: u32 = ${split}u;
const NS: u32 = ${Math.ceil(p.capacity / split)}u;
@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> kc: array<${f16 ? "vec2<u32>" : "vec4<f32>"}>;
@group(0) @binding(2) var<storage, read> vc: array<${f16 ? "vec2<u32>" : "vec4<f32>"}>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
var<workgroup> qs: array<vec4<f32>, D4>;
var<workgroup> sred: array<f32, ${TK * kt}>;
var<workgroup> pt: array<vec4<f32>, ${TK / 4}>;
var<workgroup> pp: array<f32, TK>;
var<workgroup> vred: array<vec4<f32>, ${groups * d4}>;
var<workgroup> lred: array<f32, KG>;
@compute @workgroup_size(${SPLIT_WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let h = wg.x;
  let r = wg.y;
  if (r >= st.rows) { return; }
  let kvh = (row_lane(r) * NKV) + h / GROUP;
  let pos = row_pos(r);
  var start = wg.z * SPLIT;
  if (WINDOW > 0u && pos + 1u > WINDOW) { start = max(start, pos + 1u - WINDOW); }
  let hi = min(pos, wg.z * SPLIT + SPLIT - 1u);
  for (var i = li; i < D4; i += ${SPLIT_WG}u) { qs[i] = q[(r * NH + h) * D4 + i] * ${f32Lit(p.scale)}; }
  workgroupBarrier();
  // Score threads: key li / KT of the tile, vec4s kp, kp + KT, ...
  let kk = li / KT;
  let kp = li % KT;
  // Value threads: key group kg, vec4 column vcol.
  let kg = li / D4;
  let vcol = li % D4;
  var m = -3.0e38;
  var acc = vec4<f32>(0.0);
  var ls = 0.0;
  for (var base = start; base <= hi; base += TK) {
    let n = min(TK, hi + 1u - base);
    if (li < TK * KT) {
      var s = 0.0;
      if (kk < n) {
        let kb = (kvh * CAP + base + kk) * D4 + kp;
        ${kLines.join("\n        ")}
      }
      sred[li] = s;
    }
    workgroupBarrier();
    if (li < TK) {
      var s = 0.0;
      for (var u = 0u; u < KT; u++) { s += sred[li * KT + u]; }
      pt[li / 4u][li % 4u] = select(-3.0e38, s, li < n);
    }
    workgroupBarrier();
    var mv = vec4<f32>(m);
    for (var u = 0u; u < TK / 4u; u++) { mv = max(mv, pt[u]); }
    let mt = max(max(mv.x, mv.y), max(mv.z, mv.w));
    if (li < TK) { pp[li] = select(0.0, exp(pt[li / 4u][li % 4u] - mt), li < n); }
    let corr = exp(m - mt);
    m = mt;
    workgroupBarrier();
    if (kg < KG) {
      let vt = (kvh * CAP + base) * D4 + vcol;
      ${vLines.join("\n      ")}
    }
    workgroupBarrier();
  }
  if (kg < KG) {
    vred[li] = acc;
    if (vcol == 0u) { lred[kg] = ls; }
  }
  workgroupBarrier();
  let po = ((r * NH + h) * NS + wg.z) * (HD + 2u);
  ${writePartialWgsl("HD")}
}`;
}

/**
 * WGSL of the split-K merge (`split_merge.ts`). Bindings: 0 partials [R, nH, NS, hd + 2] f32; 1 out [R, nH hd]
 * f32. Grid: (`mergeGroupsX(nH, hd)` of split_merge.ts, rows). Row r merges the splits that cover positions
 * 0..row_pos(r).
 */
export function attentionCombineWgsl(p: AttentionParams): string {
  const split = p.split ?? 0;
  if (split <= 0) throw new RangeError("Cannot build the attention merge: split must be positive");
  return `${prelude()}
const NH: u32 = ${p.nH}u;
const HD: u32 = ${p.hd}u;
const SPLIT: u32 = ${split}u;
const NS: u32 = ${Math.ceil(p.capacity / split)}u;
@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
${
    splitMergeMain(
      p.hd,
      `let used = row_pos(r) / SPLIT + 1u;
  let base = (r * NH + h) * NS;
  let ob = (r * NH + h) * HD;`,
    )
  }`;
}

/** The split-K merge program. */
export function attentionCombineProgram(
  device: GPUDevice,
  ring: StepRing,
  p: AttentionParams,
): Promise<Program> {
  return P.get(device, ring, "attention-combine", attentionCombineWgsl(p), ["read", "write"]);
}

/** The attention program. */
export function attentionProgram(device: GPUDevice, ring: StepRing, p: AttentionParams): Promise<Program> {
  return P.get(device, ring, p.split ? "attention-split" : "attention", attentionWgsl(p), [
    "read",
    "read",
    "read",
    "write",
  ]);
}
