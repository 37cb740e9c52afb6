/**
 * Weight quantization schemes: `w{bits}g{group}` — asymmetric, group-wise along the input dimension, with an
 * f16 scale and an f16 minimum per group (`w = q · scale + min`, q ∈ [0, 2^bits − 1]), or `f16` (unquantized).
 *
 * @module
 */

/** Bit widths the packed format and kernels support. */
export const QUANT_BITS = [2, 3, 4, 8] as const;

/** A quantization scheme of one linear block. */
export type QuantScheme = { kind: "f16" } | { kind: "q"; bits: 2 | 3 | 4 | 8; group: number };

/** Values of one packed u32 word for 2, 4 and 8 bits: 16 × 2-bit, 8 × 4-bit, 4 × 8-bit (3 bits: see below). */
export function valuesPerWord(bits: number): number {
  return Math.floor(32 / bits);
}

/** Values of one 3-bit block: a group's levels are stored in blocks of this many (the last holds the rest). */
export const W3_BLOCK = 128;

/**
 * u32 words of a 3-bit block of `n` values (n ≤ 128, a multiple of 8): ⌈n/16⌉ words of the levels' low two bits
 * (16 per word), then ⌈n/32⌉ words of their high bits (32 per word). A full block is 12 words.
 */
export function w3BlockWords(n: number): number {
  return Math.ceil(n / 16) + Math.ceil(n / 32);
}

/**
 * u32 words one group of `group` values occupies (groups start on a word boundary). 3-bit groups are bit planes
 * in blocks of {@linkcode W3_BLOCK} values ({@linkcode w3BlockWords}): 3 bits per value when the group is a
 * multiple of 32.
 */
export function wordsPerGroup(bits: number, group: number): number {
  if (bits === 3) {
    const full = Math.floor(group / W3_BLOCK), rest = group % W3_BLOCK;
    return full * w3BlockWords(W3_BLOCK) + (rest > 0 ? w3BlockWords(rest) : 0);
  }
  return Math.ceil(group / valuesPerWord(bits));
}

/** Parses "f16", "w4g128", "w2g64" (also "w4" for group 128). */
export function parseScheme(text: string): QuantScheme {
  if (text === "f16") return { kind: "f16" };
  const m = /^w([2348])(?:g(\d+))?$/.exec(text);
  if (!m) {
    throw new RangeError(
      `Cannot parse quantization scheme ${JSON.stringify(text)}: expected f16 or w{2,3,4,8}g{group}`,
    );
  }
  const group = m[2] ? Number(m[2]) : 128;
  if (group < 8 || group % 8 !== 0) {
    throw new RangeError(
      `Cannot use quantization scheme ${text}: the group size must be a multiple of 8, at least 8`,
    );
  }
  return { kind: "q", bits: Number(m[1]) as 2 | 3 | 4 | 8, group };
}

/** The canonical text of a scheme ("f16", "w4g128"). */
export function schemeName(s: QuantScheme): string {
  return s.kind === "f16" ? "f16" : `w${s.bits}g${s.group}`;
}

/**
 * Stored bits per weight of a [rows, cols] matrix in scheme `s`, scales and minimums included (the padding of
 * groups that do not fill their words counted too): f16 = 16; w4g128 = 4.25; w3g128 = 3.25 (12 words of levels
 * and one of parameters per 128 values).
 */
export function storedBitsPerWeight(s: QuantScheme, cols: number): number {
  if (s.kind === "f16") return 16;
  const groups = Math.ceil(cols / s.group);
  const bits = groups * (wordsPerGroup(s.bits, s.group) * 32 + 32);
  return bits / cols;
}
