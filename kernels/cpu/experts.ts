/**
 * Reference of the SwiGLU experts of a Mixture-of-Experts block: for each row and each chosen expert e with
 * weight w, `out += w · down_e(silu(gate_e(x)) ⊙ up_e(x))`.
 *
 * @module
 */

import { int8ActivationsRef } from "./act_quant.ts";

/** SiLU (swish): x · sigmoid(x). */
export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/**
 * The gate/up step alone: `h[r·k + j] = silu(gate_e · x_r) ⊙ (up_e · x_r)` for expert e = ids[r·k + j], with
 * gateUp [E, 2I, H] (I gate rows then I up rows per expert). Returns h [rows·k, I] (float64; the gate and up
 * sums rounded to float32 first, as the kernels hold them).
 */
export function gateUpRef(
  x: Float32Array,
  rows: number,
  ids: ArrayLike<number>,
  k: number,
  gateUp: Float32Array,
  H: number,
  I: number,
): Float64Array {
  const h = new Float64Array(rows * k * I);
  for (let slot = 0; slot < rows * k; slot++) {
    const xo = Math.floor(slot / k) * H, gu = ids[slot] * 2 * I * H;
    for (let i = 0; i < I; i++) {
      let g = 0, u = 0;
      const go = gu + i * H, uo = gu + (I + i) * H;
      for (let c = 0; c < H; c++) {
        g += x[xo + c] * gateUp[go + c];
        u += x[xo + c] * gateUp[uo + c];
      }
      h[slot * I + i] = Math.fround(silu(Math.fround(g))) * Math.fround(u);
    }
  }
  return h;
}

/**
 * Adds the routed experts' outputs into `out` [rows, H].
 * - `x` [rows, H] normalized input; `ids`, `weights` [rows, k];
 * - `gateUp` [E, 2I, H] (I gate rows then I up rows per expert); `down` [E, H, I];
 * - `int8Activations`: x and the down projection's inputs rounded to int8 per block of 32 first
 *   ({@linkcode int8ActivationsRef}).
 */
export function expertsRef(
  x: Float32Array,
  rows: number,
  ids: Int32Array,
  weights: Float32Array,
  k: number,
  gateUp: Float32Array,
  down: Float32Array,
  H: number,
  I: number,
  out: Float32Array,
  int8Activations = false,
): void {
  const xin = int8Activations ? int8ActivationsRef(x, H) : x;
  const h64 = gateUpRef(xin, rows, ids, k, gateUp, H, I);
  const hs = int8Activations ? int8ActivationsRef(new Float32Array(h64), I) : h64;
  for (let r = 0; r < rows; r++) {
    const xo = r * H;
    for (let j = 0; j < k; j++) {
      const e = ids[r * k + j];
      const w = weights[r * k + j];
      const h = hs.subarray((r * k + j) * I, (r * k + j + 1) * I);
      const dO = e * H * I;
      for (let c = 0; c < H; c++) {
        let s = 0;
        const ro = dO + c * I;
        for (let i = 0; i < I; i++) s += h[i] * down[ro + i];
        out[xo + c] += w * s;
      }
    }
  }
}
