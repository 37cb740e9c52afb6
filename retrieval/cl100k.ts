/**
 * Token counts in OpenAI's `cl100k_base` encoding (what `tiktoken.encoding_for_model("gpt-3.5-turbo")` gives), the
 * unit LLMLingua-2 measures rates and targets in. The ranks ship inside `js-tiktoken`, so this works offline.
 *
 * @module
 */

import { Tiktoken } from "js-tiktoken/lite";
import cl100kRanks from "js-tiktoken/ranks/cl100k_base";

let encoder: Tiktoken | undefined;

/** The shared encoder; built on first use (parsing the ranks takes a few hundred milliseconds). */
function cl100k(): Tiktoken {
  encoder ??= new Tiktoken(cl100kRanks);
  return encoder;
}

/**
 * Encodes `text` with cl100k_base. Special-token text such as `<|endoftext|>` is encoded as ordinary text
 * (Python's tiktoken would raise instead), so any user text can be counted.
 *
 * @param text the text
 * @returns the token ids
 *
 * @example
 * ```ts
 * import { cl100kEncode } from "./cl100k.ts";
 * cl100kEncode("hello world"); // [15339, 1917]
 * ```
 */
export function cl100kEncode(text: string): number[] {
  return cl100k().encode(text, [], []);
}

/**
 * Number of cl100k_base tokens of `text`.
 *
 * @param text the text
 * @returns the token count
 *
 * @example
 * ```ts
 * import { cl100kCount } from "./cl100k.ts";
 * cl100kCount("hello world"); // 2
 * ```
 */
export function cl100kCount(text: string): number {
  return text.length === 0 ? 0 : cl100k().encode(text, [], []).length;
}

/**
 * A counter that remembers the counts of the strings it has seen; LLMLingua-2 counts every word of a prompt, and
 * words repeat. Keep one per request: the cache grows with the number of distinct strings.
 *
 * @returns a function giving the cl100k_base token count of a string
 *
 * @example
 * ```ts
 * import { cachedCl100kCounter } from "./cl100k.ts";
 * const count = cachedCl100kCounter();
 * count("▁the") + count("▁the");
 * ```
 */
export function cachedCl100kCounter(): (text: string) => number {
  const cache = new Map<string, number>();
  return (text) => {
    let n = cache.get(text);
    if (n === undefined) {
      n = cl100kCount(text);
      cache.set(text, n);
    }
    return n;
  };
}
