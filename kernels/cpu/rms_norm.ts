/**
 * RMSNorm reference: `y = x / sqrt(mean(x²) + eps) * w`, row by row.
 *
 * @module
 */

/**
 * Normalizes `rows` rows of width `n` of `x` ([rows, n] f32, row-major) into `out` (same shape; may alias `x`).
 * `w` is [n]. Accumulates in float64.
 */
export function rmsNormRef(
  x: Float32Array,
  w: Float32Array,
  eps: number,
  rows: number,
  n: number,
  out: Float32Array = new Float32Array(rows * n),
): Float32Array {
  for (let r = 0; r < rows; r++) {
    const o = r * n;
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x[o + i] * x[o + i];
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) out[o + i] = Math.fround(x[o + i] * inv) * w[i];
  }
  return out;
}
