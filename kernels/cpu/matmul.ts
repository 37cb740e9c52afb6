/**
 * Matrix product reference for linear layers: `y = x · Wᵀ (+ b)`, the layout of torch's `Linear`.
 *
 * @module
 */

/**
 * `x` [rows, k], `w` [n, k] (row-major, out-features first), optional `bias` [n] → `out` [rows, n].
 * `wOffset` selects a sub-matrix of a stacked weight (e.g. one expert of [E, n, k]). Accumulates in float64.
 */
export function matmulRef(
  x: Float32Array,
  w: Float32Array,
  rows: number,
  n: number,
  k: number,
  options: { bias?: Float32Array; out?: Float32Array; wOffset?: number } = {},
): Float32Array {
  const out = options.out ?? new Float32Array(rows * n);
  const wo = options.wOffset ?? 0;
  const bias = options.bias;
  for (let r = 0; r < rows; r++) {
    const xo = r * k;
    for (let j = 0; j < n; j++) {
      const ro = wo + j * k;
      let s = 0;
      for (let i = 0; i < k; i++) s += x[xo + i] * w[ro + i];
      out[r * n + j] = bias ? s + bias[j] : s;
    }
  }
  return out;
}
