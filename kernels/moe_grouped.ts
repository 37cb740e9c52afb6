/**
 * Grouped expert GEMMs for prefill: instead of one mat-vec per (token, expert) pair, which reads an expert's
 * weights once for every token routed to it, the pairs are sorted by expert on the GPU and each workgroup
 * multiplies a tile of up to 32 pairs of one expert by a 64-wide slice of that expert's weights, sharing
 * every weight tile across the 32 rows through workgroup memory.
 *
 * - sort: (one workgroup) counts the pairs per expert, writes `perm` (pair ids grouped by expert) and the tile
 *   table `tiles` (expert, first position in perm, rows) with its length — all from the router's ids, no readback;
 * - gate/up: `gu[s] = [gate_e · x_t(s), up_e · x_t(s)]` for every pair s (pre-activation, [pairs, 2I]);
 * - down: `y[s] = down_e · (silu(gate) ⊙ up)`, the activation applied while loading `gu` ([pairs, H]);
 * - combine: `x_t += α · Σ_j w_tj · y[t·k + j]`, in slot order, so the result does not depend on the sort order.
 *
 * @module
 */

import type { DType } from "../engine/types.ts";
import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { checkRowLength, f32Lit, prelude, tileAccumulate, tileAccumulators, weightTileLoad } from "./wgsl.ts";

/** Rows (token-expert pairs) per tile. */
export const TILE_ROWS = 32;
/** Output features per tile. */
export const TILE_COLS = 64;
const BK = 16;

/** Upper bound of the number of tiles for `pairs` pairs over `experts` experts. */
export function maxTiles(pairs: number, experts: number): number {
  return Math.ceil(pairs / TILE_ROWS) + Math.min(experts, pairs);
}

/** Shapes of the sort. */
export interface MoeSortParams {
  /** Experts E. */
  experts: number;
  /** Experts per token k. */
  topK: number;
}

/**
 * WGSL of the sort. Bindings: 0 ids [R, k] u32; 1 perm [R k] u32; 2 tiles [maxTiles] vec4<u32>
 * (expert, start, rows, 0); 3 tile count [4] u32. Grid: 1 workgroup; pairs: `st.rows · k`.
 */
export function moeSortWgsl(p: MoeSortParams): string {
  return `${prelude()}
const E: u32 = ${p.experts}u;
const TOPK: u32 = ${p.topK}u;
const TM: u32 = ${TILE_ROWS}u;
@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read_write> perm: array<u32>;
@group(0) @binding(2) var<storage, read_write> tiles: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> ntiles: array<u32>;
var<workgroup> cnt: array<atomic<u32>, ${p.experts}>;
var<workgroup> cursor: array<atomic<u32>, ${p.experts}>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32) {
  let pairs = st.rows * TOPK;
  for (var e = li; e < E; e += 256u) { atomicStore(&cnt[e], 0u); }
  workgroupBarrier();
  for (var s = li; s < pairs; s += 256u) { atomicAdd(&cnt[min(ids[s], E - 1u)], 1u); }
  workgroupBarrier();
  if (li == 0u) {
    var off = 0u;
    var n = 0u;
    for (var e = 0u; e < E; e++) {
      let c = atomicLoad(&cnt[e]);
      atomicStore(&cursor[e], off);
      for (var t = 0u; t < c; t += TM) {
        tiles[n] = vec4<u32>(e, off + t, min(TM, c - t), 0u);
        n++;
      }
      off += c;
    }
    ntiles[0] = n;
  }
  workgroupBarrier();
  for (var s = li; s < pairs; s += 256u) {
    let at = atomicAdd(&cursor[min(ids[s], E - 1u)], 1u);
    perm[at] = s;
  }
}`;
}

/** Shapes of a grouped GEMM. */
export interface GroupedGemmParams {
  /** "gate_up": A = x rows of the pairs' tokens, N = 2I; "down": A = silu(gate) ⊙ up from gu, N = H. */
  kind: "gate_up" | "down";
  /** Hidden size H. */
  hidden: number;
  /** Expert width I. */
  inter: number;
  /** Experts per token k. */
  topK: number;
  /** Weight precision. */
  dtype: DType;
}

/**
 * WGSL of a grouped GEMM. Bindings: 0 A source (x [R, H] for gate_up, gu [R k, 2I] for down) f32; 1 W
 * ([E, 2I, H] or [E, H, I]); 2 perm; 3 tiles; 4 tile count; 5 out (gu [R k, 2I] or y [R k, H]) f32.
 * Grid: (ceil(N / 64), maxTiles). 256 threads, each 2 rows × 4 features.
 */
export function groupedGemmWgsl(p: GroupedGemmParams): string {
  const up = p.kind === "gate_up";
  const K = up ? p.hidden : p.inter;
  const N = up ? 2 * p.inter : p.hidden;
  checkRowLength(`moe-${p.kind}`, K, p.dtype);
  const f16 = p.dtype === "f16";
  // A tile [TM][BK]: 128 threads load 4 values each (row li / 4, k offset (li % 4) · 4).
  const aLoad = up
    ? `a = vec4<f32>(src[tok * K + k0 + kc], src[tok * K + k0 + kc + 1u], src[tok * K + k0 + kc + 2u], src[tok * K + k0 + kc + 3u]);`
    : `let gb = slot * 2u * K + k0 + kc;
        let g = vec4<f32>(src[gb], src[gb + 1u], src[gb + 2u], src[gb + 3u]);
        let u = vec4<f32>(src[gb + K], src[gb + K + 1u], src[gb + K + 2u], src[gb + K + 3u]);
        a = g / (vec4<f32>(1.0) + exp(-g)) * u;`;
  const wLoad = weightTileLoad(p.dtype, "wbase");
  return `${prelude()}
const K: u32 = ${K}u;
const N: u32 = ${N}u;
const TOPK: u32 = ${p.topK}u;
const TM: u32 = ${TILE_ROWS}u;
const BN: u32 = ${TILE_COLS}u;
const BK: u32 = ${BK}u;
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<${f16 ? "vec4<u32>" : "vec4<f32>"}>;
@group(0) @binding(2) var<storage, read> perm: array<u32>;
@group(0) @binding(3) var<storage, read> tiles: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> ntiles: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
var<workgroup> xt: array<f32, ${TILE_ROWS * BK}>;
var<workgroup> ws: array<f32, ${TILE_COLS * BK}>;
var<workgroup> rowSlot: array<u32, ${TILE_ROWS}>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  if (wg.y >= ntiles[0]) { return; }
  let tile = tiles[wg.y];
  let expert = tile.x;
  let rows = tile.z;
  let n0 = wg.x * BN;
  let wbase = expert * N * K;
  if (li < TM) { rowSlot[li] = select(0xffffffffu, perm[tile.y + li], li < rows); }
  workgroupBarrier();
  let tx = li % 16u;
  let ty = li / 16u;
  ${tileAccumulators(2)}
  for (var k0 = 0u; k0 < K; k0 += BK) {
    if (li < 128u) {
      let row = li / 4u; let kc = (li % 4u) * 4u;
      let slot = rowSlot[row];
      var a = vec4<f32>(0.0);
      if (slot != 0xffffffffu && k0 + kc < K) {
        let tok = slot / TOPK;
        ${aLoad}
      }
      let o = row * BK + kc;
      xt[o] = a.x; xt[o + 1u] = a.y; xt[o + 2u] = a.z; xt[o + 3u] = a.w;
    }
    ${wLoad}
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

/** Shapes of the combine. */
export interface MoeCombineParams {
  /** Hidden size H. */
  hidden: number;
  /** Experts per token k. */
  topK: number;
  /** Residual multiplier α. */
  alpha: number;
}

/**
 * WGSL of the combine. Bindings: 0 y [R k, H] f32; 1 weights [R, k] f32; 2 x [R, H] f32 (read-modify-write).
 * Grid: (ceil(H / 256), rows).
 */
export function moeCombineWgsl(p: MoeCombineParams): string {
  return `${prelude()}
const H: u32 = ${p.hidden}u;
const TOPK: u32 = ${p.topK}u;
@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read> wts: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.y;
  let c = wg.x * 256u + li;
  if (r >= st.rows || c >= H) { return; }
  var s = 0.0;
  for (var j = 0u; j < TOPK; j++) { s += wts[r * TOPK + j] * y[(r * TOPK + j) * H + c]; }
  x[r * H + c] += ${f32Lit(p.alpha)} * s;
}`;
}

/** The sort program. */
export function moeSortProgram(device: GPUDevice, ring: StepRing, p: MoeSortParams): Promise<Program> {
  return P.get(device, ring, "moe-sort", moeSortWgsl(p), ["read", "write", "write", "write"]);
}

/** A grouped GEMM program. */
export function groupedGemmProgram(
  device: GPUDevice,
  ring: StepRing,
  p: GroupedGemmParams,
): Promise<Program> {
  return P.get(device, ring, `moe-${p.kind}`, groupedGemmWgsl(p), [
    "read",
    "read",
    "read",
    "read",
    "read",
    "write",
  ]);
}

/** The combine program. */
export function moeCombineProgram(device: GPUDevice, ring: StepRing, p: MoeCombineParams): Promise<Program> {
  return P.get(device, ring, "moe-combine", moeCombineWgsl(p), ["read", "read", "write"]);
}
