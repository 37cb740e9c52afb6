/**
 * Causal attention over a GEAR-compressed KV cache plus its full-precision ring (see `gear_layout.ts`), for
 * several sequences at the same positions. One workgroup per (query head, row, sequence[, split of 64 keys])
 * streams tiles of 64 tokens with an online softmax, as `attention.ts` does. On a compressed tile:
 *
 * - scores: the packed key codes dotted with q·scale (per channel and token group, folded into the query),
 *   plus q·min, plus the low-rank term (q·P)·Qᵀ, plus the key outliers;
 * - output: the packed value codes weighted by the probabilities, plus (p·Q_V)·P_Vᵀ, plus the value outliers.
 *
 * Tiles past the compressed tokens read the full-precision ring. The split-K variant writes partial results
 * that {@linkcode gearMergeWgsl} combines. It matches `gearAttentionRef` of `cpu/gear.ts`.
 *
 * @module
 */

import type { DType } from "../engine/types.ts";
import { GEAR_TILE, type GearLayout, OUTLIER_WGSL } from "./gear_layout.ts";
import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { splitMergeMain, writePartialWgsl } from "./split_merge.ts";
import { f32Lit, prelude } from "./wgsl.ts";

/** Parameters of GEAR attention. */
export interface GearAttentionParams {
  /** The store layout. */
  layout: GearLayout;
  /** Query heads (a multiple of layout.nKV). */
  nH: number;
  /** Score scale. */
  scale: number;
  /** Sliding window (0: none). */
  window: number;
  /** Precision of the full-precision ring. */
  ringDtype: DType;
  /** Row capacity of the q and output buffers per sequence (the stride between sequences). */
  rowsPerSeq: number;
  /** Split-K: each workgroup takes 64 keys and writes a partial result (merge with gearMergeWgsl). */
  split?: boolean;
  /**
   * Split-K with 256 threads per workgroup (every load of a tile issued before its first barrier): on an H200
   * (rank 4, 2 % outliers) a little faster than the 64-thread kernel at 1k keys (13.6 vs 14.4 µs per layer),
   * slower beyond (2k: 19.3 vs 14.6; 32k: 218.7 vs 91.2), where the 64-thread kernel runs (GEAR_WIDE_MAX_SPLITS).
   */
  wide?: boolean;
  /**
   * Split-K of the 64-thread kernel: tiles of 64 keys per workgroup (default 1), walked in turn with an online
   * softmax; fewer partials to write and merge at long contexts. The wide kernel takes one tile.
   */
  tilesPerSplit?: number;
}

const TK = GEAR_TILE;

/** Keys per split-K workgroup of `p`: 64 for the wide kernel, 64 · tilesPerSplit for the 64-thread one. */
export function gearSplitKeys(p: GearAttentionParams): number {
  const s = p.wide ? 1 : p.tilesPerSplit ?? 1;
  if (!Number.isInteger(s) || s < 1) {
    throw new RangeError(`Cannot build split-K GEAR attention: tilesPerSplit ${s} is not a positive integer`);
  }
  return TK * s;
}

/** 0, 1, …, n − 1. */
const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** Floats of the split-K partials: [B, rowsPerSeq, nH, ceil(T / gearSplitKeys(p)), hd + 2]. */
export function gearPartialFloats(p: GearAttentionParams): number {
  return p.layout.batch * p.rowsPerSeq * p.nH * Math.ceil(p.layout.T / gearSplitKeys(p)) * (p.layout.hd + 2);
}

/** WGSL constants of GEAR attention: shapes, the layout's sizes and section offsets. */
function gearConstsWgsl(p: GearAttentionParams): string {
  const l = p.layout;
  const o = l.off;
  const ngt = l.group < TK ? TK / l.group : 1;
  const rmax = Math.max(1, l.rMax);
  const nRed = ngt + rmax;
  const split = p.split ?? false;
  return `const NH: u32 = ${p.nH}u;
const GROUP: u32 = ${p.nH / l.nKV}u;
const D: u32 = ${l.hd}u;
const NKV: u32 = ${l.nKV}u;
const T: u32 = ${l.T}u;
const W: u32 = ${l.W}u;
const PERW: u32 = ${l.perWord}u;
const BITS: u32 = ${l.bits}u;
const MASK: u32 = ${2 ** l.bits - 1}u;
const G: u32 = ${l.group}u;
const GV: u32 = ${l.gv}u;
const NGV: u32 = ${l.nGV}u;
const KK: u32 = ${l.kK}u;
const MV: u32 = ${l.mV}u;
const MW: u32 = ${l.MW}u;
const KVF: u32 = ${Math.max(1, l.kVFull)}u;
const LOWRANK: bool = ${l.rMax > 0};
const RMAX: u32 = ${rmax}u;
const RW: u32 = ${l.RW}u;
const PW: u32 = ${l.PW}u;
const NB: u32 = ${l.buffer}u;
const NBLK: u32 = ${l.nBlk}u;
const BUFCAP: u32 = ${l.bufCap}u;
const TK: u32 = ${TK}u;
const NGT: u32 = ${ngt}u;
const NRED: u32 = ${nRed}u;
const WINDOW: u32 = ${p.window}u;
const SPLIT: bool = ${split};
const SPLITK: u32 = ${gearSplitKeys(p)}u;
const NS: u32 = ${Math.ceil(l.T / gearSplitKeys(p))}u;
const QROWS: u32 = ${p.rowsPerSeq}u;
const O_CK: u32 = ${o.codesK}u;
const O_CV: u32 = ${o.codesV}u;
const O_PARK: u32 = ${o.parK}u;
const O_PARV: u32 = ${o.parV}u;
const O_QK: u32 = ${o.qK}u;
const O_QV: u32 = ${o.qV}u;
const O_PK: u32 = ${o.pK}u;
const O_PV: u32 = ${o.pV}u;
const O_OUTK: u32 = ${o.outK}u;
const O_OUTV: u32 = ${o.outV}u;
const O_SEG: u32 = ${o.seg}u;`;
}

/** WGSL of the outlier accumulators and the store's readers (the store bound as `store`). */
function gearHelpersWgsl(l: GearLayout): string {
  return `// Outlier terms of a tile, scattered by the threads that read the entries: fixed point, so the sums are exact
// and do not depend on the order of the atomic adds (scores at 2^-18, outputs at 2^-20).
var<workgroup> kacc: array<atomic<i32>, ${TK}>;
var<workgroup> vacc: array<atomic<i32>, ${l.hd}>;
const KFIX: f32 = 262144.0;
const VFIX: f32 = 1048576.0;
fn fixed(x: f32, s: f32) -> i32 {
  return i32(clamp(round(x * s), -2.0e9, 2.0e9));
}

${OUTLIER_WGSL}
fn half_at(word_base: u32, i: u32) -> f32 {
  return unpack2x16float(store[word_base + i / 2u])[i & 1u];
}
fn u16_at(base: u32, i: u32) -> u32 {
  return (store[base + (i >> 1u)] >> ((i & 1u) * 16u)) & 0xffffu;
}
// The int8 at byte j of the words from word_base.
fn q8_at(word_base: u32, j: u32) -> f32 {
  return f32(bitcast<i32>(store[word_base + (j >> 2u)] << (24u - 8u * (j & 3u))) >> 24u);
}
// Key outlier entry i of the tile's [NGT][D][KK] entries, e its u16: adds q_c · value to the score of the
// entry's token (first: the tile's first token within its group; qs_at: the kernel's scaled query).
fn add_key_outlier(i: u32, e: u32, first: u32) {
  let c = (i % (D * KK)) / KK;
  let tok = (i / (D * KK)) * G + (e & 0x7fu) - first;
  if (tok < TK) { atomicAdd(&kacc[tok], fixed(qs_at(c) * out_value(e), KFIX)); }
}
// Value outlier j of a token of weight p, e its u16: adds p · value to the entry's channel.
fn add_value_outlier(j: u32, e: u32, p: f32) {
  let c = min(j / KVF, NGV - 1u) * GV + (e & 0x7fu);
  atomicAdd(&vacc[c], fixed(p * out_value(e), VFIX));
}
// The key outliers of the tile at base ([NGT][D][KK] contiguous in the store), thread li of nt.
fn scatter_key_outliers(li: u32, nt: u32, bh: u32, base: u32) {
  let kh = (bh * (T / G) + base / G) * D * KK;
  let first = select(base % G, 0u, G <= TK);
  for (var i = li; i < NGT * D * KK; i += nt) { add_key_outlier(i, u16_at(O_OUTK, kh + i), first); }
}
// The value outliers of the tile's first n tokens, thread li of nt (p_at: the kernel's probabilities).
fn scatter_value_outliers(li: u32, nt: u32, bh: u32, base: u32, n: u32) {
  for (var i = li; i < n * MV; i += nt) {
    let tk = i / MV;
    let j = i % MV;
    add_value_outlier(j, u16_at(O_OUTV, (bh * T + base + tk) * 2u * MW + j), p_at(tk));
  }
}`;
}

/**
 * WGSL of a workgroup's row: sequence `b` (q rows of sequence `qb`), split `z`, position `pos`, tokens
 * compressed `ccomp`, KV head `bh` of the sequence and the window's first position `start` (for `h`, `r`).
 */
const GEAR_ROW_WGSL =
  `  // Unbatched: sequence st.lane + qb of the grid's z (q and out rows of sequence qb), rows at st.pos.. .
  // Batched (continuous batching): row r is a decode step of its own lane and position; z is the split.
  var qb = 0u;
  var b = 0u;
  var z = wg.z;
  var pos = 0u;
  var ccomp = 0u;
  if (st.batched != 0u) {
    b = row_lane(r);
    pos = row_pos(r);
    ccomp = (pos / NB) * NB;
  } else {
    var nsz = 1u;
    if (SPLIT) { nsz = (st.pos + st.rows - 1u) / SPLITK + 1u; }
    qb = wg.z / nsz;
    z = wg.z % nsz;
    b = st.lane + qb;
    pos = st.pos + r;
    ccomp = (st.pos / NB) * NB;
  }
  let kvh = h / GROUP;
  let bh = b * NKV + kvh;
  var start = 0u;
  if (WINDOW > 0u && pos + 1u > WINDOW) { start = pos + 1u - WINDOW; }`;

/** Threads of a wide split-K GEAR attention workgroup. */
const SPLIT_WG = 256;
/** Widest head the wide split-K kernel takes (one channel per thread where it folds the query). */
export const GEAR_WIDE_MAX_HD = SPLIT_WG;
/**
 * Most key tiles (of 64) for which decode runs the wide split-K kernel: measured on an H200 (16 heads × 128,
 * rank 4, 2 % outliers, 2026-12-02) it takes 13.6 and 19.3 µs per layer at 1,024 and 2,048 keys (17 and 33
 * tiles), the 64-thread one 14.4 and 14.6.
 */
export const GEAR_WIDE_MAX_SPLITS = 17;

/** A tier of decode's split-K: from `minTiles` key tiles (of 64), the 64-thread kernel walks `tiles` per workgroup. */
export interface GearSplitTier {
  /** Fewest key tiles of the tier. */
  minTiles: number;
  /** Tiles per workgroup (it issues the next tile's loads while it computes one). */
  tiles: number;
}

/**
 * Decode's multi-tile tiers, by ascending `minTiles` (below the first: one tile per workgroup). On an H200 (16
 * heads × 128, rank 2, 2 % outliers, 2026-12-02), split + merge µs per layer for 1 / 2 / 4 / 8 tiles per
 * workgroup: 2,048 keys 18.9 / 19.5 / 20.2 / 33.0; 3,072 keys 20.6 / 19.7 / 20.9; 4,096 keys 26.3 / 21.2 / 23.0;
 * 6,144 keys 29.1 / 23.1 / 25.2; 8,192 keys 31.1 / 26.6 / 25.7 / 34.5; 32,768 keys 87.0 / 75.1 / 68.2 / 68.3
 * (the f16 cache's 90.4).
 */
export const GEAR_SPLIT_TIERS: readonly GearSplitTier[] = Object.freeze([
  Object.freeze({ minTiles: 48, tiles: 2 }),
  Object.freeze({ minTiles: 128, tiles: 4 }),
]);

/**
 * WGSL of split-K GEAR attention (decode: one tile of 64 keys per workgroup), built for latency like split-K
 * attention of `attention.ts`: 256 threads, and every global load of the tile issued up front, before the first
 * barrier (key codes, the keys' Q rows, the channel parameters; the value codes, parameters and Q rows), so the
 * tile waits on memory about once. Thread c < hd folds channel c of q into the key scales (q·scale), the key
 * minima (q·min) and the low-rank factor (q·P); per class of channels (those of the code words one key thread
 * reads), a few threads sum q·min and q·P; `kt` threads per key dot their code words with the folded query and
 * add their class's q·min and q·P·Q_K terms, so no tree reduction runs; one thread per key adds the outlier
 * terms. After the softmax, thread (token group g, 4-channel column) sums `p_t · (code·scale + min)` and the
 * low-rank term `(Σ p_t·Q_V[t]) · P_Vᵀ` over tokens t ≡ g (mod groups) while the value outliers are scattered;
 * the groups' sums are added at the end. A ring tile reads rows of the full-precision ring as vec4s. Same
 * bindings, grid and partials as {@linkcode gearAttentionWgsl} with `split`.
 */
function gearSplitWgsl(p: GearAttentionParams): string {
  const l = p.layout;
  if (l.hd > SPLIT_WG) {
    throw new RangeError(`Cannot build split-K GEAR attention: head width ${l.hd} is over ${SPLIT_WG}`);
  }
  if (l.hd % 4 !== 0) {
    throw new RangeError(`Cannot build split-K GEAR attention: head width ${l.hd} is not a multiple of 4`);
  }
  const f16 = p.ringDtype === "f16";
  const d4 = l.hd / 4;
  const ngt = l.group < TK ? TK / l.group : 1;
  const rmax = Math.max(1, l.rMax);
  const lowRank = l.rMax > 0;
  const vec = (e: string) => (f16 ? `vec4<f32>(unpack2x16float(${e}.x), unpack2x16float(${e}.y))` : e);
  // Threads per key: ring tiles split the head's vec4s, compressed tiles its code words.
  const ktRing = d4 % 4 === 0 ? 4 : d4 % 2 === 0 ? 2 : 1;
  const ktComp = l.W % 4 === 0 ? 4 : l.W % 2 === 0 ? 2 : 1;
  const groups = Math.min(TK, Math.floor(SPLIT_WG / d4)); // token groups of the value phase
  const nj = Math.ceil(TK / groups); // tokens per value thread
  const niw = l.W / ktComp; // code words per key thread
  const partial = l.hd % l.perWord !== 0; // the last word holds fewer codes
  // Ring keys: vec4s kp, kp + kt, ... of key kk.
  const ringKey: string[] = [];
  const nir = d4 / ktRing;
  for (let i0 = 0; i0 < nir; i0 += 8) {
    const is = range(Math.min(8, nir - i0)).map((i) => i0 + i);
    for (const i of is) ringKey.push(`let k${i} = rk[kb + ${i * ktRing}u];`);
    ringKey.push(`s += ${is.map((i) => `dot(qs4[kp + ${i * ktRing}u], ${vec(`k${i}`)})`).join(" + ")};`);
  }
  // Loads issued up front: the key thread's code words (and its key's Q row), the folding thread's key
  // parameters, the value thread's code words, parameters (and Q rows) of its tokens.
  const decls: string[] = [];
  const loads: string[] = [];
  for (let i = 0; i < niw; i++) {
    decls.push(`var kw${i} = 0u;`);
    loads.push(`kw${i} = store[cb + ${i * ktComp}u];`);
  }
  for (let w = 0; w < l.RW && lowRank; w++) {
    decls.push(`var qkw${w} = 0u;`);
    loads.push(`qkw${w} = store[O_QK + (bh * T + tkc) * RW + ${w}u];`);
  }
  for (let g = 0; g < ngt; g++) {
    decls.push(`var prk${g} = 0u;`);
    loads.push(`if (li < D) { prk${g} = store[O_PARK + (bh * (T / G) + (base + ${g}u * G) / G) * D + li]; }`);
  }
  const perChannelParams = l.gv % 4 !== 0;
  const vLoads: string[] = [];
  for (let i = 0; i < nj; i++) {
    decls.push(`var cw${i} = 0u;`);
    vLoads.push(`let t${i} = tb + min(kg + ${i * groups}u, n - 1u);`);
    vLoads.push(`cw${i} = store[O_CV + t${i} * W + wo];`);
    if (perChannelParams) {
      for (let e = 0; e < 4; e++) {
        decls.push(`var pr${i}_${e} = 0u;`);
        vLoads.push(`pr${i}_${e} = store[O_PARV + t${i} * NGV + (4u * vcol + ${e}u) / GV];`);
      }
    } else {
      decls.push(`var pr${i} = 0u;`);
      vLoads.push(`pr${i} = store[O_PARV + t${i} * NGV + gv];`);
    }
    for (let w = 0; w < l.RW && lowRank; w++) {
      decls.push(`var qvw${i}_${w} = 0u;`);
      vLoads.push(`qvw${i}_${w} = store[O_QV + t${i} * RW + ${w}u];`);
    }
  }
  // Compressed keys: code words kp, kp + kt, ... of key kk against the folded query of its token group.
  const compKey: string[] = [];
  for (let i = 0; i < niw; i++) {
    compKey.push(`cq = qb + (kp + ${i * ktComp}u) * PERW;`);
    for (let e = 0; e < l.perWord; e++) {
      const term = `s += qd[cq + ${e}u] * f32((kw${i} >> ${e * l.bits}u) & MASK);`;
      // Channels past the head (the last word's unused codes) only where the head does not fill it.
      compKey.push(partial ? `if (cq + ${e}u < qb + D) { ${term} }` : term);
    }
  }
  // The class sums of this key thread: q·min of its token group, and q·P_j · scale_j · Q_K[t, j].
  compKey.push(`s += cls[gt * KTC + kp];`);
  for (let j = 0; j < l.rMax; j++) {
    compKey.push(`s += cls[(NGT + ${j}u) * KTC + kp] * ksc[${j}u] * q8_of(qkw${j >> 2}, ${j}u);`);
  }
  // Values: tokens j = kg + groups·i of the tile for 4-channel column vcol.
  const vSum: string[] = [];
  const ringV: string[] = [];
  for (let i = 0; i < nj; i++) {
    // Tokens past the tile's end (j ≥ n) weigh 0; their loads read the tile's last token.
    const w = `select(0.0, pp[min(kg + ${i * groups}u, TK - 1u)], kg + ${i * groups}u < n)`;
    vSum.push(`let w${i} = ${w};`);
    ringV.push(`let w${i} = ${w};`);
    ringV.push(`let v${i} = rv[rb + ((base + min(kg + ${i * groups}u, n - 1u)) % BUFCAP) * D4];`);
    const codes = `vec4<f32>(vec4<u32>(cw${i} >> sh, cw${i} >> (sh + BITS), cw${i} >> (sh + 2u * BITS), ` +
      `cw${i} >> (sh + 3u * BITS)) & vec4<u32>(MASK))`;
    if (perChannelParams) {
      const pr = range(4).map((e) => `unpack2x16float(pr${i}_${e})`);
      const sc = `vec4<f32>(${pr.map((x) => `${x}.x`).join(", ")})`;
      const mn = `vec4<f32>(${pr.map((x) => `${x}.y`).join(", ")})`;
      vSum.push(`acc += w${i} * (${codes} * ${sc} + ${mn});`);
    } else {
      vSum.push(`let pr${i}f = unpack2x16float(pr${i});`);
      vSum.push(`acc += w${i} * (${codes} * pr${i}f.x + pr${i}f.y);`);
    }
  }
  for (let j = 0; j < l.rMax; j++) {
    // (Σ_t p_t · Q_V[t, j]) · scale_j over this thread's tokens, times column j of P_V for its channels.
    const u = range(nj).map((i) => `w${i} * q8_of(qvw${i}_${j >> 2}, ${j}u)`).join(" + ");
    vSum.push(`acc += (${u}) * vsc[${j}u] * pvc[${j}u];`);
  }
  ringV.push(`acc = ${range(nj).map((i) => `w${i} * ${vec(`v${i}`)}`).join(" + ")};`);
  const nCls = (ngt + l.rMax) * ktComp;
  return `${prelude()}
${gearConstsWgsl(p)}
const D4: u32 = ${d4}u;
const KTR: u32 = ${ktRing}u;
const KTC: u32 = ${ktComp}u;
const NIW: u32 = ${niw}u;
const KG: u32 = ${groups}u;
const WG: u32 = ${SPLIT_WG}u;
const NCLS: u32 = ${nCls}u;
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> store: array<u32>;
@group(0) @binding(2) var<storage, read> rk: array<${f16 ? "vec2<u32>" : "vec4<f32>"}>;
@group(0) @binding(3) var<storage, read> rv: array<${f16 ? "vec2<u32>" : "vec4<f32>"}>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
var<workgroup> qs4: array<vec4<f32>, D4>;
// The folded query: q·scale and q·min per token group and channel, q·P per rank and channel.
var<workgroup> qd: array<f32, ${ngt * l.hd}>;
var<workgroup> qm: array<f32, ${ngt * l.hd}>;
var<workgroup> qp: array<f32, ${rmax * l.hd}>;
// Class sums: q·min of each token group, then q·P of each rank, over the channels of each key thread's words.
var<workgroup> cls: array<f32, ${Math.max(1, nCls)}>;
var<workgroup> sred: array<f32, ${TK * Math.max(ktRing, ktComp)}>;
var<workgroup> pt: array<vec4<f32>, ${TK / 4}>;
var<workgroup> pp: array<f32, TK>;
var<workgroup> vred: array<vec4<f32>, ${groups * d4}>;
var<workgroup> lred: array<f32, KG>;
${gearHelpersWgsl(l)}
fn qs_at(c: u32) -> f32 {
  return qs4[c / 4u][c % 4u];
}
fn p_at(t: u32) -> f32 {
  return pp[t];
}
// The int8 at byte (j mod 4) of word w.
fn q8_of(w: u32, j: u32) -> f32 {
  return f32(bitcast<i32>(w << (24u - 8u * (j & 3u))) >> 24u);
}

@compute @workgroup_size(${SPLIT_WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let h = wg.x;
  let r = wg.y;
  if (r >= st.rows) { return; }
${GEAR_ROW_WGSL}
  start = max(start, z * TK);
  let hi = min(pos, z * TK + TK - 1u);
  let qo = ((qb * QROWS + r) * NH + h) * D;
  let po = (((qb * QROWS + r) * NH + h) * NS + z) * (D + 2u);
  if (start > hi) {
    // A split before the window or past the row's position: empty.
    if (li < D) { out[po + li] = 0.0; }
    if (li == 0u) { out[po + D] = -3.0e38; out[po + D + 1u] = 0.0; }
    return;
  }
  let base = z * TK;
  let n = hi + 1u - base;
  let comp = base < ccomp;
  // Score threads: key kk of the tile, share kp; value threads: token group kg, 4-channel column vcol.
  let kk = li / select(KTR, KTC, comp);
  let kp = li % select(KTR, KTC, comp);
  let kg = li / D4;
  let vcol = li % D4;
  let tk = base + kk;
  let tkc = min(tk, base + TK - 1u);
  let kvalid = kk < TK && tk >= start && tk <= hi;
  let tb = bh * T + base;
  let wo = (4u * vcol) / PERW;
  let sh = ((4u * vcol) % PERW) * BITS;
  let gv = (4u * vcol) / GV;
  var qc = 0.0;
  if (li < D) { qc = q[qo + li] * ${f32Lit(p.scale)}; }
  var seg = 0u;
  ${decls.join("\n  ")}
  var ksc: array<f32, ${rmax}>;
  var vsc: array<f32, ${rmax}>;
  var pvc: array<vec4<f32>, ${rmax}>;
  if (comp) {
    // Every load of the tile at once.
    let cb = O_CK + (bh * T + tkc) * W + kp;
    ${loads.join("\n    ")}
    if (kg < KG) {
      ${vLoads.join("\n      ")}
    }
    seg = store[O_SEG + b * NBLK + base / NB];
    if (LOWRANK) {
      let pk = O_PK + (bh * NBLK + seg) * PW;
      let pv = O_PV + (bh * NBLK + seg) * PW;
      for (var j = 0u; j < RMAX; j++) {
        ksc[j] = half_at(pk, D * RMAX + j);
        vsc[j] = half_at(pv, D * RMAX + j);
        pvc[j] = vec4<f32>(half_at(pv, (4u * vcol) * RMAX + j), half_at(pv, (4u * vcol + 1u) * RMAX + j),
          half_at(pv, (4u * vcol + 2u) * RMAX + j), half_at(pv, (4u * vcol + 3u) * RMAX + j));
        if (li < D) { qp[j * D + li] = qc * half_at(pk, li * RMAX + j); }
      }
    }
    if (li < D) {
      ${
    range(ngt).map((g) =>
      `let pr${g}k = unpack2x16float(prk${g});
      qd[${g}u * D + li] = qc * pr${g}k.x;
      qm[${g}u * D + li] = qc * pr${g}k.y;`
    ).join("\n      ")
  }
    }
  }
  if (li < D4) {
    qs4[li] = vec4<f32>(q[qo + 4u * li], q[qo + 4u * li + 1u], q[qo + 4u * li + 2u], q[qo + 4u * li + 3u]) *
      ${f32Lit(p.scale)};
  }
  if (li < TK) { atomicStore(&kacc[li], 0); }
  if (li < D) { atomicStore(&vacc[li], 0); }
  workgroupBarrier();
  var s = 0.0;
  if (comp) {
    if (KK > 0u) { scatter_key_outliers(li, WG, bh, base); }
    if (li < NCLS) {
      // Class sum v of key share c: over the channels of code words c, c + KTC, ...
      let v = li / KTC;
      let c = li % KTC;
      var sum = 0.0;
      for (var i = 0u; i < NIW; i++) {
        let c0 = (c + i * KTC) * PERW;
        for (var e = 0u; e < PERW; e++) {
          let ch = c0 + e;
          if (ch < D) {
            if (v < NGT) { sum += qm[v * D + ch]; } else { sum += qp[(v - NGT) * D + ch]; }
          }
        }
      }
      cls[li] = sum;
    }
    workgroupBarrier();
    if (li < TK * KTC && kvalid) {
      let gt = select(0u, kk / G, G < TK);
      let qb = gt * D;
      var cq = 0u;
      ${compKey.join("\n      ")}
      if (kp == 0u && KK > 0u) { s += f32(atomicLoad(&kacc[kk])) / KFIX; }
    }
  } else if (li < TK * KTR && kvalid) {
    let kb = (bh * BUFCAP + tk % BUFCAP) * D4 + kp;
    ${ringKey.join("\n    ")}
  }
  let kt = select(KTR, KTC, comp);
  if (li < TK * kt) { sred[li] = s; }
  workgroupBarrier();
  if (li < TK) {
    var sc = 0.0;
    for (var u = 0u; u < kt; u++) { sc += sred[li * kt + u]; }
    let t = base + li;
    pt[li / 4u][li % 4u] = select(-3.0e38, sc, t >= start && t <= hi);
  }
  workgroupBarrier();
  var mv = vec4<f32>(-3.0e38);
  for (var u = 0u; u < TK / 4u; u++) { mv = max(mv, pt[u]); }
  let m = max(max(mv.x, mv.y), max(mv.z, mv.w));
  if (li < TK) {
    let t = base + li;
    pp[li] = select(0.0, exp(pt[li / 4u][li % 4u] - m), t >= start && t <= hi);
  }
  workgroupBarrier();
  var acc = vec4<f32>(0.0);
  if (comp) {
    if (MV > 0u) { scatter_value_outliers(li, WG, bh, base, n); }
    if (kg < KG) {
      ${vSum.join("\n      ")}
    }
  } else if (kg < KG) {
    let rb = bh * BUFCAP * D4 + vcol;
    ${ringV.join("\n    ")}
  }
  if (kg < KG) {
    vred[li] = acc;
    if (vcol == 0u) {
      var ls = 0.0;
      for (var i = 0u; i < ${nj}u; i++) {
        let j = kg + i * KG;
        if (j < n) { ls += pp[j]; }
      }
      lred[kg] = ls;
    }
  }
  workgroupBarrier();
  ${
    writePartialWgsl(
      "D",
      `if (comp && MV > 0u) {
      a += vec4<f32>(f32(atomicLoad(&vacc[4u * li])), f32(atomicLoad(&vacc[4u * li + 1u])),
        f32(atomicLoad(&vacc[4u * li + 2u])), f32(atomicLoad(&vacc[4u * li + 3u]))) / VFIX;
    }`,
    )
  }
}`;
}

/**
 * WGSL of GEAR attention. Bindings: 0 q [B, rowsPerSeq, nH, hd] f32; 1 store u32; 2 K ring, 3 V ring
 * [B, nKV, bufCap, hd] (f32, or f16 packed in u32); 4 out [B, rowsPerSeq, nH·hd] f32, or with `split` the
 * partials ({@linkcode gearPartialFloats}). Grid: (nH, rows, B), or with `split` (nH, rows, B · S) where
 * S = ⌊(pos + rows − 1) / K⌋ + 1, K = {@linkcode gearSplitKeys}: sequence `st.lane + b` reads q rows b; row r is at position `st.pos + r`;
 * the compressed tokens are those before ⌊st.pos / buffer⌋·buffer. A batched step (continuous batching) has one
 * row per sequence, each of its own lane and position (`row_lane`, `row_pos` of STEP_WGSL), q rows [rows, nH,
 * hd], and grid (nH, rows, S) with S for the largest position; a split past a row's position stays empty.
 */
export function gearAttentionWgsl(p: GearAttentionParams): string {
  const l = p.layout;
  if (p.nH % l.nKV !== 0) {
    throw new RangeError(`Cannot build GEAR attention: ${p.nH} query heads are not a multiple of ${l.nKV}`);
  }
  if (p.split && p.wide) return gearSplitWgsl(p);
  const f16 = p.ringDtype === "f16";
  const ringType = f16 ? "u32" : "f32";
  const read = (name: string) => f16 ? `unpack2x16float(${name}[i >> 1u])[i & 1u]` : `${name}[i]`;
  const ngt = l.group < TK ? TK / l.group : 1;
  const R = l.rMax;
  const dpt = Math.ceil(l.hd / TK);
  const d4 = Math.ceil(l.hd / 4);
  const tk4 = TK / 4;
  // Sums over the workgroup per compressed tile: for the keys q·min of each token group and q·P_K of each rank;
  // for the values p·min of each value group, p·scale_j·Q_V[t, j] of each rank and Σ p.
  const nrk = ngt + R;
  const nrv = l.nGV + R + 1;
  const nr = Math.max(nrk, nrv);
  const nko = l.kK > 0 ? Math.ceil((ngt * l.hd * l.kK) / TK) : 0;
  // Workgroups that walk several tiles prefetch (the full kernel, or split-K over several tiles).
  const prefetch = !(p.split ?? false) || gearSplitKeys(p) > TK;
  // Phase 0 of a compressed tile: every load that depends on nothing but the tile, issued together (thread li
  // reads token li's key and value code words, value parameters, Q rows and value outliers; its channels' key
  // parameters; its share of the key outliers). The kernel is bound by each workgroup's chain of dependent load
  // rounds (on an H200 its time at 32k grew in proportion as fewer workgroups fitted an SM), so a tile waits
  // on memory twice: these loads, then the segment's P rows.
  // The loads as [name, type, expression] for the tile at base `B` of segment `SEG` (`x` suffixes the indices
  // they share), and the indices (tt, kh, pk, pv) they need first.
  const tileLoads = (B: string, SEG: string, x: string) => {
    const idx: string[] = [`let tt${x} = bh * T + ${B} + li;`];
    const ld: [string, string, string][] = [];
    for (let w = 0; w < l.W; w++) ld.push([`kw${w}`, "u32", `store[O_CK + tt${x} * W + ${w}u]`]);
    for (let w = 0; w < l.W; w++) ld.push([`vw${w}`, "u32", `store[O_CV + tt${x} * W + ${w}u]`]);
    for (let g = 0; g < l.nGV; g++) {
      ld.push([`vp${g}`, "vec2<f32>", `unpack2x16float(store[O_PARV + tt${x} * NGV + ${g}u])`]);
    }
    for (let w = 0; w < l.RW && R > 0; w++) {
      ld.push([`qk${w}`, "u32", `store[O_QK + tt${x} * RW + ${w}u]`]);
      ld.push([`qv${w}`, "u32", `store[O_QV + tt${x} * RW + ${w}u]`]);
    }
    for (let g = 0; g < ngt; g++) {
      for (let u = 0; u < dpt; u++) {
        ld.push([
          `kp${g}_${u}`,
          "vec2<f32>",
          `unpack2x16float(store[O_PARK + (bh * (T / G) + (${B} + ${g}u * G) / G) * D + min(li + ${
            u * TK
          }u, D - 1u)])`,
        ]);
      }
    }
    if (nko > 0) {
      idx.push(`let kh${x} = (bh * (T / G) + ${B} / G) * D * KK;`);
      for (let k = 0; k < nko; k++) {
        ld.push([`ko${k}`, "u32", `u16_at(O_OUTK, kh${x} + min(li + ${k * TK}u, NKOT - 1u))`]);
      }
    }
    for (let w = 0; w < l.MW && l.mV > 0; w++) {
      ld.push([`vo${w}`, "u32", `store[O_OUTV + tt${x} * MW + ${w}u]`]);
    }
    // The segment's factors: the Q column scales, the rows of P_K of the channels the thread folds (cf_u) and of
    // P_V of its value channels (cl_u).
    if (R > 0) {
      idx.push(
        `let pk${x} = O_PK + (bh * NBLK + ${SEG}) * PW;`,
        `let pv${x} = O_PV + (bh * NBLK + ${SEG}) * PW;`,
      );
      for (let j = 0; j < R; j++) {
        ld.push([`ksc${j}`, "f32", `half_at(pk${x}, D * RMAX + ${j}u)`]);
        ld.push([`vsc${j}`, "f32", `half_at(pv${x}, D * RMAX + ${j}u)`]);
      }
      for (let u = 0; u < dpt; u++) {
        for (let j = 0; j < R; j++) {
          ld.push([`pkr${u}_${j}`, "f32", `half_at(pk${x}, min(cf${u}, D - 1u) * RMAX + ${j}u)`]);
          ld.push([`pvr${u}_${j}`, "f32", `half_at(pv${x}, cl${u} * RMAX + ${j}u)`]);
        }
      }
    }
    return { idx, ld };
  };
  const share = l.perWord % dpt === 0 && l.gv % dpt === 0;
  // A compressed tile's channels: cf_u = li + u·TK (folded), cl_u = li·dpt + u (values: adjacent, one code word
  // and parameter group for a 128-wide head).
  const chans: string[] = [];
  for (let u = 0; u < dpt; u++) {
    chans.push(`let cf${u} = li + ${u * TK}u;`, `let cl${u} = min(li * ${dpt}u + ${u}u, D - 1u);`);
  }
  // Without prefetch (one tile per workgroup) the tile's loads are issued at its start; with it (a workgroup
  // walking tiles) the next compressed tile's loads are issued at the start of this one, into nx_ registers,
  // so a tile waits on memory only where the walk begins (the segment index is loaded two tiles ahead).
  const cur = tileLoads("base", "seg", "");
  const nxt = tileLoads("nb", "segn", "_n");
  const p0: string[] = prefetch
    ? [...chans, ...cur.ld.map(([n]) => `let ${n} = nx_${n};`)]
    : [...chans, ...cur.idx, ...cur.ld.map(([n, , e]) => `let ${n} = ${e};`)];
  const issue = (B: string) =>
    `{
        let nb = ${B};
        ${chans.join(" ")}
        ${nxt.idx.join("\n        ")}
        ${nxt.ld.map(([n, , e]) => `nx_${n} = ${e};`).join("\n        ")}
      }`;
  const prefetchDecls = prefetch ? nxt.ld.map(([n, t]) => `var nx_${n}: ${t};`) : [];
  // Phase 1: fold q into the key scales (qd), q·min and q·P_K partials; stage the values.
  const p1: string[] = [];
  // q's channels cf_u, in registers since the start: stored to qs here, after the tile's loads were issued (so
  // they do not wait on q's), and read by other threads after the barrier below.
  for (let u = 0; u < dpt; u++) {
    p1.push(`let okf${u} = cf${u} < D;`, `let qf${u} = qr${u};`, `if (okf${u}) { qs[cf${u}] = qr${u}; }`);
  }
  for (let g = 0; g < ngt; g++) {
    const parts: string[] = [];
    for (let u = 0; u < dpt; u++) {
      // Channels D .. 4·d4 − 1 pad qd's rows with zeros (the last code word's unused codes).
      p1.push(
        `if (cf${u} < ${4 * d4}u) { qd[${
          g * d4
        }u + cf${u} / 4u][cf${u} % 4u] = select(0.0, qf${u} * kp${g}_${u}.x, okf${u}); }`,
      );
      parts.push(`select(0.0, qf${u} * kp${g}_${u}.y, okf${u})`);
    }
    p1.push(`red[${g * tk4}u + li / 4u][li % 4u] = ${parts.join(" + ")};`);
  }
  for (let j = 0; j < R; j++) {
    const parts = range(dpt).map((u) => `select(0.0, qf${u} * pkr${u}_${j}, okf${u})`);
    p1.push(`red[${(ngt + j) * tk4}u + li / 4u][li % 4u] = ${parts.join(" + ")};`);
  }
  for (let w = 0; w < l.W; w++) p1.push(`vsh[${w * tk4}u + li / 4u][li % 4u] = vw${w};`);
  for (let u = 0; u < dpt; u++) {
    p1.push(
      `let wo${u} = cl${u} / PERW;`,
      `let sh${u} = (cl${u} % PERW) * BITS;`,
      `let gv${u} = cl${u} / GV;`,
    );
  }
  // The score of token li: its code words against the folded query of its token group, vec4 by vec4.
  const score: string[] = [];
  for (let w = 0; w < l.W; w++) {
    for (let e0 = 0; e0 < l.perWord; e0 += 4) {
      const c0 = w * l.perWord + e0;
      if (c0 >= l.hd) break;
      const sh = range(4).map((e) => `${(e0 + e) * l.bits}u`).join(", ");
      score.push(
        `sc += dot(qd[qg + ${
          c0 / 4
        }u], vec4<f32>((vec4<u32>(kw${w}) >> vec4<u32>(${sh})) & vec4<u32>(MASK)));`,
      );
    }
  }
  score.push("sc += rsum(gt);");
  for (let j = 0; j < R; j++) score.push(`sc += rsum(${ngt + j}u) * ksc${j} * q8_of(qk${j >> 2}, ${j}u);`);
  // Softmax weights of token li: p·scale per value group (wt), and the value-side partials.
  const p4: string[] = [];
  for (let g = 0; g < l.nGV; g++) {
    p4.push(
      `wt[${g * tk4}u + li / 4u][li % 4u] = pr * vp${g}.x;`,
      `red[${g * tk4}u + li / 4u][li % 4u] = pr * vp${g}.y;`,
    );
  }
  for (let j = 0; j < R; j++) {
    p4.push(`red[${(l.nGV + j) * tk4}u + li / 4u][li % 4u] = pr * vsc${j} * q8_of(qv${j >> 2}, ${j}u);`);
  }
  p4.push(`red[${(l.nGV + R) * tk4}u + li / 4u][li % 4u] = pr;`);
  for (let j = 0; j < l.mV; j++) {
    p4.push(`add_value_outlier(${j}u, (vo${j >> 1} >> ${(j & 1) * 16}u) & 0xffffu, pr);`);
  }
  // The weighted codes of the thread's channels, four tokens at a time.
  const vsum: string[] = [];
  const slots = share ? [0] : range(dpt);
  for (let u = 0; u < dpt; u++) vsum.push(`var a${u} = 0.0;`);
  vsum.push("for (var t4 = 0u; t4 < TK4; t4++) {");
  for (const k of slots) {
    vsum.push(`  let c4_${k} = vsh[wo${k} * TK4 + t4];`, `  let w4_${k} = wt[gv${k} * TK4 + t4];`);
  }
  for (let u = 0; u < dpt; u++) {
    const k = share ? 0 : u;
    vsum.push(`  a${u} += dot(w4_${k}, vec4<f32>((c4_${k} >> vec4<u32>(sh${u})) & vec4<u32>(MASK)));`);
  }
  vsum.push("}");
  const fin: string[] = ["l = l * corr + rsum(NRV - 1u);"];
  for (let u = 0; u < dpt; u++) {
    const lr = range(R).map((j) => ` + rsum(${l.nGV + j}u) * pvr${u}_${j}`).join("");
    const ov = l.mV > 0 ? ` + f32(atomicLoad(&vacc[cl${u}])) / VFIX` : "";
    fin.push(`acc[${u}] = acc[${u}] * corr + a${u} + rsum(gv${u})${lr}${ov};`);
  }
  const keyOut: string[] = [];
  for (let k = 0; k < nko; k++) {
    keyOut.push(`if (li + ${k * TK}u < NKOT) { add_key_outlier(li + ${k * TK}u, ko${k}, first); }`);
  }
  const ind = (xs: string[], n: number) => xs.join(`\n${" ".repeat(n)}`);
  return `${prelude()}
${gearConstsWgsl(p)}
const TK4: u32 = ${tk4}u;
const D4: u32 = ${d4}u;
const NRK: u32 = ${nrk}u;
const NRV: u32 = ${nrv}u;
const NKOT: u32 = ${Math.max(1, ngt * l.hd * l.kK)}u;
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> store: array<u32>;
@group(0) @binding(2) var<storage, read> rk: array<${ringType}>;
@group(0) @binding(3) var<storage, read> rv: array<${ringType}>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// q · score scale [hd]; the scores of a tile [TK] as vec4s.
var<workgroup> qs: array<f32, ${l.hd}>;
var<workgroup> pt: array<vec4<f32>, ${tk4}>;
// A compressed tile: the folded query q·scale [token group, channel] (rows padded to 4·D4 with zeros), the value
// code words [word, token] and the weights p·scale [value group, token], as vec4s.
var<workgroup> qd: array<vec4<f32>, ${ngt * d4}>;
var<workgroup> vsh: array<vec4<u32>, ${l.W * tk4}>;
var<workgroup> wt: array<vec4<f32>, ${l.nGV * tk4}>;
// Per-thread partials of the tile's sums [sum, TK] (as vec4s: a thread of sum_stage reads its eight in two
// loads), then sums of eight [sum, 8] (two vec4s per sum).
var<workgroup> red: array<vec4<f32>, ${nr * tk4}>;
var<workgroup> red2: array<vec4<f32>, ${2 * nr}>;
${gearHelpersWgsl(l)}
fn qs_at(c: u32) -> f32 {
  return qs[c];
}
fn p_at(t: u32) -> f32 {
  return pt[t / 4u][t % 4u];
}
// The int8 at byte (j mod 4) of word w.
fn q8_of(w: u32, j: u32) -> f32 {
  return f32(bitcast<i32>(w << (24u - 8u * (j & 3u))) >> 24u);
}
// First stage of the tile's sums: thread li < 8·n adds the partials of sum li / 8 of threads 8·(li % 8) ...
fn sum_stage(li: u32, n: u32) {
  if (li < 8u * n) {
    let v = li / 8u;
    let k = li % 8u;
    let i = v * TK4 + 2u * k;
    red2[v * 2u + k / 4u][k % 4u] = dot(red[i] + red[i + 1u], vec4<f32>(1.0));
  }
}
// Sum v of the tile (after sum_stage and a barrier).
fn rsum(v: u32) -> f32 {
  return dot(red2[2u * v] + red2[2u * v + 1u], vec4<f32>(1.0));
}
fn ring_k(bh: u32, t: u32, c: u32) -> f32 {
  let i = (bh * BUFCAP + t % BUFCAP) * D + c;
  return ${read("rk")};
}
fn ring_v(bh: u32, t: u32, c: u32) -> f32 {
  let i = (bh * BUFCAP + t % BUFCAP) * D + c;
  return ${read("rv")};
}

@compute @workgroup_size(${TK})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let h = wg.x;
  let r = wg.y;
  if (r >= st.rows) { return; }
${GEAR_ROW_WGSL}
  var hi = pos;
  if (SPLIT) {
    start = max(start, z * SPLITK);
    hi = min(pos, z * SPLITK + SPLITK - 1u);
  }
  // The segment of the first tile, loaded with q (a compressed tile's loads then wait on nothing).
  var segn = store[O_SEG + b * NBLK + min(((start / TK) * TK) / NB, NBLK - 1u)];
  let qo = ((qb * QROWS + r) * NH + h) * D;
  // q · score scale for channels li, li + TK, … (qs is written in each tile's first phase).
  ${
    ind(
      range(dpt).map((u) =>
        `let qr${u} = select(0.0, q[qo + min(li + ${u * TK}u, D - 1u)], li + ${u * TK}u < D) * ${
          f32Lit(p.scale)
        };`
      ),
      2,
    )
  }
  var m = -3.0e38;
  var l = 0.0;
  var acc: array<f32, ${dpt}>;${
    prefetch
      ? `
  // The first compressed tile's loads, and the segment of the tile after it.
  ${ind(prefetchDecls, 2)}
  if ((start / TK) * TK < ccomp) ${issue("(start / TK) * TK")}
  segn = store[O_SEG + b * NBLK + min(((start / TK) * TK + TK) / NB, NBLK - 1u)];`
      : ""
  }
  for (var base = (start / TK) * TK; base <= hi; base += TK) {
    let t = base + li;
    let valid = t >= start && t <= hi;
    let n = min(TK, hi + 1u - base);
    let tb = bh * T + base;
    ${
    prefetch ? "// segn: the segment of the next tile." : `let seg = segn;
    if (base + TK <= hi) { segn = store[O_SEG + b * NBLK + min((base + TK) / NB, NBLK - 1u)]; }`
  }
    if (base < ccomp) {
      ${ind(p0, 6)}${
    prefetch
      ? `
      if (base + TK < ccomp && base + TK <= hi) ${issue("base + TK")}
      segn = store[O_SEG + b * NBLK + min((base + 2u * TK) / NB, NBLK - 1u)];`
      : ""
  }
      atomicStore(&kacc[li], 0);
      for (var c = li; c < D; c += TK) { atomicStore(&vacc[c], 0); }
      ${ind(p1, 6)}
      workgroupBarrier();
      let first = select(base % G, 0u, G <= TK);
      ${ind(keyOut, 6)}
      sum_stage(li, NRK);
      workgroupBarrier();
      let gt = select(0u, li / G, G < TK);
      let qg = gt * D4;
      var sc = 0.0;
      ${ind(score, 6)}
      if (KK > 0u) { sc += f32(atomicLoad(&kacc[li])) / KFIX; }
      let s = select(-3.0e38, sc, valid);
      pt[li / 4u][li % 4u] = s;
      workgroupBarrier();
      var mv = vec4<f32>(-3.0e38);
      for (var u = 0u; u < TK4; u++) { mv = max(mv, pt[u]); }
      let mt = max(m, max(max(mv.x, mv.y), max(mv.z, mv.w)));
      let corr = exp(m - mt);
      m = mt;
      let pr = select(0.0, exp(s - mt), valid);
      ${ind(p4, 6)}
      workgroupBarrier();
      sum_stage(li, NRV);
      ${ind(vsum, 6)}
      workgroupBarrier();
      ${ind(fin, 6)}
    } else {
      ${ind(range(dpt).map((u) => `if (li + ${u * TK}u < D) { qs[li + ${u * TK}u] = qr${u}; }`), 6)}
      workgroupBarrier();
      var s = -3.0e38;
      if (valid) {
        var sc = 0.0;
        for (var c = 0u; c < D; c++) { sc += qs[c] * ring_k(bh, t, c); }
        s = sc;
      }
      pt[li / 4u][li % 4u] = s;
      workgroupBarrier();
      var mv = vec4<f32>(-3.0e38);
      for (var u = 0u; u < TK4; u++) { mv = max(mv, pt[u]); }
      let mt = max(m, max(max(mv.x, mv.y), max(mv.z, mv.w)));
      workgroupBarrier();
      pt[li / 4u][li % 4u] = select(0.0, exp(s - mt), valid);
      let corr = exp(m - mt);
      m = mt;
      workgroupBarrier();
      var lt = 0.0;
      for (var u = 0u; u < TK4; u++) { lt += dot(pt[u], vec4<f32>(1.0)); }
      l = l * corr + lt;
      for (var u = 0u; u < ${dpt}u; u++) {
        let c = li * ${dpt}u + u;
        if (c < D) {
          var a = acc[u] * corr;
          // Eight tokens at a time: their loads are in flight together.
          var j = 0u;
          for (; j + 8u <= n; j += 8u) {
            let t0 = base + j;
            let v0 = ring_v(bh, t0, c); let v1 = ring_v(bh, t0 + 1u, c); let v2 = ring_v(bh, t0 + 2u, c);
            let v3 = ring_v(bh, t0 + 3u, c); let v4 = ring_v(bh, t0 + 4u, c); let v5 = ring_v(bh, t0 + 5u, c);
            let v6 = ring_v(bh, t0 + 6u, c); let v7 = ring_v(bh, t0 + 7u, c);
            a += (p_at(j) * v0 + p_at(j + 1u) * v1 + p_at(j + 2u) * v2 + p_at(j + 3u) * v3) +
              (p_at(j + 4u) * v4 + p_at(j + 5u) * v5 + p_at(j + 6u) * v6 + p_at(j + 7u) * v7);
          }
          for (; j < n; j++) { a += p_at(j) * ring_v(bh, base + j, c); }
          acc[u] = a;
        }
      }
    }
    workgroupBarrier();
  }
  if (SPLIT) {
    let po = (((qb * QROWS + r) * NH + h) * NS + z) * (D + 2u);
    for (var u = 0u; u < ${dpt}u; u++) {
      let c = li * ${dpt}u + u;
      if (c < D) { out[po + c] = acc[u]; }
    }
    if (li == 0u) { out[po + D] = m; out[po + D + 1u] = l; }
    return;
  }
  for (var u = 0u; u < ${dpt}u; u++) {
    let c = li * ${dpt}u + u;
    if (c < D) { out[qo + c] = acc[u] / l; }
  }
}`;
}
/**
 * WGSL of the split-K merge for GEAR attention (`split_merge.ts`), for the split kernel of the same `p` (its
 * keys per split). Bindings: 0 partials; 1 out [B, rowsPerSeq, nH·hd] f32. Grid: (`mergeGroupsX(nH, hd)` of split_merge.ts, rows, B).
 */
export function gearMergeWgsl(p: GearAttentionParams): string {
  const l = p.layout;
  return `${prelude()}
const NH: u32 = ${p.nH}u;
const D: u32 = ${l.hd}u;
const SPLITK: u32 = ${gearSplitKeys(p)}u;
const NS: u32 = ${Math.ceil(l.T / gearSplitKeys(p))}u;
const QROWS: u32 = ${p.rowsPerSeq}u;
@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
${
    splitMergeMain(
      l.hd,
      `let used = row_pos(r) / SPLITK + 1u;
  let base = ((b * QROWS + r) * NH + h) * NS;
  let ob = ((b * QROWS + r) * NH + h) * D;`,
    )
  }`;
}

/** The GEAR attention program (split-K when `p.split`). */
export function gearAttentionProgram(
  device: GPUDevice,
  ring: StepRing,
  p: GearAttentionParams,
): Promise<Program> {
  const label = p.split ? (p.wide ? "gear-attention-split-wide" : "gear-attention-split") : "gear-attention";
  return P.get(device, ring, label, gearAttentionWgsl(p), [
    "read",
    "read",
    "read",
    "read",
    "write",
  ]);
}

/** The split-K merge program of GEAR attention. */
export function gearMergeProgram(
  device: GPUDevice,
  ring: StepRing,
  p: GearAttentionParams,
): Promise<Program> {
  return P.get(device, ring, "gear-attention-merge", gearMergeWgsl(p), ["read", "write"]);
}
