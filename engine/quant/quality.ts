/**
 * How faithful a quantized model is to its reference: mean KL divergence of next-token distributions,
 * perplexity of both on the same text, and top-1 agreement. Used by the quantization benchmark, its tests and
 * the evaluation.
 *
 * @module
 */

import { logSoftmax } from "../lfd.ts";
import type { Model } from "../types.ts";

/** The comparison of two models on one token sequence. */
export interface QualityReport {
  /** Mean over positions of KL(p_reference ‖ p_test), in nats. */
  meanKl: number;
  /** exp(mean negative log-likelihood of the next token) under the test model. */
  perplexity: number;
  /** The same under the reference model. */
  referencePerplexity: number;
  /** Fraction of positions whose most likely next token is the same under both models. */
  top1Agreement: number;
  /** Positions compared. */
  positions: number;
}

function argmax(a: Float64Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

/**
 * Compares `test` with `reference` on `ids`, cut into consecutive windows of at most `window` tokens (each window
 * is a fresh sequence). Both models must share the vocabulary.
 */
export async function compareModels(
  reference: Model,
  test: Model,
  ids: readonly number[],
  window: number,
): Promise<QualityReport> {
  const vocab = reference.config.vocabSize;
  if (test.config.vocabSize !== vocab) {
    throw new RangeError(
      `Cannot compare models: vocabularies differ (${vocab} vs ${test.config.vocabSize})`,
    );
  }
  if (!Number.isInteger(window) || window < 2) {
    throw new RangeError(`Cannot compare models: window must be an integer >= 2, got ${window}`);
  }
  if (ids.length < 2) throw new RangeError("Cannot compare models: need at least 2 tokens");
  let kl = 0, nllRef = 0, nllTest = 0, agree = 0, positions = 0, predicted = 0;
  for (let start = 0; start < ids.length - 1; start += window) {
    const chunk = ids.slice(start, start + window);
    if (chunk.length < 2) break;
    const [a, b] = [await reference.logits(chunk), await test.logits(chunk)];
    for (let t = 0; t < chunk.length; t++) {
      // logits rows: [chunk.length, vocab]
      const lp = logSoftmax(a.subarray(t * vocab, (t + 1) * vocab));
      const lq = logSoftmax(b.subarray(t * vocab, (t + 1) * vocab));
      let d = 0;
      for (let i = 0; i < vocab; i++) d += Math.exp(lp[i]) * (lp[i] - lq[i]);
      kl += d;
      if (argmax(lp) === argmax(lq)) agree++;
      positions++;
      if (t + 1 < chunk.length) {
        nllRef -= lp[chunk[t + 1]];
        nllTest -= lq[chunk[t + 1]];
        predicted++;
      }
    }
  }
  return {
    meanKl: kl / positions,
    perplexity: Math.exp(nllTest / predicted),
    referencePerplexity: Math.exp(nllRef / predicted),
    top1Agreement: agree / positions,
    positions,
  };
}
