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

// 256 threads, each reading two vec4s of a 2,048-wide row: the row's loads are in flight together (with 128
// threads reading one f32 at a time, a norm took ~13 µs of a decode step's pass on an H200).
const WG = 256;

/**
 * WGSL of RMSNorm. Bindings: 0 x [R, n] f32, 1 w [n] f32, 2 y [R, n] f32 (declared as vec4 arrays when n is a
 * multiple of 4). Rows: `st.rows`, one workgroup each.
 */
export function rmsNormWgsl(p: RmsNormParams): string {
  const v = p.n % 4 === 0 ? 4 : 1;
  const t = v === 4 ? "vec4<f32>" : "f32";
  return `${prelude()}
const N: u32 = ${p.n}u;
const NV: u32 = ${p.n / v}u;
@group(0) @binding(0) var<storage, read> x: array<${t}>;
@group(0) @binding(1) var<storage, read> w: array<${t}>;
@group(0) @binding(2) var<storage, read_write> y: array<${t}>;
var<workgroup> part: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.x;
  if (r >= st.rows) { return; }
  var s = 0.0;
  for (var i = li; i < NV; i += ${WG}u) { let a = x[r * NV + i]; s += ${v === 4 ? "dot(a, a)" : "a * a"}; }
  part[li] = s;
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k >>= 1u) {
    if (li < k) { part[li] += part[li + k]; }
    workgroupBarrier();
  }
  let inv = inverseSqrt(part[0] / f32(N) + ${f32Lit(p.eps)});
  for (var i = li; i < NV; i += ${WG}u) { y[r * NV + i] = x[r * NV + i] * inv * w[i]; }
}`;
}

/** The RMSNorm program. */
export function rmsNormProgram(device: GPUDevice, ring: StepRing, p: RmsNormParams): Promise<Program> {
  return P.get(device, ring, "rms-norm", rmsNormWgsl(p), ["read", "read", "write"]);
}
