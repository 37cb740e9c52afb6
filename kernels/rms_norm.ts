/**
 * RMSNorm over rows: `y[r] = x[r] / sqrt(mean(x[r]²) + eps) · w`, one workgroup per row.
 *
 * @module
 */

import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { f32Lit, prelude } from "./wgsl.ts";

/** Shape and constants of an RMSNorm program. */
export interface RmsNormParams {
  /** Row width. */
  n: number;
  /** Epsilon. */
  eps: number;
}

const WG = 128;

/** WGSL of RMSNorm. Bindings: 0 x [R, n] f32, 1 w [n] f32, 2 y [R, n] f32. Rows: `st.rows`. */
export function rmsNormWgsl(p: RmsNormParams): string {
  return `${prelude()}
const N: u32 = ${p.n}u;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
var<workgroup> part: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.x;
  if (r >= st.rows) { return; }
  var s = 0.0;
  for (var i = li; i < N; i += ${WG}u) { let v = x[r * N + i]; s += v * v; }
  part[li] = s;
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k >>= 1u) {
    if (li < k) { part[li] += part[li + k]; }
    workgroupBarrier();
  }
  let inv = inverseSqrt(part[0] / f32(N) + ${f32Lit(p.eps)});
  for (var i = li; i < N; i += ${WG}u) { y[r * N + i] = x[r * N + i] * inv * w[i]; }
}`;
}

/** The RMSNorm program. */
export function rmsNormProgram(device: GPUDevice, ring: StepRing, p: RmsNormParams): Promise<Program> {
  return P.get(device, ring, "rms-norm", rmsNormWgsl(p), ["read", "read", "write"]);
}
