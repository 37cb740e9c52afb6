/**
 * Splits a document into chunks of at most a token budget, cut at sentence boundaries, with the last sentences
 * of one chunk repeated at the start of the next (overlap).
 *
 * Token counting is tokenizer-agnostic by default ({@link approxTokenCount}): a run of letters, marks, digits
 * and underscores counts one token per started 6 characters, each CJK character (Han, kana, Hangul) counts one,
 * and every other non-space character (punctuation, symbols, emoji) counts one. On English prose this is within
 * about ±25% of BPE/WordPiece tokenizers and rarely below them. Pass `countTokens` (e.g.
 * `(s) => tokenizer.encode(s).length`) to budget in a real tokenizer's tokens; counts are treated as additive over
 * sentences, which real tokenizers satisfy up to a token or so per boundary.
 *
 * @module
 */

/** Counts the tokens of a piece of text. */
export type TokenCounter = (text: string) => number;

/** Options of {@link chunkText}. */
export interface ChunkOptions {
  /** Token budget of a chunk; default 256. */
  chunkTokens?: number;
  /** Tokens of trailing whole sentences repeated at the start of the next chunk; default 32, below `chunkTokens`. */
  overlapTokens?: number;
  /** Token counter; default {@link approxTokenCount}. */
  countTokens?: TokenCounter;
}

/** One chunk of a document. */
export interface Chunk {
  /** The chunk's text: an exact slice of the document, without leading or trailing white space. */
  text: string;
  /** UTF-16 offset of the chunk's first character in the document. */
  start: number;
  /** UTF-16 offset just past the chunk's last character. */
  end: number;
  /** Tokens by the counter used (sum over the chunk's sentences). */
  tokens: number;
}

/** A span `[start, end)` of UTF-16 offsets into a text. */
export interface Span {
  /** First offset. */
  start: number;
  /** Offset just past the end. */
  end: number;
}

/** Default chunk budget in tokens. */
export const DEFAULT_CHUNK_TOKENS = 256;
/** Default overlap in tokens. */
export const DEFAULT_OVERLAP_TOKENS = 32;

const CJK = "\\p{Script=Han}\\p{Script=Hiragana}\\p{Script=Katakana}\\p{Script=Hangul}";
const PIECE = new RegExp(`[${CJK}]|(?:(?![${CJK}])[\\p{L}\\p{M}\\p{N}_])+|[^\\s\\p{L}\\p{M}\\p{N}_]`, "gu");
const CHARS_PER_WORD_TOKEN = 6;

/** Tokenizer-agnostic token count of `text` (see the module documentation for the rule). */
export function approxTokenCount(text: string): number {
  let tokens = 0;
  for (const match of text.matchAll(PIECE)) {
    const piece = match[0];
    if (piece.length === 1 || !/[\p{L}\p{M}\p{N}_]/u.test(piece[0])) {
      tokens += 1;
    } else {
      let codePoints = 0;
      for (const _ of piece) codePoints++;
      tokens += Math.ceil(codePoints / CHARS_PER_WORD_TOKEN);
    }
  }
  return tokens;
}

// Cut points: a blank line; the end of a Markdown heading line; a line break before a Markdown block (heading,
// list item, quote, fence, table row); sentence-final punctuation (with closing quotes/brackets) before white
// space, except the number of an ordered-list item; CJK sentence-final punctuation.
const BOUNDARY = new RegExp(
  [
    "\\n[ \\t]*\\n\\s*",
    "^[ \\t]*#{1,6}[ \\t][^\\n]*\\n",
    "\\n(?=[ \\t]*(?:#{1,6}\\s|[-*+]\\s|\\d{1,3}[.)]\\s|>|```|\\|))",
    "(?<!^[ \\t]*\\d{1,3})[.!?\u2026]+[\"'\u201d\u2019)\\]]*(?=\\s)",
    "[\u3002\uff01\uff1f]+[\u300d\u300f\u201d\u2019\uff09]*",
  ].join("|"),
  "gmu",
);

/**
 * Sentence spans of `text`, trimmed of white space, in order; empty sentences are dropped. A sentence ends at
 * `.`, `!`, `?` or `…` before white space (but not after the number of an ordered-list item), at `。！？`, at a
 * blank line, at the end of a Markdown heading, or before a Markdown block line (heading, list item, quote,
 * fence, table row). A single line break inside a paragraph does not end a sentence.
 */
export function splitSentences(text: string): Span[] {
  const cuts = [0];
  for (const match of text.matchAll(BOUNDARY)) cuts.push(match.index + match[0].length);
  cuts.push(text.length);
  const spans: Span[] = [];
  for (let i = 0; i + 1 < cuts.length; i++) {
    const span = trim(text, cuts[i], cuts[i + 1]);
    if (span) spans.push(span);
  }
  return spans;
}

/** Splits `text` into chunks; an empty or all-white-space text gives no chunks. */
export function chunkText(text: string, options: ChunkOptions = {}): Chunk[] {
  if (typeof text !== "string") throw new TypeError("chunkText: text must be a string");
  const budget = options.chunkTokens ?? DEFAULT_CHUNK_TOKENS;
  const overlap = options.overlapTokens ?? DEFAULT_OVERLAP_TOKENS;
  const count = options.countTokens ?? approxTokenCount;
  if (!Number.isInteger(budget) || budget < 1) {
    throw new RangeError(`chunkTokens must be a positive integer, got ${budget}`);
  }
  if (!Number.isInteger(overlap) || overlap < 0 || overlap >= budget) {
    throw new RangeError(`overlapTokens must be an integer in [0, chunkTokens = ${budget}), got ${overlap}`);
  }

  // Units: sentences, with sentences over the budget split at word boundaries (and words over the budget cut).
  const units: Array<Span & { tokens: number }> = [];
  for (const sentence of splitSentences(text)) {
    const tokens = count(text.slice(sentence.start, sentence.end));
    if (tokens <= budget) units.push({ ...sentence, tokens });
    else units.push(...splitLong(text, sentence, budget, count));
  }

  const chunks: Chunk[] = [];
  let i = 0;
  while (i < units.length) {
    let j = i;
    let tokens = 0;
    while (j < units.length && (j === i || tokens + units[j].tokens <= budget)) tokens += units[j++].tokens;
    const start = units[i].start;
    const end = units[j - 1].end;
    chunks.push({ text: text.slice(start, end), start, end, tokens });
    if (j === units.length) break;
    // Repeat trailing whole units worth at most `overlap` tokens, but always move forward.
    let k = j;
    let carried = 0;
    while (k - 1 > i && carried + units[k - 1].tokens <= overlap) carried += units[--k].tokens;
    i = k;
  }
  return chunks;
}

function trim(text: string, start: number, end: number): Span | undefined {
  while (start < end && /\s/.test(text[start])) start++;
  while (end > start && /\s/.test(text[end - 1])) end--;
  return start < end ? { start, end } : undefined;
}

/** Splits one over-long sentence into word-boundary pieces of at most `budget` tokens each. */
function splitLong(
  text: string,
  sentence: Span,
  budget: number,
  count: TokenCounter,
): Array<Span & { tokens: number }> {
  const pieces: Array<Span & { tokens: number }> = [];
  const words = /\S+/gu;
  words.lastIndex = sentence.start;
  for (let m = words.exec(text); m && m.index < sentence.end; m = words.exec(text)) {
    const start = m.index;
    const end = Math.min(start + m[0].length, sentence.end);
    const tokens = count(text.slice(start, end));
    if (tokens <= budget) {
      pieces.push({ start, end, tokens });
      continue;
    }
    // A single word over the budget (a URL, base64, a long CJK run): cut into equal code-point slices.
    const codePoints = [...text.slice(start, end)];
    const parts = Math.ceil(tokens / budget);
    const per = Math.ceil(codePoints.length / parts);
    let offset = start;
    for (let p = 0; p < codePoints.length; p += per) {
      const slice = codePoints.slice(p, p + per).join("");
      pieces.push({ start: offset, end: offset + slice.length, tokens: Math.min(budget, count(slice)) });
      offset += slice.length;
    }
  }
  return pieces;
}
