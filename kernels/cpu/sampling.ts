/**
 * Token sampling reference. The WebGPU sampler implements the same rules and the same random numbers, so a
 * seed gives the same tokens on both backends (up to float rounding at exact boundaries).
 *
 * Rules: temperature ≤ 0 → arg-max (lowest id on ties). Otherwise l = logits / T; top-k keeps ids whose l is
 * ≥ the k-th largest l; top-p then keeps ids whose l is ≥ the largest threshold t for which the kept mass
 * Σ exp(l - max) over l ≥ t reaches p · Z; a uniform u from {@linkcode uniform}(seed, step) picks the first id
 * (in id order) where the running kept mass exceeds u · (kept mass).
 *
 * @module
 */

/** Sampling parameters in the form the kernels take. */
export interface SamplingParams {
  /** Softmax temperature; ≤ 0 means greedy. */
  temperature: number;
  /** Top-k; 0 disables. */
  topK: number;
  /** Top-p in (0, 1]; 1 disables. */
  topP: number;
  /** Seed (u32). */
  seed: number;
}

/** PCG-style integer hash of a u32 (the same function as the WGSL sampler's). */
export function pcgHash(v: number): number {
  const state = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const word = Math.imul(((state >>> (((state >>> 28) + 4) >>> 0)) ^ state) >>> 0, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

/** The uniform number in [0, 1) used for the token at `step` of a generation seeded with `seed`. */
export function uniform(seed: number, step: number): number {
  return (pcgHash((pcgHash(seed >>> 0) ^ (step >>> 0)) >>> 0) >>> 8) / 16777216;
}

/** Index of the largest value (lowest index on ties). */
export function argmaxRef(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** Samples a token id from `logits` [V] for generation step `step`. */
export function sampleRef(logits: Float32Array, params: SamplingParams, step: number): number {
  const V = logits.length;
  if (params.temperature <= 0 || params.topK === 1) return argmaxRef(logits);
  const l = new Float32Array(V);
  for (let i = 0; i < V; i++) l[i] = Math.fround(logits[i] / params.temperature);
  let max = -Infinity;
  for (let i = 0; i < V; i++) max = Math.max(max, l[i]);
  let threshold = -Infinity;
  if (params.topK > 0 && params.topK < V) {
    const sorted = Float32Array.from(l).sort();
    threshold = sorted[V - params.topK];
  }
  const p = new Float64Array(V);
  let z = 0;
  for (let i = 0; i < V; i++) {
    p[i] = l[i] >= threshold ? Math.exp(l[i] - max) : 0;
    z += p[i];
  }
  if (params.topP < 1) {
    const ids = Array.from({ length: V }, (_, i) => i).filter((i) => p[i] > 0).sort((a, b) => l[b] - l[a]);
    let mass = 0;
    for (let j = 0; j < ids.length; j++) {
      mass += p[ids[j]];
      // Every id with the same value as the one that reaches the mass is kept too (a value threshold).
      if (mass >= params.topP * z) {
        threshold = Math.max(threshold, l[ids[j]]);
        break;
      }
    }
    z = 0;
    for (let i = 0; i < V; i++) {
      if (l[i] < threshold) p[i] = 0;
      z += p[i];
    }
  }
  const target = uniform(params.seed, step) * z;
  let acc = 0;
  let last = 0;
  for (let i = 0; i < V; i++) {
    if (p[i] === 0) continue;
    acc += p[i];
    last = i;
    if (acc > target) return i;
  }
  return last;
}
