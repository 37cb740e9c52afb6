/**
 * Dequantizing GEMMs for prefill over packed weight sets (the layout of `qmatvec.ts`: qw words, qp
 * scale/minimum pairs, a meta entry per matrix):
 *
 * - `qgemm`: a linear layer, `y = α(x·Wᵀ + b)` stored or added, W one packed matrix [N, K];
 * - `qGroupedGemm`: the MoE expert projections over the token–expert pairs sorted by expert
 *   (`moe_grouped.ts` builds the tile table on the GPU from the router's ids): every tile belongs to one expert,
 *   whose scheme (2, 3, 4, 8 bits or plain f16) is read from its meta entry, so experts of different bit-widths
 *   run in one dispatch and the branch on the scheme is uniform across the workgroup.
 *
 * Weight tiles are dequantized into workgroup memory (f32) as they are loaded and shared by all rows of the
 * tile. Activations and accumulation are f32 in both decoder precisions.
 *
 * @module
 */

import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { type GroupedGemmParams, TILE_COLS, TILE_ROWS } from "./moe_grouped.ts";
import { qLinearBindings, type QLinearParams } from "./qmatvec.ts";
import { f32Lit, prelude, tileAccumulate, tileAccumulators } from "./wgsl.ts";

/** Inputs per step of the quantized GEMMs. */
const BK = 16;
/** Rows × features of a `qgemm` tile. */
export const QGEMM_BM = 64, QGEMM_BN = 64;

/**
 * WGSL of `qval(m, n, k)`: element (n, k) of the matrix with meta `m`, dequantized (`K` is the row length).
 * Levels are asymmetric: `scale · level + minimum`; bits 16 holds f16 pairs.
 */
function qvalFn(): string {
  return `
fn qval(m: vec4<u32>, n: u32, k: u32) -> f32 {
  let bits = m.x;
  if (bits == 16u) {
    let h = unpack2x16float(qw[m.z + n * (K / 2u) + k / 2u]);
    return select(h.x, h.y, (k & 1u) == 1u);
  }
  let G = m.y;
  let groups = K / G;
  let g = k / G;
  let j = k - g * G;
  let sm = unpack2x16float(qp[m.w + n * groups + g]);
  if (bits == 3u) {
    let q = w3Level(m.z + (n * groups + g) * w3Words(G), G, j);
    return sm.x * f32(q) + sm.y;
  }
  let v = 32u / bits;
  let wpg = (G + v - 1u) / v;
  let word = qw[m.z + (n * groups + g) * wpg + j / v];
  return sm.x * f32(extractBits(word, (j % v) * bits, bits)) + sm.y;
}
// Words of a 3-bit group of G values: blocks of 128 values, 12 words each (the last: ceil(n/16) + ceil(n/32)).
fn w3Words(G: u32) -> u32 {
  let rest = G % 128u;
  return (G / 128u) * 12u + select(0u, (rest + 15u) / 16u + (rest + 31u) / 32u, rest > 0u);
}
// Values j..j+3 (j a multiple of 4) of the 3-bit group of G values starting at word gw, as four 4-bit fields
// (value j + t at bits 4t): places p..p+3 of one octet, whose low bits lie in one low word and high bits in one
// high word (engine/quant/pack.ts), the low bits masked and the high bits shifted in.
fn w3Fields(gw: u32, G: u32, j: u32) -> u32 {
  let i = j % 128u;
  let nb = min(128u, G - (j - i));
  let base = gw + (j / 128u) * 12u;
  let s = i / 32u;
  let o = (i / 8u) % 4u;
  let p = i % 8u;
  let lo = qw[base + 2u * s + o / 2u] >> (4u * p + 2u * (o % 2u));
  let hi = qw[base + (nb + 15u) / 16u + s] >> (4u * p + o);
  return (lo & 0x3333u) | ((hi << 2u) & 0x4444u);
}
// The level of value j of the 3-bit group of G values starting at word gw.
fn w3Level(gw: u32, G: u32, j: u32) -> u32 {
  return (w3Fields(gw, G, j - j % 4u) >> (4u * (j % 4u))) & 7u;
}`;
}

/**
 * WGSL loading the weight tile [BN][BK] (rows n0…, inputs k0…) of matrix `m`, 4 consecutive inputs per thread.
 * For 2, 4 and 8 bits the 4 levels sit in one word (groups are multiples of 8, so k is a multiple of 4 within its
 * group, and 4 divides the levels per word): one word and one (scale, min) load unpack all four; 3-bit levels
 * from two words, one per bit plane.
 */
function qTileLoad(): string {
  return `{
      let row = li / 4u; let kc = (li % 4u) * 4u;
      let n = n0 + row;
      let k = k0 + kc;
      var v4 = vec4<f32>(0.0);
      if (n < N && k < K) {
        let bits = m.x;
        if (bits == 2u || bits == 4u || bits == 8u) {
          let G = m.y;
          let per = 32u / bits;
          let wpg = (G + per - 1u) / per;
          let groups = K / G;
          let g = k / G;
          let j = k - g * G;
          let word = qw[m.z + (n * groups + g) * wpg + j / per];
          let sm = unpack2x16float(qp[m.w + n * groups + g]);
          let sh = (j % per) * bits;
          let mask = (1u << bits) - 1u;
          let lv = vec4<u32>(word >> sh, word >> (sh + bits), word >> (sh + 2u * bits), word >> (sh + 3u * bits)) &
            vec4<u32>(mask);
          v4 = sm.x * vec4<f32>(lv) + vec4<f32>(sm.y);
        } else if (bits == 3u) {
          // 3 bits: the 4 values (j a multiple of 4) from two words.
          let G = m.y;
          let groups = K / G;
          let g = k / G;
          let sm = unpack2x16float(qp[m.w + n * groups + g]);
          let f = w3Fields(m.z + (n * groups + g) * w3Words(G), G, k - g * G);
          let lv = vec4<u32>(f, f >> 4u, f >> 8u, f >> 12u) & vec4<u32>(7u);
          v4 = sm.x * vec4<f32>(lv) + vec4<f32>(sm.y);
        } else {
          for (var j = 0u; j < 4u; j++) {
            if (k + j < K) { v4[j] = qval(m, n, k + j); }
          }
        }
      }
      let o = row * BK + kc;
      ws[o] = v4.x; ws[o + 1u] = v4.y; ws[o + 2u] = v4.z; ws[o + 3u] = v4.w;
    }`;
}

const QBIND = `@group(0) @binding(1) var<storage, read> qw: array<u32>;
@group(0) @binding(2) var<storage, read> qp: array<u32>;
@group(0) @binding(3) var<storage, read> qmeta: array<vec4<u32>>;`;

/**
 * WGSL of the quantized linear GEMM. Bindings: 0 x [R, K] f32; 1 qw; 2 qp; 3 meta (entry 0); (4 bias [N]);
 * y [R, N] f32. Grid: (ceil(N / 64), ceil(rows / 64)); 256 threads, each 4 rows × 4 features.
 */
export function qgemmWgsl(p: QLinearParams): string {
  if (p.k % 4 !== 0) throw new RangeError(`Cannot build qgemm: K = ${p.k} must be a multiple of 4`);
  if (p.normEps !== undefined) {
    throw new RangeError("Cannot build qgemm: a fused RMSNorm is for the mat-vec only");
  }
  const v = p.bias ? "(acc + bias[n])" : "acc";
  const val = p.alpha === 1 ? v : `${f32Lit(p.alpha)} * ${v}`;
  return `${prelude()}
const N: u32 = ${p.n}u;
const K: u32 = ${p.k}u;
const BM: u32 = ${QGEMM_BM}u;
const BN: u32 = ${QGEMM_BN}u;
const BK: u32 = ${BK}u;
@group(0) @binding(0) var<storage, read> xa: array<f32>;
${QBIND}
${p.bias ? "@group(0) @binding(4) var<storage, read> bias: array<f32>;" : ""}
@group(0) @binding(${p.bias ? 5 : 4}) var<storage, read_write> y: array<f32>;
var<workgroup> xt: array<f32, ${QGEMM_BM * BK}>;
var<workgroup> ws: array<f32, ${QGEMM_BN * BK}>;
${qvalFn()}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let n0 = wg.x * BN;
  let m0 = wg.y * BM;
  if (m0 >= st.rows) { return; }
  let m = qmeta[0];
  let tx = li % 16u;
  let ty = li / 16u;
  ${tileAccumulators(4)}
  for (var k0 = 0u; k0 < K; k0 += BK) {
    {
      let row = li / 4u; let kc = (li % 4u) * 4u;
      let r = m0 + row;
      for (var j = 0u; j < 4u; j++) {
        var a = 0.0;
        if (r < st.rows && k0 + kc + j < K) { a = xa[r * K + k0 + kc + j]; }
        xt[row * BK + kc + j] = a;
      }
    }
    ${qTileLoad()}
    workgroupBarrier();
    ${tileAccumulate(4)}
    workgroupBarrier();
  }
  let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
  for (var i = 0u; i < 4u; i++) {
    let r = m0 + ty * 4u + i;
    if (r >= st.rows) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + tx * 4u + j;
      if (n < N) {
        let acc = accs[i][j];
        ${p.mode === "add" ? `y[r * N + n] = y[r * N + n] + ${val};` : `y[r * N + n] = ${val};`}
      }
    }
  }
}`;
}

/** Shapes of a quantized grouped expert GEMM: the plain one's, without a dtype (each expert has its scheme). */
export type QGroupedGemmParams = Omit<GroupedGemmParams, "dtype">;

/**
 * WGSL of the quantized grouped GEMM. Bindings: 0 A source (x [R, H] for gate_up, gu [R k, 2I] for down) f32;
 * 1 qw; 2 qp; 3 meta [E] (expert e's matrix: [2I, H] or [H, I]); 4 perm; 5 tiles; 6 tile count; 7 out
 * (gu [R k, 2I] or y [R k, H]) f32. Grid: (ceil(N / 64), maxTiles). 256 threads, each 2 rows × 4 features.
 */
export function qGroupedGemmWgsl(p: QGroupedGemmParams): string {
  const up = p.kind === "gate_up";
  const K = up ? p.hidden : p.inter;
  const N = up ? 2 * p.inter : p.hidden;
  if (K % 4 !== 0) {
    throw new RangeError(`Cannot build the grouped ${p.kind} GEMM: K = ${K} must be a multiple of 4`);
  }
  const aLoad = up ? `a = src[tok * K + kk];` : `let gb = slot * 2u * K + kk;
          let g = src[gb];
          a = g / (1.0 + exp(-g)) * src[gb + K];`;
  return `${prelude()}
const K: u32 = ${K}u;
const N: u32 = ${N}u;
const TOPK: u32 = ${p.topK}u;
const TM: u32 = ${TILE_ROWS}u;
const BN: u32 = ${TILE_COLS}u;
const BK: u32 = ${BK}u;
@group(0) @binding(0) var<storage, read> src: array<f32>;
${QBIND}
@group(0) @binding(4) var<storage, read> perm: array<u32>;
@group(0) @binding(5) var<storage, read> tiles: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> ntiles: array<u32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
var<workgroup> xt: array<f32, ${TILE_ROWS * BK}>;
var<workgroup> ws: array<f32, ${TILE_COLS * BK}>;
var<workgroup> rowSlot: array<u32, ${TILE_ROWS}>;
${qvalFn()}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  if (wg.y >= ntiles[0]) { return; }
  let tile = tiles[wg.y];
  let rows = tile.z;
  let n0 = wg.x * BN;
  let m = qmeta[tile.x];
  if (li < TM) { rowSlot[li] = select(0xffffffffu, perm[tile.y + li], li < rows); }
  workgroupBarrier();
  let tx = li % 16u;
  let ty = li / 16u;
  ${tileAccumulators(2)}
  for (var k0 = 0u; k0 < K; k0 += BK) {
    {
      // A tile [TM][BK]: 256 threads, 2 values each.
      let row = li / 8u; let kc = (li % 8u) * 2u;
      let slot = rowSlot[row];
      for (var j = 0u; j < 2u; j++) {
        var a = 0.0;
        let kk = k0 + kc + j;
        if (slot != 0xffffffffu && kk < K) {
          let tok = slot / TOPK;
          ${aLoad}
        }
        xt[row * BK + kc + j] = a;
      }
    }
    ${qTileLoad()}
    workgroupBarrier();
    ${tileAccumulate(2)}
    workgroupBarrier();
  }
  let accs = array<vec4<f32>, 2>(acc0, acc1);
  for (var i = 0u; i < 2u; i++) {
    let slot = rowSlot[ty * 2u + i];
    if (slot == 0xffffffffu) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + tx * 4u + j;
      if (n < N) { out[slot * N + n] = accs[i][j]; }
    }
  }
}`;
}

/** The quantized linear GEMM program. */
export function qgemmProgram(device: GPUDevice, ring: StepRing, p: QLinearParams): Promise<Program> {
  return P.get(device, ring, "qgemm", qgemmWgsl(p), qLinearBindings(p));
}

/** The quantized grouped GEMM program. */
export function qGroupedGemmProgram(
  device: GPUDevice,
  ring: StepRing,
  p: QGroupedGemmParams,
): Promise<Program> {
  return P.get(device, ring, `q-moe-${p.kind}`, qGroupedGemmWgsl(p), [
    "read",
    "read",
    "read",
    "read",
    "read",
    "read",
    "read",
    "write",
  ]);
}
