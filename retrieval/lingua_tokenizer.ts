/**
 * The classifier's tokenizer in the form the LLMLingua-2 algorithm uses it: `tokenizer.json` run by
 * `@huggingface/tokenizers` (the JavaScript port of the library transformers uses), its decoder as
 * `convert_tokens_to_string`, and the special tokens of `tokenizer_config.json` / `special_tokens_map.json`.
 *
 * The reference adds `[NEW0]`..`[NEW99]` to the tokenizer for force tokens that are not one token. A model exported
 * with them (see `tools/export_compressor_onnx.py`) has them in `tokenizer.json`; for one without, they are
 * virtual tokens here: split out of the text like added tokens, with ids past the vocabulary (which the model
 * receives as the unknown token).
 *
 * @module
 */

import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { ModelLoadError } from "../engine/errors.ts";
import type { LinguaTokenizer, TokenizerFamily } from "./lingua_algorithm.ts";

/** Special token strings of a tokenizer (those that are set). */
export interface SpecialTokenStrings {
  /** Beginning of sequence. */
  bos?: string;
  /** End of sequence. */
  eos?: string;
  /** Unknown token. */
  unk?: string;
  /** Separator. */
  sep?: string;
  /** Padding. */
  pad?: string;
  /** Classification token. */
  cls?: string;
  /** Mask. */
  mask?: string;
}

/** Options of {@linkcode HfLinguaTokenizer}. */
export interface LinguaTokenizerOptions {
  /** The family; default from `tokenizer.json` (WordPiece: "bert"; Unigram or a Metaspace pre-tokenizer: "xlmr"). */
  family?: TokenizerFamily;
  /** How many `[NEW{i}]` tokens exist (virtually, when the vocabulary lacks them); default 100. */
  maxForceToken?: number;
}

const SPECIAL_KEYS = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"] as const;
/** Texts longer than this are tokenised in segments (the JS tokenizer overflows its stack on huge words). */
const SEGMENT_CHARS = 4096;
/** A segment without any usable space is cut at this length. */
const MAX_SEGMENT_CHARS = 16384;
const NEW_TOKEN = /\[NEW(0|[1-9]\d*)\]/g;

/** A Hugging Face tokenizer (`tokenizer.json`) as the LLMLingua-2 algorithm uses it. */
export class HfLinguaTokenizer implements LinguaTokenizer {
  /** The word-marking convention. */
  readonly family: TokenizerFamily;
  /** Id of the unknown token. */
  readonly unkTokenId: number;
  /** Special token strings, skipped when merging words. */
  readonly specialTokens: ReadonlySet<string>;
  /** The special tokens by role. */
  readonly special: SpecialTokenStrings;
  /** Number of ids of the vocabulary (added tokens included); virtual `[NEW{i}]` ids follow it. */
  readonly vocabSize: number;
  /** Id to pad batches with: the pad token's, else 0. */
  readonly padTokenId: number;
  /** Whether `[NEW{i}]` are virtual (the vocabulary lacks them). */
  readonly virtualNewTokens: boolean;
  readonly #tok: Tokenizer;
  readonly #maxNew: number;

  /**
   * Builds the tokenizer from the parsed JSON files.
   *
   * @param tokenizerJson contents of `tokenizer.json`
   * @param config contents of `tokenizer_config.json`, completed with `special_tokens_map.json`
   * @param options family and number of `[NEW{i}]` tokens
   * @throws {ModelLoadError} when the tokenizer cannot be built, has no unknown token, or is of another family
   */
  constructor(
    tokenizerJson: Record<string, unknown>,
    config: Record<string, unknown>,
    options: LinguaTokenizerOptions = {},
  ) {
    try {
      this.#tok = new Tokenizer(alignWithRustTokenizers(tokenizerJson), config);
    } catch (e) {
      throw new ModelLoadError(
        `Cannot build the classifier's tokenizer: ${e instanceof Error ? e.message : e}`,
        {
          cause: e,
        },
      );
    }
    this.family = options.family ?? detectFamily(tokenizerJson);
    this.#maxNew = options.maxForceToken ?? 100;
    const special: SpecialTokenStrings = {};
    for (const key of SPECIAL_KEYS) {
      const v = tokenString(config[`${key}_token`]);
      if (v !== undefined) special[key] = v;
    }
    this.special = special;
    const unk = special.unk ?? (this.family === "bert" ? "[UNK]" : "<unk>");
    const unkId = this.#tok.token_to_id(unk);
    if (unkId === undefined) {
      throw new ModelLoadError(
        `Cannot use the classifier's tokenizer: its unknown token "${unk}" is not in the vocabulary`,
      );
    }
    this.unkTokenId = unkId;
    this.specialTokens = new Set(Object.values(special) as string[]);
    let size = 0;
    for (const id of this.#tok.get_vocab(true).values()) if (id >= size) size = id + 1;
    this.vocabSize = size;
    this.padTokenId = (special.pad !== undefined ? this.#tok.token_to_id(special.pad) : undefined) ?? 0;
    this.virtualNewTokens = this.#tok.token_to_id("[NEW0]") === undefined;
  }

  /**
   * Reads `tokenizer.json`, `tokenizer_config.json` and (optional) `special_tokens_map.json` from `dir`.
   *
   * @param dir the model directory
   * @param options family and number of `[NEW{i}]` tokens
   * @returns the tokenizer
   * @throws {ModelLoadError} when a file is missing or not valid JSON, or the tokenizer cannot be built
   *
   * @example
   * ```ts ignore
   * import { HfLinguaTokenizer } from "./lingua_tokenizer.ts";
   * const tok = await HfLinguaTokenizer.load("fixtures/compressor/bert");
   * tok.tokenize("Hello world");
   * ```
   */
  static async load(dir: string, options: LinguaTokenizerOptions = {}): Promise<HfLinguaTokenizer> {
    const json = await readJson(join(dir, "tokenizer.json"), true);
    const config = await readJson(join(dir, "tokenizer_config.json"), true);
    const map = await readJson(join(dir, "special_tokens_map.json"), false);
    for (const key of SPECIAL_KEYS) config[`${key}_token`] ??= map[`${key}_token`];
    return new HfLinguaTokenizer(json, config, options);
  }

  /**
   * Token strings of `text` without special tokens (`tokenizer.tokenize`). Long texts are tokenised in segments cut
   * before a single space between two non-space characters, which gives the same tokens (pre-tokenizers split
   * there, and SentencePiece pieces start at a `▁`); a stretch of more than 16384 characters without such a space
   * (e.g. Chinese) is cut after a sentence end or line break when it has one, where the tokens may differ.
   */
  tokenize(text: string): string[] {
    if (text.length <= SEGMENT_CHARS) return this.#tokenizeSegment(text);
    const out: string[] = [];
    for (const segment of segments(text)) {
      for (const t of this.#tokenizeSegment(segment)) out.push(t);
    }
    return out;
  }

  #tokenizeSegment(text: string): string[] {
    if (!this.virtualNewTokens || !text.includes("[NEW")) return this.#tok.tokenize(text);
    const out: string[] = [];
    let last = 0;
    for (const m of text.matchAll(NEW_TOKEN)) {
      if (Number(m[1]) >= this.#maxNew) continue;
      if (m.index > last) out.push(...this.#tok.tokenize(text.slice(last, m.index)));
      out.push(m[0]);
      last = m.index + m[0].length;
    }
    if (last < text.length) out.push(...this.#tok.tokenize(text.slice(last)));
    return out;
  }

  /** The text of a token sequence (`convert_tokens_to_string`: the tokenizer's decoder). */
  tokensToString(tokens: readonly string[]): string {
    const decoder = this.#tok.decoder;
    return decoder ? decoder.decode([...tokens]) : tokens.join(" ");
  }

  /** Id of a token string; virtual `[NEW{i}]` get `vocabSize + i`. */
  tokenToId(token: string): number | undefined {
    const id = this.#tok.token_to_id(token);
    if (id !== undefined || !this.virtualNewTokens) return id;
    const m = /^\[NEW(0|[1-9]\d*)\]$/.exec(token);
    return m && Number(m[1]) < this.#maxNew ? this.vocabSize + Number(m[1]) : undefined;
  }

  /** Token string of an id (virtual ids included). */
  idToToken(id: number): string | undefined {
    if (this.virtualNewTokens && id >= this.vocabSize) {
      return id - this.vocabSize < this.#maxNew ? `[NEW${id - this.vocabSize}]` : undefined;
    }
    return this.#tok.id_to_token(id);
  }
}

/**
 * The family of a `tokenizer.json`: "bert" for a WordPiece model, "xlmr" for a Unigram model or a Metaspace
 * pre-tokenizer.
 *
 * @param tokenizerJson contents of `tokenizer.json`
 * @returns the family
 * @throws {ModelLoadError} for other tokenizers (byte-level BPE and the like)
 *
 * @example
 * ```ts
 * import { detectFamily } from "./lingua_tokenizer.ts";
 * detectFamily({ model: { type: "WordPiece" } }); // "bert"
 * ```
 */
export function detectFamily(tokenizerJson: Record<string, unknown>): TokenizerFamily {
  const model = tokenizerJson.model as { type?: unknown } | undefined;
  if (model?.type === "WordPiece") return "bert";
  if (
    model?.type === "Unigram" || JSON.stringify(tokenizerJson.pre_tokenizer ?? null).includes('"Metaspace"')
  ) {
    return "xlmr";
  }
  throw new ModelLoadError(
    `Cannot use a ${
      String(model?.type)
    } tokenizer for LLMLingua-2: it supports WordPiece (BERT) and SentencePiece ` +
      "(XLM-R) vocabularies; pass family to choose one",
  );
}

/**
 * A copy of a `tokenizer.json` whose pre-tokenizer behaves as the Rust `tokenizers` library (which transformers
 * uses) behaves, where the JavaScript port differs:
 *
 * - **Metaspace `split`.** Rust splits the text before every `▁` (`split: true`, the default also when the field
 *   is absent), so a Unigram model runs its Viterbi search word by word. The JavaScript Metaspace ignores `split`
 *   and searches the whole text at once: the path scores then add up over hundreds of pieces, and where two
 *   segmentations of a word score the same (e.g. `0`+`00` and `00`+`0` in `10,000`), rounding of the long sums
 *   picks either one depending on the text before the word. Here such a Metaspace becomes a Sequence of a
 *   non-splitting Metaspace and a Split that cuts before every `▁` (Rust's `MergedWithNext`).
 * - **Legacy `add_prefix_space: false`** (no `prepend_scheme`) means "never" in Rust; the JavaScript port
 *   would prepend `▁` ("always").
 *
 * @param tokenizerJson contents of `tokenizer.json` (not modified)
 * @returns the same object when nothing needs changing, else a copy with a rewritten `pre_tokenizer`
 *
 * @example
 * ```ts
 * import { alignWithRustTokenizers } from "./lingua_tokenizer.ts";
 * const json = alignWithRustTokenizers({ pre_tokenizer: { type: "Metaspace", replacement: "▁", split: true } });
 * (json.pre_tokenizer as { type: string }).type; // "Sequence"
 * ```
 */
export function alignWithRustTokenizers(tokenizerJson: Record<string, unknown>): Record<string, unknown> {
  const pre = tokenizerJson.pre_tokenizer;
  if (typeof pre !== "object" || pre === null) return tokenizerJson;
  const aligned = alignPreTokenizer(pre as Record<string, unknown>);
  return aligned === pre ? tokenizerJson : { ...tokenizerJson, pre_tokenizer: aligned };
}

function alignPreTokenizer(pre: Record<string, unknown>): Record<string, unknown> {
  if (pre.type === "Sequence" && Array.isArray(pre.pretokenizers)) {
    const parts = pre.pretokenizers as Record<string, unknown>[];
    const aligned = parts.map((p) => (typeof p === "object" && p !== null ? alignPreTokenizer(p) : p));
    return aligned.every((p, i) => p === parts[i]) ? pre : { ...pre, pretokenizers: aligned };
  }
  if (pre.type !== "Metaspace") return pre;
  const replacement = typeof pre.replacement === "string" ? pre.replacement : "\u2581";
  const metaspace: Record<string, unknown> = { ...pre, split: false };
  if (pre.prepend_scheme === undefined && pre.add_prefix_space === false) metaspace.prepend_scheme = "never";
  if (pre.split === false) return metaspace.prepend_scheme === pre.prepend_scheme ? pre : metaspace;
  const r = escapeRegExp(replacement);
  // A piece starting at a replacement char and running to the next one, or a first piece before any.
  const split = {
    type: "Split",
    pattern: { Regex: `${r}(?:(?!${r})[\\s\\S])*|(?:(?!${r})[\\s\\S])+` },
    invert: true,
  };
  return { type: "Sequence", pretokenizers: [metaspace, split] };
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Cuts a long text into segments of about {@linkcode SEGMENT_CHARS} characters (see `tokenize`). */
function* segments(text: string): Generator<string> {
  let start = 0;
  while (text.length - start > SEGMENT_CHARS) {
    let cut = -1;
    // A single space between two non-space characters, at or after the target length.
    for (let i = start + SEGMENT_CHARS; i < text.length - 1 && i < start + MAX_SEGMENT_CHARS; i++) {
      if (text[i] === " " && !/\s/.test(text[i - 1]) && !/\s/.test(text[i + 1])) {
        cut = i;
        break;
      }
    }
    if (cut < 0) {
      if (text.length - start <= MAX_SEGMENT_CHARS) break;
      // No space: after the last sentence end or line break, else at the limit (not inside a surrogate pair).
      const window = text.slice(start + SEGMENT_CHARS, start + MAX_SEGMENT_CHARS);
      const m = /[\s\S]*[.!?。！？\n]/.exec(window);
      cut = m ? start + SEGMENT_CHARS + m[0].length : start + MAX_SEGMENT_CHARS;
      if (/[\uDC00-\uDFFF]/.test(text[cut])) cut--;
    }
    yield text.slice(start, cut);
    start = cut;
  }
  yield text.slice(start);
}

function tokenString(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (typeof v === "object" && v !== null && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return undefined;
}

async function readJson(path: string, required: boolean): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!required && e instanceof Deno.errors.NotFound) return {};
    throw new ModelLoadError(`Cannot read ${path}: ${e instanceof Error ? e.message : e}`, {
      file: path,
      cause: e,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ModelLoadError(`Cannot parse ${path}: ${e instanceof Error ? e.message : e}`, {
      file: path,
      cause: e,
    });
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ModelLoadError(`Cannot use ${path}: it is not a JSON object`, { file: path });
  }
  return json as Record<string, unknown>;
}
