/**
 * Causal multi-head attention reference over a KV cache, with grouped-query heads and an optional sliding
 * window.
 *
 * @module
 */

/**
 * For each query row r at position `positions[r]`, attends over cache positions
 * max(0, pos - window + 1) ..= pos (window 0 = unlimited).
 * - `q` [rows, nH, hd]; `kCache`, `vCache` [nKV, capacity, hd]; query head h reads kv head h / (nH / nKV).
 * - Returns [rows, nH * hd]. Scores are `scale · q·k`, softmax in float64.
 */
export function attentionRef(
  q: Float32Array,
  kCache: Float32Array,
  vCache: Float32Array,
  rows: number,
  positions: ArrayLike<number>,
  dims: { nH: number; nKV: number; hd: number; capacity: number; scale: number; window: number },
): Float32Array {
  const { nH, nKV, hd, capacity, scale, window } = dims;
  const group = nH / nKV;
  const out = new Float32Array(rows * nH * hd);
  const scores = new Float64Array(capacity);
  const acc = new Float64Array(hd);
  for (let r = 0; r < rows; r++) {
    const pos = positions[r];
    const start = window > 0 ? Math.max(0, pos - window + 1) : 0;
    for (let h = 0; h < nH; h++) {
      const kv = Math.floor(h / group);
      const qo = (r * nH + h) * hd;
      let max = -Infinity;
      for (let t = start; t <= pos; t++) {
        const ko = (kv * capacity + t) * hd;
        let s = 0;
        for (let i = 0; i < hd; i++) s += q[qo + i] * kCache[ko + i];
        s *= scale;
        scores[t] = s;
        if (s > max) max = s;
      }
      let z = 0;
      for (let t = start; t <= pos; t++) {
        scores[t] = Math.exp(scores[t] - max);
        z += scores[t];
      }
      acc.fill(0);
      for (let t = start; t <= pos; t++) {
        const p = scores[t] / z;
        const vo = (kv * capacity + t) * hd;
        for (let i = 0; i < hd; i++) acc[i] += p * vCache[vo + i];
      }
      for (let i = 0; i < hd; i++) out[qo + i] = acc[i];
    }
  }
  return out;
}
