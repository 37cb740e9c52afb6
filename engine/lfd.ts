/**
 * LFD, layer fused decoding for retrieval-augmented generation (Sun et al., arXiv 2508.19614), as reconstructed
 * from the paper's abstract (see docs/retrieval.md, "What is reconstructed"):
 *
 * - the internal knowledge score of layer l, IKS_l = JSD(p_before ‖ p_after), where p_before and p_after are the
 *   next-token distributions read through the final norm and the LM head from the residual stream just before
 *   and just after layer l's MoE block, averaged over the prompt's last positions: how much the layer's experts
 *   (parametric memory) move the prediction;
 * - the fused layer: the one with the lowest IKS among the latter half of the layers (⌊N/2⌋ … N − 2, 0-based;
 *   the last layer is the final output itself), chosen once per request;
 * - decoding with `logits_final + α · logits_l`, where logits_l reads the residual stream after layer l through
 *   the final norm and the LM head.
 *
 * @module
 */

/** Options of layer fused decoding. */
export interface LfdOptions {
  /** "off" (default), "auto" (the layer with the lowest IKS), or a fixed layer index. */
  layer: "off" | "auto" | number;
  /** Weight α of the intermediate layer's logits (default {@linkcode DEFAULT_LFD_ALPHA}). */
  alpha?: number;
  /** Prompt positions, counted from the end, over which IKS is averaged (default 4). */
  positions?: number;
}

/**
 * Default α of the fused layer's logits, chosen by `deno task eval` on the default reader (docs/eval.md): of the
 * sweep 0.1, 0.25, 0.5, 1, α 0.1 lost least on conflicting facts in every run (1.000, 0.990 and 0.980 against
 * 0.960 for α 0.25).
 */
export const DEFAULT_LFD_ALPHA = 0.1;

/** Log-softmax of `row`, in float64. */
export function logSoftmax(row: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(row.length);
  for (let i = 0; i < row.length; i++) out[i] = row[i] - lse;
  return out;
}

/** Jensen–Shannon divergence (nats) between the softmax distributions of two logit rows of equal length. */
export function jensenShannon(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) {
    throw new RangeError(`Cannot compare distributions of ${a.length} and ${b.length} entries`);
  }
  const la = logSoftmax(a), lb = logSoftmax(b);
  let js = 0;
  for (let i = 0; i < la.length; i++) {
    const p = Math.exp(la[i]), q = Math.exp(lb[i]);
    const m = 0.5 * (p + q);
    if (m <= 0) continue;
    const lm = Math.log(m);
    if (p > 0) js += 0.5 * p * (la[i] - lm);
    if (q > 0) js += 0.5 * q * (lb[i] - lm);
  }
  return Math.max(0, js);
}

/**
 * IKS of each layer from the logits read before and after its MoE block: `before`/`after` are
 * [layers, positions, vocab] row-major; the result is [layers], the mean JSD over the positions.
 */
export function internalKnowledgeScores(
  before: Float32Array,
  after: Float32Array,
  layers: number,
  positions: number,
  vocab: number,
): Float64Array {
  const n = layers * positions * vocab;
  if (before.length !== n || after.length !== n) {
    throw new RangeError(
      `Cannot score layers: expected ${layers} × ${positions} × ${vocab} logits, got ${before.length} and ${after.length}`,
    );
  }
  const out = new Float64Array(layers);
  for (let l = 0; l < layers; l++) {
    let s = 0;
    for (let p = 0; p < positions; p++) {
      const o = (l * positions + p) * vocab;
      s += jensenShannon(before.subarray(o, o + vocab), after.subarray(o, o + vocab));
    }
    out[l] = s / positions;
  }
  return out;
}

/** The candidate layers of fusion for a model of `numLayers` layers: ⌊N/2⌋ … N − 2 (0-based). */
export function fusionCandidates(numLayers: number): number[] {
  const out: number[] = [];
  for (let l = Math.floor(numLayers / 2); l <= numLayers - 2; l++) out.push(l);
  return out;
}

/** The candidate layer with the lowest IKS (`iks` indexed by layer), or undefined for models under 2 layers. */
export function chooseFusionLayer(iks: ArrayLike<number>, numLayers: number): number | undefined {
  let best: number | undefined;
  for (const l of fusionCandidates(numLayers)) if (best === undefined || iks[l] < iks[best]) best = l;
  return best;
}

/** `final + α · layer`, element-wise (the fused logits of one position). */
export function fuseLogits(final: Float32Array, layer: Float32Array, alpha: number): Float32Array {
  if (final.length !== layer.length) throw new RangeError("Cannot fuse logits rows of different lengths");
  const out = new Float32Array(final.length);
  for (let i = 0; i < out.length; i++) out[i] = final[i] + alpha * layer[i];
  return out;
}

/** Validates `o` and fills defaults; throws RangeError/TypeError naming the bad field. */
export function resolveLfdOptions(
  o: LfdOptions | undefined,
  numLayers: number,
): { layer: "off" | "auto" | number; alpha: number; positions: number } {
  const layer = o?.layer ?? "off";
  if (layer !== "off" && layer !== "auto") {
    if (!Number.isInteger(layer) || layer < 0 || layer >= numLayers - 1) {
      throw new RangeError(
        `Cannot use layer fused decoding: layer must be "off", "auto" or an integer in [0, ${
          numLayers - 2
        }], got ${JSON.stringify(layer)}`,
      );
    }
  }
  const alpha = o?.alpha ?? DEFAULT_LFD_ALPHA;
  if (!Number.isFinite(alpha)) {
    throw new RangeError(`Cannot use layer fused decoding: alpha ${alpha} is not finite`);
  }
  const positions = o?.positions ?? 4;
  if (!Number.isInteger(positions) || positions < 1) {
    throw new RangeError(
      `Cannot use layer fused decoding: positions must be a positive integer, got ${positions}`,
    );
  }
  return { layer, alpha, positions };
}
