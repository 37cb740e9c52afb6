/**
 * Dequantizing mat-vecs over packed weights (engine/quant/pack.ts), for linear layers and for the MoE experts
 * with a different scheme per expert in one dispatch. A weight set is three buffers:
 *
 * | buffer | dtype | content |
 * | --- | --- | --- |
 * | qw | u32 | every matrix's packed words, one after another |
 * | qp | u32 | per (row, group): pack2x16float(scale, min) |
 * | meta | vec4<u32> | per matrix (expert): bits, group, word offset, parameter offset |
 *
 * Bits 2, 3, 4 and 8 are asymmetric group-wise levels; bits 16 stores plain f16 pairs (one group per row, no
 * parameters), so unquantized experts mix with quantized ones. The branch on an expert's scheme is uniform
 * across a workgroup (one workgroup works on one expert), as WGSL requires.
 *
 * @module
 */

import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { f32Lit, prelude } from "./wgsl.ts";

/** Meta entry of one matrix: its scheme and where its words and parameters start. */
export interface QuantMeta {
  /** 2, 3, 4, 8, or 16 (plain f16). */
  bits: number;
  /** Group size (for 16: the row length). */
  group: number;
  /** Offset of the matrix's first word in qw. */
  wordOffset: number;
  /** Offset of the matrix's first parameter in qp. */
  paramOffset: number;
}

/** Outputs per workgroup and threads per output of the quantized mat-vecs. */
export const QMV_OUTS = 4, QMV_TPO = 64;

/** The meta table as a u32 array of vec4 entries. */
export function metaTable(entries: QuantMeta[]): Uint32Array {
  const out = new Uint32Array(Math.max(1, entries.length) * 4);
  entries.forEach((m, i) => out.set([m.bits, m.group, m.wordOffset, m.paramOffset], i * 4));
  return out;
}

/** Words of one row of `cols` values in scheme (bits, group). */
export function wordsPerRow(bits: number, group: number, cols: number): number {
  const v = Math.floor(32 / bits);
  return (cols / group) * Math.ceil(group / v);
}

/**
 * WGSL of `qdot(m, row, xs_offset, t)`: the partial dot product of row `row` of matrix `m` with activations
 * `xa[xs_offset..]` over the words t, t + TPO, … (a thread's share of the row). `K` is the row length.
 */
function qdotFn(): string {
  return `
fn xs(i: u32) -> f32 {
  return xa[i >> 2u][i & 3u];
}
fn nib4(w: u32, shift: u32, bits: u32) -> vec4<f32> {
  let m = (1u << bits) - 1u;
  return vec4<f32>(vec4<u32>(w >> shift, w >> (shift + bits), w >> (shift + 2u * bits), w >> (shift + 3u * bits)) & vec4<u32>(m));
}
fn qdot(m: vec4<u32>, row: u32, xo: u32, t: u32) -> f32 {
  let bits = m.x;
  let G = m.y;
  let v = 32u / bits;
  let wpg = (G + v - 1u) / v;
  let groups = K / G;
  let wpr = groups * wpg;
  let wrow = m.z + row * wpr;
  let prow = m.w + row * groups;
  var acc = 0.0;
  if ((bits == 2u || bits == 4u || bits == 8u) && TPO % wpg == 0u && G % v == 0u) {
    // The common case (e.g. w4g128: 16 words per group, 64 threads per row): a thread's words all sit at the
    // same place in their groups, so no division runs in the loop; groups advance by TPO / wpg.
    let j0 = (t % wpg) * v;
    let gstep = TPO / wpg;
    var g = t / wpg;
    let one = vec4<f32>(1.0);
    for (var c = t; c < wpr; c += TPO) {
      let word = qw[wrow + c];
      let sm = unpack2x16float(qp[prow + g]);
      let xb = (xo + g * G + j0) >> 2u;
      var s = 0.0;
      var sx = 0.0;
      for (var q = 0u; q < v / 4u; q++) {
        let xv = xa[xb + q];
        s += dot(nib4(word, 4u * q * bits, bits), xv);
        sx += dot(xv, one);
      }
      acc += sm.x * s + sm.y * sx;
      g += gstep;
    }
    return acc;
  }
  for (var c = t; c < wpr; c += TPO) {
    let g = c / wpg;
    let j0 = (c % wpg) * v;
    let word = qw[wrow + c];
    let xb = xo + g * G + j0;
    if (bits == 16u) {
      let h = unpack2x16float(word);
      acc += h.x * xs(xb) + h.y * xs(xb + 1u);
      continue;
    }
    let sm = unpack2x16float(qp[prow + g]);
    var s = 0.0;
    var sx = 0.0;
    if (bits == 3u || G - j0 < v) {
      // 10 levels per word (or a partial last word): one level at a time.
      let n = min(v, G - j0);
      for (var j = 0u; j < n; j++) {
        let xv = xs(xb + j);
        s += f32(extractBits(word, j * bits, bits)) * xv;
        sx += xv;
      }
    } else {
      // 2, 4 or 8 bits: 16, 8 or 4 levels per word, four at a time against aligned vec4 activations
      // (xb is a multiple of 4: rows, groups and word starts all are).
      let one = vec4<f32>(1.0);
      for (var q = 0u; q < v; q += 4u) {
        let xv = xa[(xb + q) >> 2u];
        s += dot(nib4(word, q * bits, bits), xv);
        sx += dot(xv, one);
      }
    }
    acc += sm.x * s + sm.y * sx;
  }
  return acc;
}`;
}

/** The activations are read as vec4: rows of K values must start 16-byte aligned. */
function checkK(label: string, k: number): void {
  if (!Number.isInteger(k) || k <= 0 || k % 4 !== 0) {
    throw new RangeError(`Cannot build ${label}: the row length ${k} must be a positive multiple of 4`);
  }
}

function reduce(wg: number): string {
  return `var<workgroup> part: array<f32, ${wg}>;
var<workgroup> part2: array<f32, ${wg}>;
fn reduce_seg2(li: u32, t: u32, a: f32, b: f32) -> vec2<f32> {
  part[li] = a;
  part2[li] = b;
  workgroupBarrier();
  for (var s = TPO / 2u; s > 0u; s >>= 1u) {
    if (t < s) {
      part[li] += part[li + s];
      part2[li] += part2[li + s];
    }
    workgroupBarrier();
  }
  let r = vec2<f32>(part[li - t], part2[li - t]);
  workgroupBarrier();
  return r;
}
fn reduce_seg(li: u32, t: u32, v: f32) -> f32 {
  part[li] = v;
  workgroupBarrier();
  for (var s = TPO / 2u; s > 0u; s >>= 1u) {
    if (t < s) { part[li] += part[li + s]; }
    workgroupBarrier();
  }
  let r = part[li - t];
  workgroupBarrier();
  return r;
}`;
}

const QBINDINGS = `@group(0) @binding(1) var<storage, read> qw: array<u32>;
@group(0) @binding(2) var<storage, read> qp: array<u32>;
@group(0) @binding(3) var<storage, read> qmeta: array<vec4<u32>>;`;

/** Shapes of a quantized linear layer. */
export interface QLinearParams {
  /** Output features N. */
  n: number;
  /** Input features K. */
  k: number;
  /** "store": y = α(xWᵀ); "add": y += α(xWᵀ). A bias, when any, is bound at 4. */
  mode: "store" | "add";
  /** A bias [N] f32 is bound at 4 (y moves to 5). */
  bias: boolean;
  /** Output scale α. */
  alpha: number;
}

/**
 * WGSL of the quantized mat-vec. Bindings: 0 x [R, K] f32; 1 qw; 2 qp; 3 meta (entry 0); (4 bias); y [R, N].
 * Grid: ceil(N / QMV_OUTS) workgroups (2-D above the limit); rows: `st.rows`.
 */
export function qgemvWgsl(p: QLinearParams): string {
  checkK("the quantized mat-vec", p.k);
  const wg = QMV_OUTS * QMV_TPO;
  const v = p.bias ? "(d + bias[n])" : "d";
  const val = p.alpha === 1 ? v : `${f32Lit(p.alpha)} * ${v}`;
  return `${prelude()}
const N: u32 = ${p.n}u;
const K: u32 = ${p.k}u;
const TPO: u32 = ${QMV_TPO}u;
@group(0) @binding(0) var<storage, read> xa: array<vec4<f32>>;
${QBINDINGS}
${p.bias ? "@group(0) @binding(4) var<storage, read> bias: array<f32>;" : ""}
@group(0) @binding(${p.bias ? 5 : 4}) var<storage, read_write> y: array<f32>;
${qdotFn()}
${reduce(wg)}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let wid = wg.x + wg.y * nwg.x;
  if (wid * ${QMV_OUTS}u >= N) { return; }
  let t = li % TPO;
  let n = wid * ${QMV_OUTS}u + li / TPO;
  let m = qmeta[0];
  for (var r = 0u; r < st.rows; r++) {
    var acc = 0.0;
    if (n < N) { acc = qdot(m, n, r * K, t); }
    let d = reduce_seg(li, t, acc);
    if (t == 0u && n < N) { ${p.mode === "add" ? `y[r * N + n] += ${val};` : `y[r * N + n] = ${val};`} }
  }
}`;
}

/** Shapes of the quantized expert gate/up projection. */
export interface QGateUpParams {
  /** Hidden size H (= K). */
  hidden: number;
  /** Expert width I; each expert's matrix is [2I, H]. */
  inter: number;
  /** Experts per row. */
  topK: number;
}

/**
 * WGSL of quantized gate/up. Bindings: 0 x [R, H]; 1 qw; 2 qp; 3 meta [E]; 4 ids [R, k] u32; 5 h [R k, I].
 * Grid: (ceil(I / QMV_OUTS), rows · k).
 */
export function qGateUpWgsl(p: QGateUpParams): string {
  checkK("the quantized gate/up", p.hidden);
  const wg = QMV_OUTS * QMV_TPO;
  return `${prelude()}
const K: u32 = ${p.hidden}u;
const I: u32 = ${p.inter}u;
const TOPK: u32 = ${p.topK}u;
const TPO: u32 = ${QMV_TPO}u;
@group(0) @binding(0) var<storage, read> xa: array<vec4<f32>>;
${QBINDINGS}
@group(0) @binding(4) var<storage, read> ids: array<u32>;
@group(0) @binding(5) var<storage, read_write> h: array<f32>;
${qdotFn()}
${reduce(wg)}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let slot = wg.y;
  if (slot >= st.rows * TOPK) { return; }
  let r = slot / TOPK;
  let m = qmeta[ids[slot]];
  let t = li % TPO;
  let i = wg.x * ${QMV_OUTS}u + li / TPO;
  var g = 0.0;
  var u = 0.0;
  if (i < I) {
    g = qdot(m, i, r * K, t);
    u = qdot(m, I + i, r * K, t);
  }
  let gu = reduce_seg2(li, t, g, u);
  let gs = gu.x;
  let us = gu.y;
  if (t == 0u && i < I) { h[slot * I + i] = gs / (1.0 + exp(-gs)) * us; }
}`;
}

/** Shapes of the quantized expert down projection. */
export interface QDownParams {
  /** Hidden size H; each expert's matrix is [H, I]. */
  hidden: number;
  /** Expert width I (= K). */
  inter: number;
  /** Experts per row. */
  topK: number;
  /** Residual multiplier α. */
  alpha: number;
}

/**
 * WGSL of quantized down with the residual add: `x_r += α Σ_j w_rj · down_e(h[r k + j])`. Bindings: 0 h [R k, I];
 * 1 qw; 2 qp; 3 meta [E]; 4 ids [R, k]; 5 weights [R, k]; 6 x [R, H]. Grid: (ceil(H / QMV_OUTS), rows).
 */
export function qDownWgsl(p: QDownParams): string {
  checkK("the quantized down projection", p.inter);
  const wg = QMV_OUTS * QMV_TPO;
  return `${prelude()}
const H: u32 = ${p.hidden}u;
const K: u32 = ${p.inter}u;
const TOPK: u32 = ${p.topK}u;
const TPO: u32 = ${QMV_TPO}u;
@group(0) @binding(0) var<storage, read> xa: array<vec4<f32>>;
${QBINDINGS}
@group(0) @binding(4) var<storage, read> ids: array<u32>;
@group(0) @binding(5) var<storage, read> wts: array<f32>;
@group(0) @binding(6) var<storage, read_write> x: array<f32>;
${qdotFn()}
${reduce(wg)}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.y;
  if (r >= st.rows) { return; }
  let t = li % TPO;
  let c = wg.x * ${QMV_OUTS}u + li / TPO;
  var acc = 0.0;
  if (c < H) {
    for (var j = 0u; j < TOPK; j++) {
      let slot = r * TOPK + j;
      acc += wts[slot] * qdot(qmeta[ids[slot]], c, slot * K, t);
    }
  }
  let d = reduce_seg(li, t, acc);
  if (t == 0u && c < H) { x[r * H + c] += ${f32Lit(p.alpha)} * d; }
}`;
}

/** The quantized mat-vec program. */
export function qgemvProgram(device: GPUDevice, ring: StepRing, p: QLinearParams): Promise<Program> {
  return P.get(device, ring, "qgemv", qgemvWgsl(p), qLinearBindings(p));
}

/** Access of the bindings of a quantized linear layer (mat-vec or GEMM): x, qw, qp, meta, (bias), y. */
export function qLinearBindings(p: QLinearParams): ("read" | "write")[] {
  return p.bias
    ? ["read", "read", "read", "read", "read", "write"]
    : ["read", "read", "read", "read", "write"];
}

/** The quantized gate/up program. */
export function qGateUpProgram(device: GPUDevice, ring: StepRing, p: QGateUpParams): Promise<Program> {
  return P.get(device, ring, "q-gate-up", qGateUpWgsl(p), ["read", "read", "read", "read", "read", "write"]);
}

/** The quantized down program. */
export function qDownProgram(device: GPUDevice, ring: StepRing, p: QDownParams): Promise<Program> {
  return P.get(device, ring, "q-down", qDownWgsl(p), [
    "read",
    "read",
    "read",
    "read",
    "read",
    "read",
    "write",
  ]);
}

/** One matrix of a weight set: packed levels, or plain f16 bits ([rows, cols], cols even). */
export type QuantMatrix =
  | {
    rows: number;
    cols: number;
    bits: number;
    group: number;
    qweight: Uint32Array;
    scales: Uint16Array;
    mins: Uint16Array;
  }
  | { rows: number; cols: number; f16: Uint16Array };

/** The qw, qp and meta arrays of a weight set of matrices laid one after another. */
export function buildQuantSet(mats: QuantMatrix[]): { qw: Uint32Array; qp: Uint32Array; meta: Uint32Array } {
  let words = 0, params = 0;
  const entries: QuantMeta[] = [];
  for (const m of mats) {
    if ("f16" in m) {
      if (m.cols % 2 !== 0) {
        throw new RangeError(`Cannot store an f16 matrix with an odd row length ${m.cols}`);
      }
      entries.push({ bits: 16, group: m.cols, wordOffset: words, paramOffset: params });
      words += m.rows * m.cols / 2;
    } else {
      entries.push({ bits: m.bits, group: m.group, wordOffset: words, paramOffset: params });
      words += m.qweight.length;
      params += m.scales.length;
    }
  }
  const qw = new Uint32Array(Math.max(1, words)), qp = new Uint32Array(Math.max(1, params));
  mats.forEach((m, i) => {
    const e = entries[i];
    if ("f16" in m) {
      qw.set(new Uint32Array(m.f16.buffer, m.f16.byteOffset, m.f16.length / 2), e.wordOffset);
    } else {
      qw.set(m.qweight, e.wordOffset);
      for (let j = 0; j < m.scales.length; j++) qp[e.paramOffset + j] = m.scales[j] | (m.mins[j] << 16);
    }
  });
  return { qw, qp, meta: metaTable(entries) };
}
