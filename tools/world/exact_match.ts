/**
 * Exact match of a generated answer against a world question's gold answer and aliases, after the SQuAD
 * normalization: lower case, punctuation removed, the articles a / an / the removed, whitespace collapsed.
 *
 * @module
 */

/**
 * The SQuAD-normalized form of `text`.
 *
 * @example
 * ```ts
 * normalizeAnswer("The Tessel River."); // "tessel river"
 * normalizeAnswer("4,213 m"); // "4213 m"
 * ```
 */
export function normalizeAnswer(text: string): string {
  return text
    .toLowerCase()
    .replace(/[\p{P}\p{S}]/gu, "")
    .replace(/\b(a|an|the)\b/g, " ")
    .replace(/\s+/g, " ")
    .trim();
}

/**
 * Whether `prediction` equals `answer` or one of `aliases` after {@linkcode normalizeAnswer}; an empty
 * prediction never matches.
 *
 * @example
 * ```ts
 * exactMatch("the Ormic Sea", "Ormic Sea"); // true
 * exactMatch("412 kilometres", "412", ["412 km", "412 kilometres"]); // true
 * ```
 */
export function exactMatch(prediction: string, answer: string, aliases: readonly string[] = []): boolean {
  const p = normalizeAnswer(prediction);
  if (p === "") return false;
  return [answer, ...aliases].some((a) => normalizeAnswer(a) === p);
}
