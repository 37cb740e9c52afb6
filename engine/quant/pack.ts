/**
 * The packed layout of a quantized matrix W [rows, cols] (cols a multiple of the group size):
 *
 * | array | shape | dtype | content |
 * | --- | --- | --- | --- |
 * | qweight | [rows, cols / group, wordsPerGroup] | u32 | group g of row r: value j at {@linkcode levelBits}(bits, group, j) |
 * | scales | [rows, cols / group] | f16 | step of each group |
 * | mins | [rows, cols / group] | f16 | value of q = 0 in each group |
 *
 * Dequantized: `W[r, g·group + j] = q · scale[r, g] + min[r, g]`.
 *
 * @module
 */

import { valuesPerWord, W3_BLOCK, w3BlockWords, wordsPerGroup } from "./scheme.ts";

/**
 * The checkpoint format of this layout, as `quantization.json` names it (v1 stored 3-bit levels ten to a word;
 * v2 stores them in bit planes).
 */
export const PACKED_FORMAT = "edgemix-packed-v2";

/** A quantized matrix in the packed layout. */
export interface PackedMatrix {
  /** Rows (output features). */
  rows: number;
  /** Columns (input features). */
  cols: number;
  /** Bit width. */
  bits: number;
  /** Group size. */
  group: number;
  /** [rows, cols / group, wordsPerGroup] u32. */
  qweight: Uint32Array;
  /** [rows, cols / group] f16 bit patterns. */
  scales: Uint16Array;
  /** [rows, cols / group] f16 bit patterns. */
  mins: Uint16Array;
}

/**
 * Where value `j` of a group of `group` values keeps its level: 2, 4 and 8 bits in word ⌊j / v⌋ at bit
 * (j mod v)·bits (v = 32 / bits values per word). 3 bits in two planes per block of 128 values (block b = ⌊j /
 * 128⌋ starts at word 12·b; a block of n values holds ⌈n/16⌉ low words, then ⌈n/32⌉ high words). Value i of a
 * block is value v = i mod 32 of unit s = ⌊i / 32⌋, in octet o = ⌊v / 8⌋ at place p = v mod 8: its low two bits in
 * word 2s + ⌊o / 2⌋ at bit 4p + 2·(o mod 2), its high bit in word ⌈n/16⌉ + s at bit 4p + o. So an octet's levels
 * make a word of 4-bit fields with two masks and an or: `((lo >> 2·(o mod 2)) & 0x33333333) | (h & 0x44444444)`,
 * h = hi << (2 − o) for o ≤ 2, hi >> 1 for o = 3. Returns [word, shift] pairs, low part first.
 */
export function levelBits(bits: number, group: number, j: number): [number, number][] {
  if (bits !== 3) {
    const v = valuesPerWord(bits);
    return [[Math.floor(j / v), (j % v) * bits]];
  }
  const b = Math.floor(j / W3_BLOCK), i = j % W3_BLOCK;
  const base = b * w3BlockWords(W3_BLOCK), n = Math.min(W3_BLOCK, group - b * W3_BLOCK);
  const s = i >> 5, o = (i >> 3) & 3, p = i & 7;
  return [[base + 2 * s + (o >> 1), 4 * p + 2 * (o & 1)], [base + Math.ceil(n / 16) + s, 4 * p + o]];
}

function checkShape(rows: number, cols: number, group: number): void {
  if (!Number.isInteger(rows) || rows <= 0 || !Number.isInteger(cols) || cols <= 0) {
    throw new RangeError(`Cannot pack a [${rows}, ${cols}] matrix: dimensions must be positive integers`);
  }
  if (cols % group !== 0) {
    throw new RangeError(`Cannot pack a matrix of ${cols} columns in groups of ${group}: not a multiple`);
  }
}

/** Packs integer levels `q` [rows, cols] (each in [0, 2^bits)) into qweight words. */
export function packLevels(
  q: Uint8Array,
  rows: number,
  cols: number,
  bits: number,
  group: number,
): Uint32Array {
  checkShape(rows, cols, group);
  const wpg = wordsPerGroup(bits, group), groups = cols / group;
  const out = new Uint32Array(rows * groups * wpg);
  const max = (1 << bits) - 1;
  const at = Array.from({ length: group }, (_, j) => levelBits(bits, group, j));
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const base = (r * groups + g) * wpg;
      for (let j = 0; j < group; j++) {
        const level = q[r * cols + g * group + j];
        if (level > max) throw new RangeError(`Cannot pack level ${level} in ${bits} bits`);
        const [[w0, s0], hi] = at[j];
        if (hi) {
          out[base + w0] |= (level & 3) << s0;
          out[base + hi[0]] |= (level >> 2) << hi[1];
        } else {
          out[base + w0] |= level << s0;
        }
      }
    }
  }
  return out;
}

/** Unpacks qweight words into integer levels [rows, cols]. */
export function unpackLevels(
  w: Uint32Array,
  rows: number,
  cols: number,
  bits: number,
  group: number,
): Uint8Array {
  checkShape(rows, cols, group);
  const wpg = wordsPerGroup(bits, group), groups = cols / group;
  const out = new Uint8Array(rows * cols);
  const mask = (1 << bits) - 1;
  const at = Array.from({ length: group }, (_, j) => levelBits(bits, group, j));
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const base = (r * groups + g) * wpg;
      for (let j = 0; j < group; j++) {
        const [[w0, s0], hi] = at[j];
        out[r * cols + g * group + j] = hi
          ? ((w[base + w0] >>> s0) & 3) | (((w[base + hi[0]] >>> hi[1]) & 1) << 2)
          : (w[base + w0] >>> s0) & mask;
      }
    }
  }
  return out;
}

/** Dequantizes a packed matrix to float32 [rows, cols] (the CPU reference of every dequantizing kernel). */
export function dequantize(m: PackedMatrix): Float32Array {
  const q = unpackLevels(m.qweight, m.rows, m.cols, m.bits, m.group);
  const scales = new Float32Array(new Float16Array(m.scales.buffer, m.scales.byteOffset, m.scales.length));
  const mins = new Float32Array(new Float16Array(m.mins.buffer, m.mins.byteOffset, m.mins.length));
  const groups = m.cols / m.group;
  const out = new Float32Array(m.rows * m.cols);
  for (let r = 0; r < m.rows; r++) {
    for (let c = 0; c < m.cols; c++) {
      const g = r * groups + Math.floor(c / m.group);
      out[r * m.cols + c] = Math.fround(q[r * m.cols + c] * scales[g]) + mins[g];
    }
  }
  return out;
}
