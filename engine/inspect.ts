/**
 * Inspection of a prompt's prefill for the retrieval gate and for layer fused decoding: the next-token logits of
 * the last position, the router's statistics per MoE layer, and (when asked) the internal knowledge score of each
 * candidate layer of fusion. This file holds the CPU computation, the reference of the GPU one.
 *
 * @module
 */

import type { CpuDecoder } from "./cpu_decoder.ts";
import { fusionCandidates, jensenShannon } from "./lfd.ts";
import type { InspectOptions, PromptInspection } from "./types.ts";

/**
 * Entropy (nats) of softmax(row) and the margin p₁ − p₂ between its two largest probabilities: the router
 * statistics of one token over `row` (E router logits).
 */
export function routerRowStats(row: ArrayLike<number>): { entropy: number; margin: number } {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  let h = 0, p1 = 0, p2 = 0;
  for (let i = 0; i < row.length; i++) {
    const p = Math.exp(row[i] - max) / sum;
    if (p > 0) h -= p * Math.log(p);
    if (p > p1) {
      p2 = p1;
      p1 = p;
    } else if (p > p2) p2 = p;
  }
  return { entropy: h, margin: p1 - p2 };
}

/** Validates inspection options; returns the positions of IKS (0 when not asked). */
export function iksPositionsOf(options: InspectOptions | undefined, promptLength: number): number {
  const p = options?.iksPositions ?? 0;
  if (!Number.isInteger(p) || p < 0) {
    throw new RangeError(`Cannot inspect the prompt: iksPositions must be a non-negative integer, got ${p}`);
  }
  return Math.min(p, promptLength);
}

/** Inspects `ids` on the CPU decoder (one prefill with observers). */
export function inspectCpu(
  decoder: CpuDecoder,
  ids: readonly number[],
  options?: InspectOptions,
): PromptInspection {
  const c = decoder.config, H = c.hiddenSize, T = ids.length, L = c.numLayers;
  if (T === 0) throw new RangeError("Cannot inspect an empty prompt");
  const P = iksPositionsOf(options, T);
  const routerEntropy = new Float32Array(L).fill(NaN), routerMargin = new Float32Array(L).fill(NaN);
  const candidates = new Set(P > 0 ? fusionCandidates(L) : []);
  const before = new Map<number, Float32Array>(), after = new Map<number, Float32Array>();
  const cache = decoder.newCache(T);
  const lastLogits = decoder.forward(ids, 0, cache, false, {
    router(l, logits) {
      const E = logits.length / T;
      let h = 0, m = 0;
      for (let t = 0; t < T; t++) {
        const s = routerRowStats(logits.subarray(t * E, (t + 1) * E));
        h += s.entropy;
        m += s.margin;
      }
      routerEntropy[l] = h / T;
      routerMargin[l] = m / T;
    },
    residual(l, stage, x) {
      if (!candidates.has(l)) return;
      (stage === "before_ffn" ? before : after).set(l, x.slice((T - P) * H, T * H));
    },
  });
  const out: PromptInspection = { lastLogits, routerEntropy, routerMargin };
  if (P > 0) {
    const iks = new Float64Array(L).fill(NaN);
    const V = c.vocabSize;
    for (const l of candidates) {
      const a = decoder.headLogits(before.get(l)!, P), b = decoder.headLogits(after.get(l)!, P);
      let s = 0;
      for (let p = 0; p < P; p++) {
        s += jensenShannon(a.subarray(p * V, (p + 1) * V), b.subarray(p * V, (p + 1) * V));
      }
      iks[l] = s / P;
    }
    out.iks = iks;
  }
  return out;
}
