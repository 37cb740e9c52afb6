/**
 * `np.percentile(values, q)` with NumPy's default "linear" method, reproduced operation by operation so that
 * thresholds computed here equal the ones the Python reference (LLMLingua-2) computes, bit for bit.
 *
 * @module
 */

/** Element type of the array NumPy builds from the values: it decides the precision of the interpolation. */
export type PercentileDtype = "float64" | "float32";

const f32 = Math.fround;

/**
 * The `q`-th percentile of `values`, as `np.percentile(values, q)` (method "linear", NumPy ≥ 2 promotion rules).
 *
 * NumPy computes the virtual index `(n - 1) * (q / 100)` in float64, takes its floor and fraction `t`, and
 * interpolates between the two neighbours `a ≤ b` as `a + (b - a) * t` when `t < 0.5` and as
 * `b - (b - a) * (1 - t)` otherwise. With `dtype` "float32" (an array of `np.float32`) every one of those
 * operations rounds to float32, as NumPy does; the values must then already be float32 numbers.
 *
 * @param values the sample (not modified); any NaN makes the result NaN, as in NumPy
 * @param q the percentile, in [0, 100]
 * @param dtype the element type NumPy would use; default "float64"
 * @returns the percentile
 * @throws {RangeError} when `values` is empty or `q` is outside [0, 100]
 *
 * @example
 * ```ts
 * import { percentile } from "./percentile.ts";
 * percentile([1, 2, 3, 4], 50); // 2.5
 * ```
 */
export function percentile(values: ArrayLike<number>, q: number, dtype: PercentileDtype = "float64"): number {
  const n = values.length;
  if (n === 0) throw new RangeError("Cannot take a percentile of an empty sample");
  const quantile = q / 100;
  if (!(quantile >= 0 && quantile <= 1)) {
    throw new RangeError(`Cannot take percentile ${q}: percentiles must be in the range [0, 100]`);
  }
  const sorted = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (Number.isNaN(v)) return NaN;
    sorted[i] = v;
  }
  sorted.sort();
  const virtual = (n - 1) * quantile;
  if (virtual >= n - 1) return sorted[n - 1];
  if (virtual < 0) return sorted[0];
  const lo = Math.floor(virtual);
  const t = virtual - lo;
  const a = sorted[lo];
  const b = sorted[lo + 1];
  if (dtype === "float64") {
    const diff = b - a;
    return t >= 0.5 ? b - diff * (1 - t) : a + diff * t;
  }
  // float32 array, Python-float weight: NumPy casts the weight to float32 and rounds every step.
  const diff = f32(b - a);
  return t >= 0.5 ? f32(b - f32(diff * f32(1 - t))) : f32(a + f32(diff * f32(t)));
}

/**
 * The percentile LLMLingua-2 uses as the word threshold for a keep rate: `int(100 * (1 - rate) + 1)`, written
 * with the same floating-point expression as the Python code so that it rounds the same way (rate 0.8 gives 20,
 * not 21). Clamped to 100 for rates so small that `1 - rate` rounds to 1 (where NumPy would raise).
 *
 * @param rate the fraction of tokens to keep, in (0, 1]
 * @returns the percentile, an integer in [1, 100]
 *
 * @example
 * ```ts
 * import { tokenThresholdPercentile } from "./percentile.ts";
 * tokenThresholdPercentile(0.33); // 68
 * tokenThresholdPercentile(0.8); // 20
 * ```
 */
export function tokenThresholdPercentile(rate: number): number {
  const reduceRate = Math.max(0, 1 - rate);
  return Math.min(100, Math.trunc(100 * reduceRate + 1));
}
