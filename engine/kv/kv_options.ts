/**
 * The `kvCache` option of `loadModel` and of a request: which KV cache a model runs with, validated and with the
 * GEAR authors' defaults filled in.
 *
 * - `f16` / `f32`: the plain cache.
 * - `quant`: KIVI-style backbone — keys quantized per channel over groups of `group` consecutive tokens, values
 *   per token over groups of `group` channels; 2, 4 or 8 bits, asymmetric.
 * - `gear-l`: quant + a rank-`rank` approximation of the quantization residual per KV head.
 * - `gear`: gear-l + sparse outliers (a fraction `outliers` of the entries kept exactly).
 *
 * The last tokens (fewer than `buffer`) stay in full precision; each time `buffer` of them have accumulated
 * they are compressed as a block.
 *
 * @module
 */

/** Kinds of KV cache. */
export const KV_CACHE_MODES = ["f16", "f32", "quant", "gear-l", "gear"] as const;

/** One of {@linkcode KV_CACHE_MODES}. */
export type KvCacheMode = typeof KV_CACHE_MODES[number];

/** The `kvCache` option: a mode and, for the compressed modes, its parameters (all optional). */
export interface KvCacheOptions {
  /** The kind of cache (default: the plain cache in the model's precision). */
  mode?: KvCacheMode;
  /** Bits of a quantized entry: 2, 4 or 8 (default 2). */
  bits?: number;
  /** Tokens per key group and channels per value group: 32, 64 or 128 (default 64). */
  group?: number;
  /** Rank of the low-rank part of blocks compressed during decoding (default 2; gear-l and gear). */
  rank?: number;
  /** Rank of the low-rank part of blocks compressed while reading the prompt (default max(4, rank)). */
  prefillRank?: number;
  /** Power-iteration rounds (default 3). */
  loops?: number;
  /** Fraction of entries kept exactly as outliers, in (0, 0.25] (default 0.02; gear only). */
  outliers?: number;
  /** Tokens kept in full precision before a block is compressed: a multiple of 64 and of group (default 64). */
  buffer?: number;
  /** Seed of the power iteration's start (default 0). */
  seed?: number;
}

/** A validated {@linkcode KvCacheOptions}: every field set; ranks and outliers are 0 where the mode has none. */
export interface ResolvedKvCache {
  /** The kind of cache. */
  mode: KvCacheMode;
  /** Bits of a quantized entry (0 for plain caches). */
  bits: number;
  /** Key token group / value channel group. */
  group: number;
  /** Rank of blocks compressed by single-token steps. */
  rank: number;
  /** Rank of blocks compressed by multi-row (prompt) steps. */
  prefillRank: number;
  /** Power-iteration rounds. */
  loops: number;
  /** Outlier fraction. */
  outliers: number;
  /** Full-precision buffer length (block size). */
  buffer: number;
  /** Power-iteration seed. */
  seed: number;
}

/** Whether `mode` compresses the cache. */
export function isCompressed(mode: KvCacheMode): boolean {
  return mode === "quant" || mode === "gear-l" || mode === "gear";
}

/**
 * Validates `options` and fills in defaults. `plain` is the plain mode used when no mode is given (the model's
 * precision). Throws a TypeError or RangeError that says which field is wrong.
 */
export function resolveKvCache(options: KvCacheOptions | undefined, plain: "f16" | "f32"): ResolvedKvCache {
  const o = options ?? {};
  if (typeof o !== "object" || o === null || Array.isArray(o)) {
    throw new TypeError(`Cannot use the kvCache option: expected an object, got ${JSON.stringify(o)}`);
  }
  const known = new Set([
    "mode",
    "bits",
    "group",
    "rank",
    "prefillRank",
    "loops",
    "outliers",
    "buffer",
    "seed",
  ]);
  for (const k of Object.keys(o)) {
    if (!known.has(k)) {
      throw new TypeError(`Cannot use the kvCache option: unknown field ${JSON.stringify(k)}`);
    }
  }
  const mode = o.mode ?? plain;
  if (!(KV_CACHE_MODES as readonly string[]).includes(mode)) {
    throw new RangeError(
      `Cannot use the kvCache option: mode must be one of ${KV_CACHE_MODES.join(", ")}, got ${
        JSON.stringify(mode)
      }`,
    );
  }
  const int = (name: string, v: number, ok: (v: number) => boolean, what: string) => {
    if (typeof v !== "number" || !Number.isInteger(v) || !ok(v)) {
      throw new RangeError(
        `Cannot use the kvCache option: ${name} must be ${what}, got ${JSON.stringify(v)}`,
      );
    }
    return v;
  };
  if (!isCompressed(mode)) {
    for (const k of Object.keys(o)) {
      if (k !== "mode" && o[k as keyof KvCacheOptions] !== undefined) {
        throw new RangeError(
          `Cannot use the kvCache option: ${k} has no meaning for the plain ${mode} cache`,
        );
      }
    }
    return { mode, bits: 0, group: 0, rank: 0, prefillRank: 0, loops: 0, outliers: 0, buffer: 0, seed: 0 };
  }
  const bits = int("bits", o.bits ?? 2, (v) => v === 2 || v === 4 || v === 8, "2, 4 or 8");
  const group = int("group", o.group ?? 64, (v) => v === 32 || v === 64 || v === 128, "32, 64 or 128");
  const buffer = int(
    "buffer",
    o.buffer ?? Math.max(64, group),
    (v) => v >= 64 && v <= 4096 && v % 64 === 0 && v % group === 0,
    `a multiple of 64 and of the group (${group}) in [64, 4096]`,
  );
  const seed = int("seed", o.seed ?? 0, (v) => v >= 0 && v <= 0xffffffff, "an integer in [0, 2^32)");
  const lowRank = mode !== "quant";
  if (!lowRank) {
    for (const k of ["rank", "prefillRank", "loops", "outliers"] as const) {
      if (o[k] !== undefined) {
        throw new RangeError(`Cannot use the kvCache option: ${k} has no meaning for quant`);
      }
    }
  }
  if (mode === "gear-l" && o.outliers !== undefined) {
    throw new RangeError("Cannot use the kvCache option: outliers has no meaning for gear-l (use mode gear)");
  }
  const rank = lowRank ? int("rank", o.rank ?? 2, (v) => v >= 1 && v <= 8, "an integer in [1, 8]") : 0;
  const prefillRank = lowRank
    ? int("prefillRank", o.prefillRank ?? Math.max(4, rank), (v) => v >= 1 && v <= 8, "an integer in [1, 8]")
    : 0;
  const loops = lowRank ? int("loops", o.loops ?? 3, (v) => v >= 1 && v <= 16, "an integer in [1, 16]") : 0;
  let outliers = 0;
  if (mode === "gear") {
    outliers = o.outliers ?? 0.02;
    if (typeof outliers !== "number" || !(outliers > 0 && outliers <= 0.25)) {
      throw new RangeError(
        `Cannot use the kvCache option: outliers must be a fraction in (0, 0.25], got ${
          JSON.stringify(outliers)
        }`,
      );
    }
  }
  if (outliers > 0 && Math.round(outliers * group) > 16) {
    throw new RangeError(
      `Cannot use the kvCache option: outliers ${outliers} keeps more than 16 entries per group of ${group}`,
    );
  }
  return { mode, bits, group, rank, prefillRank, loops, outliers, buffer, seed };
}

/** Whether two resolved caches are the same configuration. */
export function sameKvCache(a: ResolvedKvCache, b: ResolvedKvCache): boolean {
  return a.mode === b.mode && a.bits === b.bits && a.group === b.group && a.rank === b.rank &&
    a.prefillRank === b.prefillRank && a.loops === b.loops && a.outliers === b.outliers &&
    a.buffer === b.buffer && a.seed === b.seed;
}

/** A short name of a resolved cache for logs and tables, e.g. `gear-2 (g64, r4/2, s0.02, buf64)`. */
export function describeKvCache(kv: ResolvedKvCache): string {
  if (!isCompressed(kv.mode)) return kv.mode;
  const parts = [`g${kv.group}`];
  if (kv.mode !== "quant") parts.push(`r${kv.prefillRank}/${kv.rank}`);
  if (kv.mode === "gear") parts.push(`s${kv.outliers}`);
  parts.push(`buf${kv.buffer}`);
  return `${kv.mode}-${kv.bits} (${parts.join(", ")})`;
}
