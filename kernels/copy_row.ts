/**
 * Copies the last row of a [rows, n] f32 matrix into an [n] vector: layer fused decoding keeps the residual
 * stream of the fused layer for the last position this way, inside a compute pass.
 *
 * @module
 */

import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { prelude } from "./wgsl.ts";

/**
 * WGSL of the copy. Bindings: 0 src [R, n] f32; 1 dst [n] f32. Rows: `st.rows` (row st.rows − 1 is copied).
 * Grid: ceil(n / 256).
 */
export function copyLastRowWgsl(n: number): string {
  if (!Number.isInteger(n) || n <= 0) throw new RangeError(`Cannot copy rows of ${n} values`);
  return `${prelude()}
const N: u32 = ${n}u;
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x;
  if (i >= N || st.rows == 0u) { return; }
  dst[i] = src[(st.rows - 1u) * N + i];
}`;
}

/** CPU reference: the last of `rows` rows of `src` ([rows, n]). */
export function copyLastRowRef(src: Float32Array, rows: number, n: number): Float32Array {
  return src.slice((rows - 1) * n, rows * n);
}

/** The copy program for rows of `n` values. */
export function copyLastRowProgram(device: GPUDevice, ring: StepRing, n: number): Promise<Program> {
  return P.get(device, ring, "copy-last-row", copyLastRowWgsl(n), ["read", "write"]);
}
