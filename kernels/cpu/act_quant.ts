/**
 * Activations as an integer dot-product kernel would see them: each row cut into blocks, each block rounded to
 * int8 levels with its own scale (symmetric: `scale = max |x| / 127`, level `round(x / scale)`), as llama.cpp's
 * q8 activations. A quality study's reference (engine/cpu_decoder.ts `int8Activations`); no WebGPU kernel
 * computes this way yet.
 *
 * @module
 */

/**
 * `x` [rows, k] → a new [rows, k] array of its values rounded to int8 levels per block of `block` values of a
 * row (the row's last block may be shorter), each level times its block's scale, in f32. An all-zero block
 * stays zero.
 */
export function int8ActivationsRef(x: Float32Array, k: number, block = 32): Float32Array {
  if (!Number.isInteger(k) || k <= 0 || x.length % k !== 0) {
    throw new RangeError(`Cannot round activations: ${x.length} values are not whole rows of ${k}`);
  }
  if (!Number.isInteger(block) || block <= 0) {
    throw new RangeError(`Cannot round activations: the block ${block} must be a positive integer`);
  }
  const y = new Float32Array(x.length);
  for (let o = 0; o < x.length; o += k) {
    for (let b = 0; b < k; b += block) {
      const end = Math.min(b + block, k);
      let m = 0;
      for (let i = b; i < end; i++) m = Math.max(m, Math.abs(x[o + i]));
      if (m === 0) continue;
      const scale = Math.fround(m / 127);
      for (let i = b; i < end; i++) y[o + i] = Math.fround(Math.round(x[o + i] / scale) * scale);
    }
  }
  return y;
}
