/**
 * WGSL snippets shared by the kernels: how weights and KV-cache entries of each precision are declared and
 * read. f16 data is stored packed two per `u32` (element 2j in the low half) and read with
 * `unpack2x16float`, so the f16 storage paths need no `shader-f16` feature and run on every adapter;
 * arithmetic is always f32.
 *
 * @module
 */

import type { DType } from "../engine/types.ts";
import { STEP_WGSL } from "./gpu.ts";

/** Elements of one vector load of a weight row: 8 f16 (a vec4<u32>) or 4 f32 (a vec4<f32>). */
export function weightChunk(dtype: DType): number {
  return dtype === "f16" ? 8 : 4;
}

/** Throws unless rows of `k` elements can be read in whole chunks of `dtype`. */
export function checkRowLength(label: string, k: number, dtype: DType): void {
  const chunk = weightChunk(dtype);
  if (k % chunk !== 0) {
    throw new RangeError(
      `Cannot build kernel ${label}: row length ${k} is not a multiple of ${chunk} for ${dtype} weights`,
    );
  }
}

/** Declaration of a read-only weight array at `binding`. */
export function weightDecl(binding: number, name: string, dtype: DType): string {
  const t = dtype === "f16" ? "vec4<u32>" : "vec4<f32>";
  return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<${t}>;`;
}

/**
 * A function `dot_<name>(c, x4)`: the dot product of weight chunk `c` of `name` with the 4-vectors of
 * activation array `xs` starting at vec4 index `x4` (one vec4 for f32 chunks, two for f16 chunks).
 */
export function weightDotFn(name: string, dtype: DType, xs: string): string {
  if (dtype === "f16") {
    return `
fn dot_${name}(c: u32, x4: u32) -> f32 {
  let p = ${name}[c];
  let a = vec4<f32>(unpack2x16float(p.x), unpack2x16float(p.y));
  let b = vec4<f32>(unpack2x16float(p.z), unpack2x16float(p.w));
  return dot(a, ${xs}[x4]) + dot(b, ${xs}[x4 + 1u]);
}`;
  }
  return `
fn dot_${name}(c: u32, x4: u32) -> f32 {
  return dot(${name}[c], ${xs}[x4]);
}`;
}

/** A function `scalar_<name>(i)` reading element `i` of a packed weight array (for small, odd reads). */
export function weightScalarFn(name: string, dtype: DType): string {
  if (dtype === "f16") {
    return `
fn scalar_${name}(i: u32) -> f32 {
  let p = ${name}[i / 8u];
  let j = i % 8u;
  var w = p.x;
  if (j >= 6u) { w = p.w; } else if (j >= 4u) { w = p.z; } else if (j >= 2u) { w = p.y; }
  let v = unpack2x16float(w);
  return select(v.x, v.y, (j & 1u) == 1u);
}`;
  }
  return `
fn scalar_${name}(i: u32) -> f32 {
  return ${name}[i / 4u][i % 4u];
}`;
}

/** Header of every kernel: the step uniform. */
export function prelude(): string {
  return STEP_WGSL;
}

/** WGSL `f32` literal of a JS number (always with a decimal point or exponent). */
export function f32Lit(v: number): string {
  if (!Number.isFinite(v)) throw new RangeError(`Cannot write ${v} as a WGSL f32 literal`);
  const s = String(v);
  return /[.eE]/.test(s) ? s : `${s}.0`;
}
