/**
 * The LLMLingua-2 compression algorithm of `PromptCompressor.compress_prompt_llmlingua2` (microsoft/LLMLingua,
 * `llmlingua/prompt_compressor.py` and `llmlingua/utils.py`), step by step and without a model: the classifier is
 * a function that turns encoded chunks into keep probabilities, so the algorithm can be tested with given ones.
 *
 * Faithful to the reference, quirks included: chunks of at most 511 tokens ending at a `chunk_end_tokens` token,
 * each chunk re-tokenised and wrapped with the strings `"[CLS]"`/`"[SEP]"` (which XLM-R's vocabulary maps to
 * `<unk>`), truncated to 512; force tokens that are not one classifier token replaced by `[NEW{i}]`; the
 * token → word merge of each tokenizer family; the no-force word probability that repeats the first piece's
 * probability; word probabilities in float32 like NumPy's; thresholds by `np.percentile` at `int(100 * (1 - rate)
 * + 1)` over words repeated once per cl100k token; chunks of a context joined with `""`, contexts with `"\n\n"`.
 *
 * Where the reference crashes, this port answers: a context or chunk without words, a continuation piece with
 * no word before it, or an empty input give an empty result instead of an exception. One change that does not
 * alter results: with the context-level filter, the kept contexts reuse the probabilities of the first pass
 * instead of running the classifier a second time on the same chunks.
 *
 * @module
 */

import { percentile, type PercentileDtype, tokenThresholdPercentile } from "./percentile.ts";

/** How a tokenizer marks words: XLM-R's SentencePiece `▁` word starts, or BERT's WordPiece `##` continuations. */
export type TokenizerFamily = "xlmr" | "bert";

/** What the algorithm needs of the classifier's tokenizer (`transformers` names in parentheses). */
export interface LinguaTokenizer {
  /** The word-marking convention of the vocabulary. */
  readonly family: TokenizerFamily;
  /** Token strings of `text`, without special tokens (`tokenize`). */
  tokenize(text: string): string[];
  /** The text of a token sequence, by the tokenizer's decoder (`convert_tokens_to_string`). */
  tokensToString(tokens: readonly string[]): string;
  /** The id of a token string, undefined when the vocabulary does not have it. */
  tokenToId(token: string): number | undefined;
  /** The token string of an id (`convert_ids_to_tokens`). */
  idToToken(id: number): string | undefined;
  /** Id given to token strings the vocabulary does not have. */
  readonly unkTokenId: number;
  /** bos/eos/unk/sep/pad/cls/mask token strings: skipped when merging tokens into words. */
  readonly specialTokens: ReadonlySet<string>;
}

/** A chunk as the classifier receives it (`TokenClfDataset`): `[CLS] tokens [SEP]`, cut at the maximum length. */
export interface EncodedChunk {
  /** Token ids, at most `maxSeqLen` of them. */
  ids: Int32Array; // (seq,) int32
  /** 1 where the token takes part (everything but the string `"[PAD]"`), else 0. */
  mask: Uint8Array; // (seq,) uint8
  /** Token strings of the ids, as `convert_ids_to_tokens` gives them. */
  tokens: string[]; // (seq,)
}

/**
 * The classifier: for each chunk, the probability of label 1 ("preserve") at every position, i.e.
 * `softmax(logits)[..., 1]` (float32 values). Positions where `mask` is 0 are ignored.
 */
export type KeepProbabilities = (chunks: readonly EncodedChunk[]) => Promise<Float32Array[]>;

/** Options of {@linkcode compressPromptLlmlingua2}; names and defaults are the Python ones, in camelCase. */
export interface LinguaOptions {
  /** Fraction of cl100k tokens to keep, in (0, 1]; default 0.5. */
  rate?: number;
  /** When > 0, the target number of cl100k tokens; it overrides `rate`. Default -1. */
  targetToken?: number;
  /** Drop whole contexts first (only with two contexts or more). Default false. */
  useContextLevelFilter?: boolean;
  /** Drop words within the kept contexts. Default true. */
  useTokenLevelFilter?: boolean;
  /** Number of contexts to keep at the context level; default -1 (derived from the rate or target). */
  targetContext?: number;
  /** Fraction of contexts to keep; default 1.0 (derived from the rate or target). */
  contextLevelRate?: number;
  /** cl100k tokens to keep at the context level; default -1 (derived from the target). */
  contextLevelTargetToken?: number;
  /** Indices of contexts always kept by the context-level filter. */
  forceContextIds?: readonly number[];
  /** Also return every word with its label (1 kept, 0 dropped). Default false. */
  returnWordLabel?: boolean;
  /** How a word's probability comes from its pieces': "mean" (default) or "first". */
  tokenToWord?: "mean" | "first";
  /** Strings always kept; at most `maxForceToken`. Default none. */
  forceTokens?: readonly string[];
  /** Keep every word containing a decimal digit. Default false. */
  forceReserveDigit?: boolean;
  /** Drop a forced token that repeats the previous one with nothing kept in between. Default false. */
  dropConsecutive?: boolean;
  /** Tokens a chunk prefers to end on. Default `[".", "\n"]`. */
  chunkEndTokens?: readonly string[];
  /** Classifier sequence length; default 512 (chunks hold at most `maxSeqLen - 1` tokens). */
  maxSeqLen?: number;
  /** Most force tokens accepted (the number of `[NEW{i}]` tokens); default 100. */
  maxForceToken?: number;
}

/** A word of the input with its label, as `return_word_label` gives them. */
export interface WordLabel {
  /** The word (for XLM-R without its leading `▁`). */
  word: string;
  /** 1 when the word was kept, 0 when it was dropped. */
  label: 0 | 1;
}

/** The outcome of {@linkcode compressPromptLlmlingua2}. */
export interface LinguaResult {
  /** The compressed contexts joined with `"\n\n"` (`compressed_prompt`). */
  text: string;
  /** One compressed text per kept context, in input order (`compressed_prompt_list`). */
  contexts: string[];
  /** Indices of the contexts kept by the context-level filter (all of them without it). */
  keptContexts: number[];
  /** cl100k tokens of the input contexts. */
  originTokens: number;
  /** cl100k tokens of the compressed contexts (counted per context and summed, as the reference does). */
  compressedTokens: number;
  /** `originTokens / compressedTokens`; 1 when nothing is left (as the reference reports it). */
  ratio: number;
  /** `compressedTokens / originTokens`; 1 for an empty input. */
  rate: number;
  /** Every word with its label, when `returnWordLabel` was set. */
  wordLabels?: WordLabel[];
}

/** The parts the algorithm runs with. */
export interface LinguaParts {
  /** The classifier's tokenizer. */
  tokenizer: LinguaTokenizer;
  /** The classifier. */
  keepProbabilities: KeepProbabilities;
  /** cl100k_base token count of a string (the reference's `oai_tokenizer`). */
  countTokens: (text: string) => number;
}

/** Words of one chunk with their probabilities, as `__merge_token_to_word` + `__token_prob_to_word_prob` give. */
export interface MergedWords {
  /** Words: first piece as is (added tokens restored), continuation pieces without their prefix. */
  words: string[];
  /** Word probabilities with forcing (float32 values, or exactly 1.0). */
  probs: number[];
  /** Whether the reference holds the probability as a Python float (forced pieces only), not a np.float32. */
  pyFloat: boolean[];
  /** Word probabilities without forcing, from the first piece's probability (float32 values). */
  probsNoForce: number[];
}

/** Options of {@linkcode mergeTokensToWords}. */
export interface MergeOptions {
  /** The tokenizer family. */
  family: TokenizerFamily;
  /** Special tokens, skipped. */
  specialTokens: ReadonlySet<string>;
  /** Force tokens. */
  forceTokens: ReadonlySet<string>;
  /** Force tokens replaced by `[NEW{i}]`, in insertion order: original → replacement. */
  tokenMap: ReadonlyMap<string, string>;
  /** Words with a digit get probability 1. */
  forceReserveDigit: boolean;
  /** "mean" or "first". */
  tokenToWord: "mean" | "first";
}

const PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"; // Python's string.punctuation
const DIGIT = /\p{Nd}/u; // Python's re `\d` on str
const SPLIT_WORDS = /[\p{L}\p{N}_]+|[<>=/!@#$%^&*()?":{}|\\`~;_+-]/gu; // `\b\w+\b|[...]` with Unicode `\w`
const f32 = Math.fround;

const DEFAULTS = {
  rate: 0.5,
  targetToken: -1,
  useContextLevelFilter: false,
  useTokenLevelFilter: true,
  targetContext: -1,
  contextLevelRate: 1.0,
  contextLevelTargetToken: -1,
  forceContextIds: [] as readonly number[],
  returnWordLabel: false,
  tokenToWord: "mean" as "mean" | "first",
  forceTokens: [] as readonly string[],
  forceReserveDigit: false,
  dropConsecutive: false,
  chunkEndTokens: [".", "\n"] as readonly string[],
  maxSeqLen: 512,
  maxForceToken: 100,
};

/**
 * Compresses `contexts` with LLMLingua-2 (`compress_prompt_llmlingua2`).
 *
 * @param contexts the texts; several enable the context-level filter
 * @param options the reference's options (see {@linkcode LinguaOptions})
 * @param parts tokenizer, classifier and cl100k counter
 * @returns the compressed text and its statistics
 * @throws {RangeError} when there are more force tokens than `maxForceToken`
 * @throws {TypeError} when a force token is the empty string or `tokenToWord` is unknown
 *
 * @example
 * ```ts ignore
 * import { compressPromptLlmlingua2 } from "./lingua_algorithm.ts";
 * const result = await compressPromptLlmlingua2(["Some long text."], { rate: 0.5 }, parts);
 * ```
 */
export async function compressPromptLlmlingua2(
  contexts: readonly string[],
  options: LinguaOptions,
  parts: LinguaParts,
): Promise<LinguaResult> {
  const o = { ...DEFAULTS, ...withoutUndefined(options) };
  const { tokenizer, countTokens } = parts;
  if (o.forceTokens.length > o.maxForceToken) {
    throw new RangeError(
      `Cannot force ${o.forceTokens.length} tokens: at most ${o.maxForceToken} force tokens are supported`,
    );
  }
  if (o.tokenToWord !== "mean" && o.tokenToWord !== "first") {
    throw new TypeError(`Cannot merge tokens into words by "${o.tokenToWord}": use "mean" or "first"`);
  }
  // --- force tokens that are not one classifier token become [NEW{i}]
  const tokenMap = new Map<string, string>();
  o.forceTokens.forEach((t, i) => {
    if (t.length === 0) throw new TypeError("Cannot force the empty string: force tokens must not be empty");
    if (tokenizer.tokenize(t).length !== 1) tokenMap.set(t, `[NEW${i}]`);
  });
  const chunkEnd = [...o.chunkEndTokens];
  for (let k = 0; k < chunkEnd.length; k++) {
    const mapped = tokenMap.get(chunkEnd[k]);
    if (mapped !== undefined) chunkEnd.push(mapped);
  }
  const ctx: Ctx = {
    tokenizer,
    countTokens,
    keepProbabilities: parts.keepProbabilities,
    maxSeqLen: o.maxSeqLen,
    chunkEnd: new Set(chunkEnd),
    merge: {
      family: tokenizer.family,
      specialTokens: tokenizer.specialTokens,
      forceTokens: new Set(o.forceTokens),
      tokenMap,
      forceReserveDigit: o.forceReserveDigit,
      tokenToWord: o.tokenToWord,
    },
    dropConsecutive: o.dropConsecutive,
  };

  // --- count, substitute force tokens, chunk
  let nOriginal = 0;
  const chunked: string[][] = [];
  for (let text of contexts) {
    nOriginal += countTokens(text);
    for (const [ori, sub] of tokenMap) text = text.split(ori).join(sub);
    chunked.push(chunkContext(text, ctx.chunkEnd, tokenizer, o.maxSeqLen));
  }
  let rate = o.rate;

  if (o.useContextLevelFilter && contexts.length >= 2) {
    // --- context-level filter
    let contextLevelRate = o.contextLevelRate;
    let contextLevelTargetToken = o.contextLevelTargetToken;
    if (o.targetContext <= 0 && contextLevelRate >= 1.0 && contextLevelTargetToken <= 0) {
      if (o.targetToken < 0 && rate < 1.0) contextLevelRate = o.useTokenLevelFilter ? (rate + 1.0) / 2 : rate;
      if (o.targetToken >= 0) {
        contextLevelTargetToken = o.useTokenLevelFilter ? o.targetToken * 2 : o.targetToken;
      }
    }
    if (o.targetContext >= 0) contextLevelRate = Math.min(o.targetContext / contexts.length, 1.0);
    if (contextLevelTargetToken >= 0) {
      contextLevelRate = nOriginal === 0 ? 1.0 : Math.min(contextLevelTargetToken / nOriginal, 1.0);
    }
    const flat = chunked.flat();
    const probs = await classify(ctx, flat);
    const scores: number[] = [];
    const contextWords: string[][] = [];
    let at = 0;
    for (const chunks of chunked) {
      let sum = 0;
      let count = 0;
      const words: string[] = [];
      for (let c = 0; c < chunks.length; c++, at++) {
        const merged = mergeTokensToWords(probs[at].tokens, probs[at].probs, ctx.merge);
        for (let w = 0; w < merged.words.length; w++) {
          sum = count === 0 ? merged.probsNoForce[w] : f32(sum + merged.probsNoForce[w]);
          count++;
          words.push(stripWord(merged.words[w], ctx.merge.family));
        }
      }
      scores.push(count === 0 ? 0 : f32(sum / count));
      contextWords.push(words);
    }
    const threshold = percentile(scores, Math.trunc(100 * (1 - contextLevelRate)), "float32");
    const kept: number[] = [];
    for (let i = 0; i < scores.length; i++) {
      if (scores[i] >= threshold || o.forceContextIds.includes(i)) kept.push(i);
    }
    let nReserved = 0;
    for (const i of kept) for (const c of chunked[i]) nReserved += countTokens(c);
    if (o.targetToken >= 0) rate = nReserved === 0 ? 1.0 : Math.min(o.targetToken / nReserved, 1.0);
    const starts = chunkStarts(chunked);
    const out = await compressContexts(
      ctx,
      kept.map((i) => chunked[i]),
      o.useTokenLevelFilter ? Math.max(0, 1 - rate) : 0,
      kept.map((i) => probs.slice(starts[i], starts[i] + chunked[i].length)),
    );
    const result = finish(out.texts, kept, nOriginal, countTokens);
    if (o.returnWordLabel) {
      const labels: WordLabel[] = [];
      let j = 0;
      for (let i = 0; i < contexts.length; i++) {
        if (kept[j] === i) {
          pushLabels(labels, out.words[j], out.labels[j]);
          j++;
        } else {
          for (const word of contextWords[i]) labels.push({ word, label: 0 });
        }
      }
      result.wordLabels = labels;
    }
    return result;
  }

  // --- token-level filter only
  if (o.targetToken > 0) rate = nOriginal === 0 ? 1.0 : Math.min(o.targetToken / nOriginal, 1.0);
  const out = await compressContexts(ctx, chunked, o.useTokenLevelFilter ? Math.max(0, 1 - rate) : 0);
  const result = finish(out.texts, contexts.map((_, i) => i), nOriginal, countTokens);
  if (o.returnWordLabel) {
    const labels: WordLabel[] = [];
    for (let i = 0; i < out.words.length; i++) pushLabels(labels, out.words[i], out.labels[i]);
    result.wordLabels = labels;
  }
  return result;
}

/**
 * Splits a text into chunks of at most `maxSeqLen - 1` classifier tokens (`__chunk_context`): from `st`, the
 * chunk ends at the last `chunkEnd` token among tokens `st+1 .. st+maxSeqLen-2`, else at `st + maxSeqLen - 2`
 * (inclusive); each chunk is turned back into text by the tokenizer's decoder.
 *
 * @param text the context (force tokens already substituted)
 * @param chunkEnd tokens a chunk prefers to end on
 * @param tokenizer the classifier's tokenizer
 * @param maxSeqLen the classifier's sequence length (512)
 * @returns the chunk texts
 *
 * @example
 * ```ts ignore
 * import { chunkContext } from "./lingua_algorithm.ts";
 * chunkContext("One. Two.", new Set(["."]), tokenizer, 512); // ["One. Two."]
 * ```
 */
export function chunkContext(
  text: string,
  chunkEnd: ReadonlySet<string>,
  tokenizer: LinguaTokenizer,
  maxSeqLen: number,
): string[] {
  const maxLen = maxSeqLen - 2;
  const tokens = tokenizer.tokenize(text);
  const n = tokens.length;
  const chunks: string[] = [];
  let st = 0;
  while (st < n) {
    if (st + maxLen > n - 1) {
      chunks.push(tokenizer.tokensToString(tokens.slice(st, n)));
      break;
    }
    let ed = st + maxLen;
    for (let j = 0; j < ed - st; j++) {
      if (chunkEnd.has(tokens[ed - j])) {
        ed = ed - j;
        break;
      }
    }
    chunks.push(tokenizer.tokensToString(tokens.slice(st, ed + 1)));
    st = ed + 1;
  }
  return chunks;
}

/**
 * Encodes a chunk for the classifier as `TokenClfDataset` does: the chunk is tokenised again, wrapped with the
 * strings `"[CLS]"` and `"[SEP]"` (whatever the tokenizer: XLM-R maps them to `<unk>`), cut to `maxSeqLen`; the
 * mask is 0 only where the token is the string `"[PAD]"`.
 *
 * @param text the chunk
 * @param tokenizer the classifier's tokenizer
 * @param maxSeqLen the classifier's sequence length (512)
 * @returns ids, mask and the token strings of the ids
 *
 * @example
 * ```ts ignore
 * import { encodeChunk } from "./lingua_algorithm.ts";
 * encodeChunk("Hello.", tokenizer, 512).tokens; // ["[CLS]", "Hello", ".", "[SEP]"] with a BERT tokenizer
 * ```
 */
export function encodeChunk(text: string, tokenizer: LinguaTokenizer, maxSeqLen: number): EncodedChunk {
  const pieces = tokenizer.tokenize(text);
  const n = Math.min(pieces.length + 2, maxSeqLen);
  const ids = new Int32Array(n);
  const mask = new Uint8Array(n);
  const tokens = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    const piece = i === 0 ? "[CLS]" : i === pieces.length + 1 ? "[SEP]" : pieces[i - 1];
    const id = tokenizer.tokenToId(piece) ?? tokenizer.unkTokenId;
    ids[i] = id;
    mask[i] = piece === "[PAD]" ? 0 : 1;
    tokens[i] = tokenizer.idToToken(id) ?? piece;
  }
  return { ids, mask, tokens };
}

/**
 * Merges the tokens of a chunk into words with their probabilities (`__merge_token_to_word` followed by
 * `__token_prob_to_word_prob`). Special tokens are skipped. A token starts a word when (BERT) it does not start
 * with `##` or its `#`-stripped form is forced, or (XLM-R) it starts with `▁`, is a substring of
 * `string.punctuation`, or is forced. A forced first piece gets probability 1.0, and with `forceReserveDigit`
 * any piece containing a decimal digit does. Probabilities add up in float32, as NumPy scalars do.
 *
 * @param tokens the token strings of the chunk's active positions
 * @param probs their keep probabilities (float32 values)
 * @param options family, special and force tokens, options
 * @returns the words and their probabilities
 *
 * @example
 * ```ts ignore
 * import { mergeTokensToWords } from "./lingua_algorithm.ts";
 * mergeTokensToWords(["▁Hel", "lo", "."], [0.2, 0.4, 0.9], options).words; // ["▁Hello", "."]
 * ```
 */
export function mergeTokensToWords(
  tokens: readonly string[],
  probs: ArrayLike<number>,
  options: MergeOptions,
): MergedWords {
  const { family, specialTokens, forceTokens, tokenMap, forceReserveDigit } = options;
  const mapped = new Set(tokenMap.values());
  const words: string[] = [];
  const sums: number[] = [];
  const counts: number[] = [];
  const firsts: number[] = [];
  const firstPy: boolean[] = [];
  const allPy: boolean[] = [];
  const noForceFirsts: number[] = [];
  const noForceSums: number[] = [];
  let probNoForce = 0;
  for (let i = 0; i < tokens.length; i++) {
    let token = tokens[i];
    if (specialTokens.has(token)) continue;
    const pure = pureToken(token, family);
    const begins = words.length === 0 ||
      (family === "bert"
        ? forceTokens.has(pure) || mapped.has(pure) || !token.startsWith("##")
        : PUNCTUATION.includes(token) || forceTokens.has(token) || mapped.has(token) ||
          token.startsWith("▁"));
    if (begins) {
      let prob = probs[i];
      let py = false;
      probNoForce = prob;
      if (forceTokens.has(pure) || mapped.has(pure)) {
        prob = 1.0;
        py = true;
      }
      for (const [ori, sub] of tokenMap) token = token.split(sub).join(ori);
      if (forceReserveDigit && DIGIT.test(token)) {
        prob = 1.0;
        py = true;
      }
      words.push(token);
      sums.push(prob);
      counts.push(1);
      firsts.push(prob);
      firstPy.push(py);
      allPy.push(py);
      noForceFirsts.push(probNoForce);
      noForceSums.push(probNoForce);
    } else {
      const w = words.length - 1;
      words[w] += pure;
      const digit = forceReserveDigit && DIGIT.test(token);
      sums[w] = f32(sums[w] + (digit ? 1.0 : probs[i]));
      counts[w]++;
      allPy[w] = allPy[w] && digit;
      // The reference appends the first piece's probability again (a stale variable), not this piece's.
      noForceSums[w] = f32(noForceSums[w] + probNoForce);
    }
  }
  const n = words.length;
  const out: MergedWords = { words, probs: new Array(n), pyFloat: new Array(n), probsNoForce: new Array(n) };
  for (let w = 0; w < n; w++) {
    if (options.tokenToWord === "first") {
      out.probs[w] = firsts[w];
      out.pyFloat[w] = firstPy[w];
      out.probsNoForce[w] = noForceFirsts[w];
    } else {
      out.probs[w] = f32(sums[w] / counts[w]);
      out.pyFloat[w] = allPy[w];
      out.probsNoForce[w] = f32(noForceSums[w] / counts[w]);
    }
  }
  return out;
}

/**
 * Splits text into words the way the reference labels uncompressed text: `re.findall(r'\b\w+\b|[<>=/!@#$%^&*()?":{}|\\`~;_+-]', text)`.
 *
 * @param text the text
 * @returns the words and symbols
 *
 * @example
 * ```ts
 * import { splitWords } from "./lingua_algorithm.ts";
 * splitWords("Hi, it's 3pm!"); // ["Hi", "it", "s", "3pm", "!"]
 * ```
 */
export function splitWords(text: string): string[] {
  return text.match(SPLIT_WORDS) ?? [];
}

// ---------------------------------------------------------------------------------------------------------------

interface Ctx {
  tokenizer: LinguaTokenizer;
  countTokens: (text: string) => number;
  keepProbabilities: KeepProbabilities;
  maxSeqLen: number;
  chunkEnd: ReadonlySet<string>;
  merge: MergeOptions;
  dropConsecutive: boolean;
}

/** Active tokens of a classified chunk and their keep probabilities. */
interface Scored {
  tokens: string[];
  probs: Float32Array; // (active,) float32
}

/** Encodes and classifies chunks; keeps the active (mask 1) positions. */
async function classify(ctx: Ctx, chunks: readonly string[]): Promise<Scored[]> {
  if (chunks.length === 0) return [];
  const encoded = chunks.map((c) => encodeChunk(c, ctx.tokenizer, ctx.maxSeqLen));
  const probs = await ctx.keepProbabilities(encoded);
  if (probs.length !== encoded.length) {
    throw new Error(`Cannot use the classifier output: ${probs.length} results for ${encoded.length} chunks`);
  }
  return encoded.map((e, i) => {
    const p = probs[i];
    if (p.length < e.ids.length) {
      throw new Error(
        `Cannot use the classifier output: ${p.length} probabilities for ${e.ids.length} tokens`,
      );
    }
    let active = 0;
    for (let j = 0; j < e.mask.length; j++) active += e.mask[j];
    if (active === e.mask.length) return { tokens: e.tokens, probs: p.subarray(0, active) };
    const tokens: string[] = [];
    const kept = new Float32Array(active);
    for (let j = 0, k = 0; j < e.mask.length; j++) {
      if (e.mask[j]) {
        tokens.push(e.tokens[j]);
        kept[k++] = p[j];
      }
    }
    return { tokens, probs: kept };
  });
}

interface Compressed {
  texts: string[];
  words: string[][];
  labels: (0 | 1)[][];
}

/** `__compress`: the token-level filter over contexts given as chunk lists. */
async function compressContexts(
  ctx: Ctx,
  contexts: string[][],
  reduceRate: number,
  scoredByContext?: Scored[][],
): Promise<Compressed> {
  const { merge } = ctx;
  const out: Compressed = { texts: [], words: [], labels: [] };
  if (reduceRate <= 0) {
    for (const chunks of contexts) {
      const restored = chunks.map((c) => {
        for (const [ori, sub] of merge.tokenMap) c = c.split(sub).join(ori);
        return c;
      });
      const words = restored.flatMap(splitWords);
      out.texts.push(restored.join(""));
      out.words.push(words);
      out.labels.push(words.map(() => 1 as const));
    }
    return out;
  }
  const scored = scoredByContext ? scoredByContext.flat() : await classify(ctx, contexts.flat());
  const q = tokenThresholdPercentile(1 - reduceRate);
  const qDrop = Math.trunc(100 * reduceRate);
  let at = 0;
  for (const chunks of contexts) {
    const texts: string[] = [];
    const contextWords: string[] = [];
    const contextLabels: (0 | 1)[] = [];
    for (let c = 0; c < chunks.length; c++, at++) {
      const { words, probs, pyFloat } = mergeTokensToWords(scored[at].tokens, scored[at].probs, merge);
      const n = words.length;
      if (n === 0) continue;
      if (ctx.dropConsecutive) {
        const threshold = percentile(probs, qDrop, dtypeOf(pyFloat));
        let between = false;
        let prev: string | undefined;
        for (let i = 0; i < n; i++) {
          if (merge.forceTokens.has(words[i])) {
            if (between) between = false;
            else if (words[i] === prev) {
              probs[i] = 0.0;
              pyFloat[i] = true;
            }
            prev = words[i];
          } else {
            between ||= probs[i] > threshold;
          }
        }
      }
      // Each word counts once per cl100k token of its raw text (with XLM-R's leading ▁).
      const weighted: number[] = [];
      for (let i = 0; i < n; i++) {
        const k = ctx.countTokens(words[i]);
        for (let j = 0; j < k; j++) weighted.push(probs[i]);
      }
      const keep: string[] = [];
      if (weighted.length > 0) {
        const threshold = percentile(weighted, q, dtypeOf(pyFloat));
        for (let i = 0; i < n; i++) {
          const p = probs[i];
          let label: 0 | 1 = 0;
          if (p > threshold || (threshold === 1.0 && p === threshold)) {
            const repeat = ctx.dropConsecutive && merge.forceTokens.has(words[i]) && keep.length > 0 &&
              keep[keep.length - 1] === words[i];
            if (!repeat) {
              keep.push(words[i]);
              label = 1;
            }
          }
          contextLabels.push(label);
        }
      } else {
        for (let i = 0; i < n; i++) contextLabels.push(0);
      }
      texts.push(keep.length > 0 ? ctx.tokenizer.tokensToString(keep) : "");
      for (const w of words) contextWords.push(stripWord(w, merge.family));
    }
    out.texts.push(texts.join(""));
    out.words.push(contextWords);
    out.labels.push(contextLabels);
  }
  return out;
}

function finish(
  texts: string[],
  kept: number[],
  nOriginal: number,
  countTokens: (text: string) => number,
): LinguaResult {
  let nCompressed = 0;
  for (const t of texts) nCompressed += countTokens(t);
  return {
    text: texts.join("\n\n"),
    contexts: texts,
    keptContexts: kept,
    originTokens: nOriginal,
    compressedTokens: nCompressed,
    ratio: nCompressed === 0 ? 1 : nOriginal / nCompressed,
    rate: nOriginal === 0 ? 1 : nCompressed / nOriginal,
  };
}

function pushLabels(out: WordLabel[], words: readonly string[], labels: readonly (0 | 1)[]): void {
  for (let i = 0; i < words.length; i++) out.push({ word: words[i], label: labels[i] });
}

function chunkStarts(chunked: readonly string[][]): number[] {
  const starts: number[] = [];
  let at = 0;
  for (const c of chunked) {
    starts.push(at);
    at += c.length;
  }
  return starts;
}

/** NumPy makes a float64 array when the list holds any Python float, else a float32 one. */
function dtypeOf(pyFloat: readonly boolean[]): PercentileDtype {
  return pyFloat.includes(true) ? "float64" : "float32";
}

/** `get_pure_token`: `token.lstrip("##")` (every leading `#`) or `token.lstrip("▁")`. */
function pureToken(token: string, family: TokenizerFamily): string {
  const mark = family === "bert" ? "#" : "▁";
  let i = 0;
  while (i < token.length && token[i] === mark) i++;
  return i === 0 ? token : token.slice(i);
}

/** Word labels drop XLM-R's leading `▁` (`words[i].lstrip("▁")`). */
function stripWord(word: string, family: TokenizerFamily): string {
  return family === "xlmr" ? pureToken(word, "xlmr") : word;
}

function withoutUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}
