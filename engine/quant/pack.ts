/**
 * The packed layout of a quantized matrix W [rows, cols] (cols a multiple of the group size):
 *
 * | array | shape | dtype | content |
 * | --- | --- | --- | --- |
 * | qweight | [rows, cols / group, wordsPerGroup] | u32 | group g of row r: value j in word ⌊j / v⌋ at bit (j mod v)·bits, v = valuesPerWord |
 * | scales | [rows, cols / group] | f16 | step of each group |
 * | mins | [rows, cols / group] | f16 | value of q = 0 in each group |
 *
 * Dequantized: `W[r, g·group + j] = q · scale[r, g] + min[r, g]`.
 *
 * @module
 */

import { valuesPerWord, wordsPerGroup } from "./scheme.ts";

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
  const v = valuesPerWord(bits), wpg = wordsPerGroup(bits, group), groups = cols / group;
  const out = new Uint32Array(rows * groups * wpg);
  const max = (1 << bits) - 1;
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const base = (r * groups + g) * wpg;
      for (let j = 0; j < group; j++) {
        const level = q[r * cols + g * group + j];
        if (level > max) throw new RangeError(`Cannot pack level ${level} in ${bits} bits`);
        out[base + Math.floor(j / v)] |= level << ((j % v) * bits);
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
  const v = valuesPerWord(bits), wpg = wordsPerGroup(bits, group), groups = cols / group;
  const out = new Uint8Array(rows * cols);
  const mask = (1 << bits) - 1;
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const base = (r * groups + g) * wpg;
      for (let j = 0; j < group; j++) {
        out[r * cols + g * group + j] = (w[base + Math.floor(j / v)] >>> ((j % v) * bits)) & mask;
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
