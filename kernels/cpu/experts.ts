/**
 * Reference of the SwiGLU experts of a Mixture-of-Experts block: for each row and each chosen expert e with
 * weight w, `out += w · down_e(silu(gate_e(x)) ⊙ up_e(x))`.
 *
 * @module
 */

/** SiLU (swish): x · sigmoid(x). */
export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/**
 * Adds the routed experts' outputs into `out` [rows, H].
 * - `x` [rows, H] normalized input; `ids`, `weights` [rows, k];
 * - `gateUp` [E, 2I, H] (I gate rows then I up rows per expert); `down` [E, H, I].
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
): void {
  const h = new Float64Array(I);
  for (let r = 0; r < rows; r++) {
    const xo = r * H;
    for (let j = 0; j < k; j++) {
      const e = ids[r * k + j];
      const w = weights[r * k + j];
      const gu = e * 2 * I * H;
      for (let i = 0; i < I; i++) {
        let g = 0, u = 0;
        const go = gu + i * H, uo = gu + (I + i) * H;
        for (let c = 0; c < H; c++) {
          g += x[xo + c] * gateUp[go + c];
          u += x[xo + c] * gateUp[uo + c];
        }
        h[i] = Math.fround(silu(Math.fround(g))) * Math.fround(u);
      }
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
