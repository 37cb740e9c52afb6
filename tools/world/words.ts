/**
 * The word lists of `compressor_train.jsonl` and the text they stand for: words are joined by single spaces,
 * except that punctuation attaches to the previous word, exactly as the generator renders documents.
 *
 * @module
 */

const PUNCTUATION = new Set([".", ",", ";", ":", "!", "?"]);

/**
 * The text of `words`, as `tools/world/generate.py` joins them.
 *
 * @example
 * ```ts
 * joinWords(["In", "1883", ",", "Maxsei", "Dorn", "was", "born", "."]); // "In 1883, Maxsei Dorn was born."
 * ```
 */
export function joinWords(words: readonly string[]): string {
  const parts: string[] = [];
  for (const w of words) {
    if (parts.length > 0 && PUNCTUATION.has(w)) parts[parts.length - 1] += w;
    else parts.push(w);
  }
  return parts.join(" ");
}

/**
 * The text of the words whose label is "1": the gold compression of a document.
 *
 * @throws {RangeError} when `labels` does not hold one "0" or "1" per word.
 */
export function keptText(words: readonly string[], labels: string): string {
  if (labels.length !== words.length || !/^[01]*$/.test(labels)) {
    throw new RangeError(
      `Cannot select the kept words: labels must hold one 0 or 1 per word (${words.length} words, ` +
        `${labels.length} labels)`,
    );
  }
  return joinWords(words.filter((_, i) => labels[i] === "1"));
}

/**
 * Whether `phrase` occurs in `text` as whole words (no letter or digit right before or after it).
 *
 * @example
 * ```ts
 * containsPhrase("It has 14500 people.", "4500"); // false
 * containsPhrase("It has 4500 people.", "4500"); // true
 * ```
 */
export function containsPhrase(text: string, phrase: string): boolean {
  if (phrase === "") return false;
  const word = /[\p{L}\p{N}]/u;
  for (let i = text.indexOf(phrase); i >= 0; i = text.indexOf(phrase, i + 1)) {
    const before = i === 0 ? "" : text[i - 1];
    const after = text[i + phrase.length] ?? "";
    if (!word.test(before) && !word.test(after)) return true;
  }
  return false;
}
