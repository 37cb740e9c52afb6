/**
 * Mixture-of-Experts router reference: from router logits to the chosen experts and their weights, with the
 * semantics of each architecture (see `RouterMode` in engine/config.ts).
 *
 * @module
 */

import type { RouterMode } from "../../engine/config.ts";

/** The experts chosen for each row and their mixing weights. */
export interface Routing {
  /** [rows, k] expert ids, best first. */
  ids: Int32Array;
  /** [rows, k] weights. */
  weights: Float32Array;
}

/**
 * Routes `rows` rows of `logits` [rows, E] to `k` experts each.
 * - `softmax_topk`: p = softmax(logits) over all E; keep the k largest; if `normalize`, divide by their sum.
 * - `topk_softmax`: keep the k largest logits; weights = softmax over those k.
 * Ties keep the lower expert id first.
 */
export function routeRef(
  logits: Float32Array,
  rows: number,
  E: number,
  k: number,
  mode: RouterMode,
  normalize: boolean,
): Routing {
  const ids = new Int32Array(rows * k);
  const weights = new Float32Array(rows * k);
  const order = new Array<number>(E);
  for (let r = 0; r < rows; r++) {
    const l = logits.subarray(r * E, (r + 1) * E);
    for (let e = 0; e < E; e++) order[e] = e;
    order.sort((a, b) => l[b] - l[a] || a - b);
    let max = -Infinity;
    for (let e = 0; e < E; e++) max = Math.max(max, l[e]);
    if (mode === "softmax_topk") {
      let z = 0;
      for (let e = 0; e < E; e++) z += Math.exp(l[e] - max);
      let kept = 0;
      for (let j = 0; j < k; j++) kept += Math.exp(l[order[j]] - max) / z;
      for (let j = 0; j < k; j++) {
        const p = Math.exp(l[order[j]] - max) / z;
        ids[r * k + j] = order[j];
        weights[r * k + j] = normalize ? p / kept : p;
      }
    } else {
      const top = l[order[0]];
      let z = 0;
      for (let j = 0; j < k; j++) z += Math.exp(l[order[j]] - top);
      for (let j = 0; j < k; j++) {
        ids[r * k + j] = order[j];
        weights[r * k + j] = Math.exp(l[order[j]] - top) / z;
      }
    }
  }
  return { ids, weights };
}
