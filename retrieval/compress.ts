/**
 * LLMLingua-2 prompt compression: a token classifier scores every word of the context and the words least worth
 * keeping are dropped until about `rate` of the cl100k tokens remain. {@linkcode loadCompressor} loads a model
 * once; {@linkcode Compressor.compress} compresses per request. {@linkcode compress} uses a shared default
 * compressor: {@linkcode DEFAULT_COMPRESSOR_MODEL}, a small XLM-R token classifier trained on the synthetic world
 * (1.1 M parameters, 4.4 MB, offline; see docs/compression.md).
 *
 * @example
 * ```ts ignore
 * import { loadCompressor } from "./compress.ts";
 * const compressor = await loadCompressor(undefined, { backend: "auto" }); // the default model
 * const out = await compressor.compress(["A long retrieved passage ..."], { rate: 0.33 });
 * console.log(out.text, out.compressedTokens / out.originTokens);
 * await compressor.dispose();
 * ```
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { cachedCl100kCounter } from "./cl100k.ts";
import { compressPromptLlmlingua2, type LinguaOptions, type WordLabel } from "./lingua_algorithm.ts";
import {
  type ClassifierBackend,
  CompressorLoadError,
  loadTokenClassifier,
  type NativeDevice,
  type TokenClassifier,
  type TokenClassifierOptions,
} from "./token_classifier.ts";

const DEFAULT_URL = new URL("../fixtures/compressor/default", import.meta.url);

/**
 * The model {@linkcode loadCompressor} loads without a source: `fixtures/compressor/default`, an XLM-R-architecture
 * token classifier (hidden 128, 3 layers) trained by `tools/train_compressor.py` to keep the fact-bearing words of
 * the synthetic world's documents (held-out token accuracy 0.992). It works offline; for general text use a
 * published LLMLingua-2 model.
 */
export const DEFAULT_COMPRESSOR_MODEL: string = DEFAULT_URL.protocol === "file:"
  ? fileURLToPath(DEFAULT_URL)
  : DEFAULT_URL.href;

/** Options of one compression; the reference's options in camelCase. */
export interface CompressOptions {
  /** Fraction of cl100k tokens to keep, in (0, 1]; default 0.5. */
  rate?: number;
  /** Target number of cl100k tokens (> 0); overrides `rate`. A target above the input keeps everything. */
  targetToken?: number;
  /** Strings always kept, e.g. `["\n", ".", "?", "!"]`; multi-token strings are fine (at most 100). */
  forceTokens?: readonly string[];
  /** Keep every word that contains a digit. Default false. */
  forceReserveDigit?: boolean;
  /** Drop a forced token repeating the previous one with nothing kept between them. Default false. */
  dropConsecutive?: boolean;
  /** With several contexts, drop the least informative contexts first. Default false. */
  useContextLevelFilter?: boolean;
  /** Also return every word with its label. Default false. */
  returnWordLabel?: boolean;
  /** Word probability from its pieces: "mean" (default) or "first". */
  tokenToWord?: "mean" | "first";
  /** Tokens a chunk prefers to end on; default `[".", "\n"]`. */
  chunkEndTokens?: readonly string[];
  /** Contexts the context-level filter always keeps (indices). */
  forceContextIds?: readonly number[];
  /** Contexts the context-level filter keeps (a count); default derived from the rate or target. */
  targetContext?: number;
  /** Fraction of contexts the context-level filter keeps; default derived from the rate or target. */
  contextLevelRate?: number;
  /** cl100k tokens the context-level filter keeps; default derived from the target. */
  contextLevelTargetToken?: number;
  /** Drop words (the token-level filter); default true. */
  useTokenLevelFilter?: boolean;
}

/** What {@linkcode Compressor.compress} made of the contexts. */
export interface CompressResult {
  /** The compressed contexts joined with `"\n\n"`. */
  text: string;
  /** One compressed text per kept context. */
  contexts: string[];
  /** Indices of the kept contexts (all of them unless the context-level filter dropped some). */
  keptContexts: number[];
  /** cl100k tokens of the input. */
  originTokens: number;
  /** cl100k tokens of the compressed contexts. */
  compressedTokens: number;
  /** `compressedTokens / originTokens` (1 for an empty input); the reference prints its inverse as "3.3x". */
  ratio: number;
  /** The rate asked for: `rate`, or `min(targetToken / originTokens, 1)` when a target was given. */
  rate: number;
  /** Every word with its label, with `returnWordLabel`. */
  wordLabels?: WordLabel[];
}

/** Options of {@linkcode loadCompressor}. */
export interface LoadCompressorOptions extends TokenClassifierOptions {
  /** ONNX Runtime build: "native" (onnxruntime-node, needs --allow-ffi), "wasm", or "auto" (default). */
  backend?: ClassifierBackend;
  /** Native execution provider; default "cpu". */
  device?: NativeDevice;
}

/** A loaded LLMLingua-2 compressor; keep it for the life of the service and call {@linkcode dispose} at the end. */
export class Compressor {
  /** The classifier this compressor runs. */
  readonly classifier: TokenClassifier;

  /**
   * Wraps a loaded classifier; {@linkcode loadCompressor} loads one.
   *
   * @param classifier the token classifier
   */
  constructor(classifier: TokenClassifier) {
    this.classifier = classifier;
  }

  /** The ONNX Runtime build in use: "native" or "wasm". */
  get backend(): "native" | "wasm" {
    return this.classifier.backend;
  }

  /**
   * Compresses one text or several contexts (kept in order; the output joins them with `"\n\n"`).
   *
   * @param contexts a text, or a list of contexts
   * @param options rate or target, force tokens, filters
   * @returns the compressed text and its cl100k token counts
   * @throws {TypeError} when `contexts` is not a string or an array of strings, or an option has the wrong type
   * @throws {RangeError} when `rate` is outside (0, 1], `targetToken` is not positive, or there are more than 100
   *   force tokens
   *
   * @example
   * ```ts ignore
   * const out = await compressor.compress("John: So, um, I've been thinking about the project.", { rate: 0.5 });
   * ```
   */
  async compress(
    contexts: string | readonly string[],
    options: CompressOptions = {},
  ): Promise<CompressResult> {
    const list = checkContexts(contexts);
    const lingua = checkOptions(options);
    const result = await compressPromptLlmlingua2(list, lingua, {
      tokenizer: this.classifier.tokenizer,
      keepProbabilities: (chunks) => this.classifier.keepProbabilities(chunks),
      countTokens: cachedCl100kCounter(),
    });
    const rate = lingua.targetToken !== undefined && lingua.targetToken > 0
      ? (result.originTokens === 0 ? 1 : Math.min(lingua.targetToken / result.originTokens, 1))
      : lingua.rate!;
    const out: CompressResult = {
      text: result.text,
      contexts: result.contexts,
      keptContexts: result.keptContexts,
      originTokens: result.originTokens,
      compressedTokens: result.compressedTokens,
      ratio: result.rate,
      rate,
    };
    if (result.wordLabels) out.wordLabels = result.wordLabels;
    return out;
  }

  /** Releases the model. */
  async dispose(): Promise<void> {
    await this.classifier.dispose();
  }
}

/**
 * Loads an LLMLingua-2 compressor: an ONNX token-classification model (a directory in transformers.js layout or a
 * Hugging Face repo id) and its tokenizer. Without a source, {@linkcode DEFAULT_COMPRESSOR_MODEL}.
 *
 * @param source model directory or repo id; default {@linkcode DEFAULT_COMPRESSOR_MODEL}
 * @param options backend ("native" | "wasm" | "auto"), device, dtype, threads, batching, download options
 * @returns the compressor
 * @throws {CompressorLoadError} when the model cannot be loaded or no ONNX Runtime build runs here
 *
 * @example
 * ```ts ignore
 * import { loadCompressor } from "./compress.ts";
 * const compressor = await loadCompressor(undefined, { backend: "wasm" });
 * ```
 */
export async function loadCompressor(
  source: string = DEFAULT_COMPRESSOR_MODEL,
  options: LoadCompressorOptions = {},
): Promise<Compressor> {
  if (source === DEFAULT_COMPRESSOR_MODEL && !(await isDirectory(source))) {
    throw new CompressorLoadError(
      `Cannot load the default compressor: ${source} is missing (it is made by ` +
        "`python3 tools/train_compressor.py`); pass a model directory or repo id",
    );
  }
  return new Compressor(await loadTokenClassifier(source, options));
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

let shared: Promise<Compressor> | undefined;

/**
 * Compresses with the shared default compressor (loaded on first use, backend "auto"), or with
 * `options.compressor` when given.
 *
 * @param contexts a text, or a list of contexts
 * @param options compression options, and optionally the compressor to use
 * @returns the compressed text and its statistics
 *
 * @example
 * ```ts ignore
 * import { compress } from "./compress.ts";
 * const { text, ratio } = await compress(["passage one", "passage two"], { rate: 0.5 });
 * ```
 */
export async function compress(
  contexts: string | readonly string[],
  options: CompressOptions & { compressor?: Compressor } = {},
): Promise<CompressResult> {
  const { compressor, ...rest } = options;
  if (compressor) return await compressor.compress(contexts, rest);
  shared ??= loadCompressor();
  shared.catch(() => (shared = undefined));
  return await (await shared).compress(contexts, rest);
}

function checkContexts(contexts: unknown): string[] {
  if (typeof contexts === "string") return [contexts];
  if (!Array.isArray(contexts)) {
    throw new TypeError(`Cannot compress ${typeof contexts}: give a string or an array of strings`);
  }
  contexts.forEach((c, i) => {
    if (typeof c !== "string") {
      throw new TypeError(`Cannot compress context ${i}: it is a ${typeof c}, not a string`);
    }
  });
  return [...contexts];
}

function checkOptions(o: CompressOptions): LinguaOptions {
  const rate = o.rate ?? 0.5;
  if (typeof rate !== "number" || !(rate > 0 && rate <= 1)) {
    throw new RangeError(`Cannot compress at rate ${rate}: the rate must be in (0, 1]`);
  }
  if (
    o.targetToken !== undefined &&
    !(typeof o.targetToken === "number" && o.targetToken > 0 && isFinite(o.targetToken))
  ) {
    throw new RangeError(`Cannot compress to ${o.targetToken} tokens: the target must be a positive number`);
  }
  if (o.forceTokens !== undefined) {
    if (!Array.isArray(o.forceTokens) || o.forceTokens.some((t) => typeof t !== "string")) {
      throw new TypeError("Cannot use forceTokens: it must be an array of strings");
    }
    if (o.forceTokens.length > 100) {
      throw new RangeError(
        `Cannot force ${o.forceTokens.length} tokens: at most 100 force tokens are supported`,
      );
    }
  }
  for (const key of ["targetContext", "contextLevelRate", "contextLevelTargetToken"] as const) {
    const v = o[key];
    if (v !== undefined && (typeof v !== "number" || Number.isNaN(v))) {
      throw new TypeError(`Cannot use ${key} ${String(v)}: it must be a number`);
    }
  }
  if (o.contextLevelRate !== undefined && !(o.contextLevelRate > 0 && o.contextLevelRate <= 1)) {
    throw new RangeError(`Cannot keep a share ${o.contextLevelRate} of the contexts: it must be in (0, 1]`);
  }
  return { ...o, rate };
}
