/**
 * Rotary position embedding reference (the "rotate half" layout of Hugging Face models): for each head, value
 * i and value i + d/2 rotate together by the angle of frequency i at the token's position.
 *
 * @module
 */

/**
 * Rotates `x` [rows, heads, headDim] in place; row r is at position `positions[r]`. `cos`/`sin` are tables
 * [maxPositions, headDim / 2] (see `ropeTables` in engine/config.ts).
 */
export function ropeRef(
  x: Float32Array,
  rows: number,
  heads: number,
  headDim: number,
  positions: ArrayLike<number>,
  cos: Float32Array,
  sin: Float32Array,
): void {
  const half = headDim / 2;
  for (let r = 0; r < rows; r++) {
    const t = positions[r] * half;
    for (let h = 0; h < heads; h++) {
      const o = (r * heads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const a = x[o + i], b = x[o + i + half];
        const c = cos[t + i], s = sin[t + i];
        x[o + i] = a * c - b * s;
        x[o + i + half] = b * c + a * s;
      }
    }
  }
}
