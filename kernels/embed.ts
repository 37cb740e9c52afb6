/**
 * Embedding lookup: `x[r] = table[token_r] · multiplier`, where token_r is the r-th prompt id or, in decode
 * steps, the token the sampler wrote into the ring at the previous step (no CPU round trip); in a batched
 * step each row reads its own sequence's ring region.
 *
 * @module
 */

import type { DType } from "../engine/types.ts";
import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { f32Lit, prelude, weightDecl, weightScalarFn } from "./wgsl.ts";

/** Shape and constants of an embedding program. */
export interface EmbedParams {
  /** Hidden size H. */
  hidden: number;
  /** Vocabulary V. */
  vocab: number;
  /** Table precision. */
  dtype: DType;
  /** Scale of the looked-up rows (Granite's embedding_multiplier; 1 elsewhere). */
  multiplier: number;
}

/** WGSL of the embedding lookup. Bindings: 0 table [V, H], 1 ids [R] u32, 2 ring [lanes, ring_stride] u32, 3 x [R, H] f32. */
export function embedWgsl(p: EmbedParams): string {
  return `${prelude()}
const H: u32 = ${p.hidden}u;
const V: u32 = ${p.vocab}u;
${weightDecl(0, "table", p.dtype)}
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> ring: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
${weightScalarFn("table", p.dtype)}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.x;
  if (r >= st.rows) { return; }
  var tok = ids[r];
  if (st.src_ring == 1u) { tok = ring[row_ring_in(r)]; }
  tok = min(tok, V - 1u);
  for (var i = li; i < H; i += 64u) {
    x[r * H + i] = scalar_table(tok * H + i) * ${f32Lit(p.multiplier)};
  }
}`;
}

/** The embedding program (compiled once per device and parameters). */
export function embedProgram(device: GPUDevice, ring: StepRing, p: EmbedParams): Promise<Program> {
  return P.get(device, ring, `embed-${p.dtype}`, embedWgsl(p), ["read", "read", "read", "write"]);
}
