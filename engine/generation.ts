/**
 * What generation means independently of the backend: option validation, stop rules (end-of-sequence ids,
 * stop ids, stop strings, max tokens, cancellation) and statistics. Backends only produce raw token batches
 * through a {@linkcode TokenSource}; the surplus of a batch past a stop is discarded here.
 *
 * @module
 */

import type { SamplingParams } from "../kernels/cpu/sampling.ts";
import { ContextOverflowError } from "./errors.ts";
import type { FinishReason, GenerateOptions, GenerationStats, ModelTokenizer } from "./types.ts";

/** Generation options after validation and defaults. */
export interface ResolvedGenerateOptions {
  /** Most new tokens (already clamped to the context left). */
  maxTokens: number;
  /** Sampler parameters. */
  sampling: SamplingParams;
  /** Ids that end generation and are not returned. */
  stopIds: Set<number>;
  /** Strings that end generation once the decoded text contains them. */
  stopStrings: string[];
  /** Decode steps per GPU submission; 0 = adaptive. */
  tokensPerSubmit: number;
  /** Cancellation. */
  signal: AbortSignal | undefined;
  /** Layer fused decoding with a fixed layer ("auto" is resolved by the model before generation). */
  lfd?: { layer: number; alpha: number };
}

/** A backend's raw token producer: yields the new tokens of `ids` in batches, sampling with `options`. */
export interface TokenSource {
  /**
   * Yields batches of new token ids (in order). It may produce more than the caller keeps; the caller stops
   * iterating (calling `return()`) when it has enough, and the source must then release what it holds.
   */
  produce(ids: readonly number[], options: ResolvedGenerateOptions): AsyncGenerator<ArrayLike<number>>;
}

const DEFAULT_MAX_TOKENS = 128;

/** Validates `options` for a prompt of `promptLength` tokens and a context of `contextLength`. */
export function resolveGenerateOptions(
  options: GenerateOptions | undefined,
  promptLength: number,
  contextLength: number,
  tokenizer: Pick<ModelTokenizer, "eosTokenIds">,
): ResolvedGenerateOptions {
  const o = options ?? {};
  const maxTokens = o.maxTokens ?? DEFAULT_MAX_TOKENS;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) {
    throw new RangeError(`Cannot generate: maxTokens must be a non-negative integer, got ${maxTokens}`);
  }
  const temperature = o.temperature ?? 0;
  if (!Number.isFinite(temperature) || temperature < 0) {
    throw new RangeError(`Cannot generate: temperature must be a finite number >= 0, got ${temperature}`);
  }
  const topK = o.topK ?? 0;
  if (!Number.isInteger(topK) || topK < 0) {
    throw new RangeError(`Cannot generate: topK must be a non-negative integer, got ${topK}`);
  }
  const topP = o.topP ?? 1;
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`Cannot generate: topP must be in (0, 1], got ${topP}`);
  const seed = o.seed ?? 0;
  if (!Number.isInteger(seed)) throw new RangeError(`Cannot generate: seed must be an integer, got ${seed}`);
  const tokensPerSubmit = o.tokensPerSubmit ?? 0;
  if (!Number.isInteger(tokensPerSubmit) || tokensPerSubmit < 0 || tokensPerSubmit > 256) {
    throw new RangeError(
      `Cannot generate: tokensPerSubmit must be an integer in [0, 256], got ${tokensPerSubmit}`,
    );
  }
  if (promptLength >= contextLength) {
    throw new ContextOverflowError(
      `Cannot generate: the prompt has ${promptLength} tokens but the context holds ${contextLength}, leaving no room`,
    );
  }
  const stopIds = new Set<number>(o.ignoreEos ? [] : tokenizer.eosTokenIds);
  const stopStrings: string[] = [];
  for (const s of o.stop ?? []) {
    if (typeof s === "number") {
      if (!Number.isInteger(s) || s < 0) {
        throw new RangeError(`Cannot generate: stop id ${s} is not a token id`);
      }
      stopIds.add(s);
    } else if (typeof s === "string") {
      if (s.length > 0) stopStrings.push(s);
    } else {
      throw new TypeError(`Cannot generate: stop entries must be token ids or strings, got ${typeof s}`);
    }
  }
  return {
    maxTokens: Math.min(maxTokens, contextLength - promptLength),
    sampling: { temperature, topK, topP, seed: seed >>> 0 },
    stopIds,
    stopStrings,
    tokensPerSubmit,
    signal: o.signal,
  };
}

/** Throws a RangeError unless every id is an integer token id below `vocabSize`. */
export function checkTokenIds(ids: readonly number[], vocabSize: number): void {
  if (ids.length === 0) throw new RangeError("Cannot run the model: the input has no tokens");
  for (let i = 0; i < ids.length; i++) {
    const t = ids[i];
    if (!Number.isInteger(t) || t < 0 || t >= vocabSize) {
      throw new RangeError(
        `Cannot run the model: token ${i} is ${t}, outside the vocabulary [0, ${vocabSize})`,
      );
    }
  }
}

/**
 * Runs `source` and applies the stop rules, yielding kept tokens one by one. `onDone` receives the stats when
 * the generation ends for any reason (also when the consumer stops early).
 */
export async function* runGeneration(
  source: TokenSource,
  tokenizer: Pick<ModelTokenizer, "decode">,
  ids: readonly number[],
  options: ResolvedGenerateOptions,
  onDone: (stats: GenerationStats) => void,
): AsyncGenerator<number> {
  const t0 = performance.now();
  let ttft = 0;
  const kept: number[] = [];
  let finish: FinishReason = "length";
  // Text already checked for stop strings; only its tail can still start a match.
  const longestStop = Math.max(0, ...options.stopStrings.map((s) => s.length));
  let checkedText = "";
  const gen = options.maxTokens > 0 ? source.produce(ids, options) : undefined;
  try {
    if (!gen) return;
    outer: for await (const batch of gen) {
      if (kept.length === 0) ttft = performance.now() - t0;
      for (let i = 0; i < batch.length; i++) {
        if (options.signal?.aborted) {
          finish = "abort";
          break outer;
        }
        const t = batch[i];
        if (options.stopIds.has(t)) {
          finish = "stop";
          break outer;
        }
        kept.push(t);
        yield t;
        if (longestStop > 0) {
          const text = tokenizer.decode(kept);
          const from = Math.max(0, checkedText.length - longestStop);
          checkedText = text;
          if (options.stopStrings.some((s) => text.indexOf(s, from) >= 0)) {
            finish = "stop";
            break outer;
          }
        }
        if (kept.length >= options.maxTokens) {
          finish = "length";
          break outer;
        }
      }
      if (options.signal?.aborted) {
        finish = "abort";
        break;
      }
    }
  } finally {
    await gen?.return(undefined);
    onDone({
      promptTokens: ids.length,
      completionTokens: kept.length,
      finishReason: finish,
      timeToFirstTokenMs: ttft,
      totalMs: performance.now() - t0,
    });
  }
}
