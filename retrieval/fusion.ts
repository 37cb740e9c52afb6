/**
 * Reciprocal-rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): each ranked list gives an item
 * `weight / (k + rank)` with 1-based ranks, and items are ordered by the sum over the lists. Only ranks matter, so
 * lists with incomparable scores (BM25 and cosine similarity) fuse without calibration.
 *
 * @module
 */

/** Options of {@link reciprocalRankFusion}. */
export interface FusionOptions {
  /** The rank offset k; default 60 (the paper's value). Larger k flattens the weight of top ranks. */
  k?: number;
  /** One weight per list; default 1 each. */
  weights?: readonly number[];
}

/** One fused item. */
export interface Fused<T> {
  /** The item, as it appears in the first list that contains it. */
  item: T;
  /** Σ over lists of weight / (k + rank); in (0, Σ weights / (k + 1)]. */
  score: number;
  /** The item's 1-based rank in each list, undefined where the list does not contain it. */
  ranks: Array<number | undefined>;
}

/** Default rank offset of reciprocal-rank fusion. */
export const DEFAULT_RRF_K = 60;

/**
 * Fuses ranked lists (best first) of items identified by `key`. Within a list only the first occurrence of a key
 * counts. The result is ordered by score, then by the best rank in any list, then by first appearance.
 */
export function reciprocalRankFusion<T>(
  lists: readonly (readonly T[])[],
  key: (item: T) => string,
  options: FusionOptions = {},
): Fused<T>[] {
  const k = options.k ?? DEFAULT_RRF_K;
  if (!Number.isFinite(k) || k < 0) {
    throw new RangeError(`the RRF offset k must be finite and >= 0, got ${k}`);
  }
  const weights = options.weights ?? lists.map(() => 1);
  if (weights.length !== lists.length) {
    throw new RangeError(`got ${weights.length} weights for ${lists.length} lists`);
  }
  const byKey = new Map<string, Fused<T> & { order: number; best: number }>();
  lists.forEach((list, l) => {
    list.forEach((item, index) => {
      const id = key(item);
      let entry = byKey.get(id);
      if (!entry) {
        entry = { item, score: 0, ranks: lists.map(() => undefined), order: byKey.size, best: Infinity };
        byKey.set(id, entry);
      }
      if (entry.ranks[l] !== undefined) return;
      const rank = index + 1;
      entry.ranks[l] = rank;
      entry.score += weights[l] / (k + rank);
      entry.best = Math.min(entry.best, rank);
    });
  });
  return [...byKey.values()]
    .sort((a, b) => b.score - a.score || a.best - b.best || a.order - b.order)
    .map(({ item, score, ranks }) => ({ item, score, ranks }));
}
