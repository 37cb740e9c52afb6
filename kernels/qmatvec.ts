/**
 * Dequantizing mat-vecs over packed weights (engine/quant/pack.ts), for linear layers and for the MoE experts
 * with a different scheme per expert in one dispatch. A weight set is three buffers:
 *
 * | buffer | dtype | content |
 * | --- | --- | --- |
 * | qw | u32 | every matrix's packed words, one after another |
 * | qp | u32 | per (row, group): pack2x16float(scale, min) |
 * | meta | vec4<u32> | per matrix (expert): bits, group, word offset, parameter offset |
 *
 * Bits 2, 3, 4 and 8 are asymmetric group-wise levels (3 bits in bit planes, engine/quant/pack.ts); bits 16
 * stores plain f16 pairs (one group per row, no parameters), so unquantized experts mix with quantized ones. The
 * branch on an expert's scheme is uniform across a workgroup (one workgroup works on one expert), as WGSL
 * requires.
 *
 * @module
 */

import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { wordsPerGroup } from "../engine/quant/scheme.ts";
import { checkMatvecShape, f32Lit, type MatvecShape, prelude } from "./wgsl.ts";

/** Meta entry of one matrix: its scheme and where its words and parameters start. */
export interface QuantMeta {
  /** 2, 3, 4, 8, or 16 (plain f16). */
  bits: number;
  /** Group size (for 16: the row length). */
  group: number;
  /** Offset of the matrix's first word in qw. */
  wordOffset: number;
  /** Offset of the matrix's first parameter in qp. */
  paramOffset: number;
}

/** Shape of the quantized linear mat-vec. */
export const QGEMV_SHAPE: MatvecShape = { tpo: 32, outs: 8 };
/** Shape of the quantized linear mat-vec for 4,096 or more outputs (a fused q/k/v projection). */
export const WIDE_QGEMV_SHAPE: MatvecShape = { tpo: 16, outs: 16 };

/**
 * The quantized mat-vec shape for `n` output features: on an H200 (`bench/matvec_kernels.ts`, w8g128 at the
 * OLMoE shape) 16×16 ran the 6,144-output q/k/v projection in 39.0 µs against 49.2 at 32×8, while the
 * 2,048-output o-projection was fastest at 32×8 (20.9 against 25.6 µs).
 */
export function qgemvShape(n: number): MatvecShape {
  return n >= 4096 ? WIDE_QGEMV_SHAPE : QGEMV_SHAPE;
}
/**
 * Shape of the quantized expert gate/up mat-vec (outputs are expert-hidden features, gate and up rows each),
 * with int8 activations: on an H200 at OLMoE's shape (w4g128) a decode step took 1.159 ms so against 1.233 with
 * f32 activations (gate/up and down together).
 */
export const QGATEUP_SHAPE: MatvecShape = { tpo: 16, outs: 16, int8: true };
/**
 * Shape of the quantized expert down mat-vec: 16 threads per output in two teams of 8, each summing half of the
 * experts (an H200 decode step at OLMoE shape, w4g128: 1.215–1.229 ms against 1.249–1.260 with one team; MxMoE
 * 3.25: 1.253–1.274 against 1.264–1.277), with int8 activations (see {@linkcode QGATEUP_SHAPE}).
 */
export const QDOWN_SHAPE: MatvecShape = { tpo: 16, outs: 16, split: 2, int8: true };

/** The meta table as a u32 array of vec4 entries. */
export function metaTable(entries: QuantMeta[]): Uint32Array {
  const out = new Uint32Array(Math.max(1, entries.length) * 4);
  entries.forEach((m, i) => out.set([m.bits, m.group, m.wordOffset, m.paramOffset], i * 4));
  return out;
}

/** Words of one row of `cols` values in scheme (bits, group). */
export function wordsPerRow(bits: number, group: number, cols: number): number {
  return (cols / group) * wordsPerGroup(bits, group);
}

/** Bit widths the vector path of the mat-vecs reads a 16-byte chunk (4 words) at a time. */
const VECTOR_BITS = [2, 4, 8, 16] as const;
/** Chunk loads of one thread issued together by the unrolled dot products. */
const UNROLL = 8;
/** Most chunks per thread that the dot products unroll (more: a loop). */
const MAX_UNROLLED = 32;

/**
 * Chunks of at least this many activation vec4s (2-bit ones: 16) are accumulated word by word (see chunkCode).
 * On an H200 doing so for 4-bit chunks too (8 vec4s) left their kernels' time unchanged (0.318 vs 0.317 ms per
 * step for the packed gate/up), so they keep the loads up front.
 */
const WORDWISE_VEC4S = 16;

/**
 * WGSL statements accumulating one 16-byte chunk `w{r}` (vec4<u32>) of each of `rows` weight rows against the
 * chunk's activations (vec4 `i` of them read by `xAt(i)`), for `bits` (values per chunk: 128 / bits; 8 for f16).
 * Quantized rows add `scale · Σ q·x + min · Σ x` with their group's parameters `sm{r}`; the activations load
 * once for all rows.
 */
function chunkCode(
  bits: number,
  rows: number,
  xAt: (i: number) => string,
  lay?: ChunkLayout,
): string {
  if (bits === 3) return chunkCode3(rows, xAt, lay?.params ?? 1);
  const nx = (bits === 16 ? 8 : 128 / bits) / 4; // vec4s of activations per chunk
  const perWord = nx / 4; // vec4s of activations per word
  if (bits !== 16 && nx >= WORDWISE_VEC4S) {
    // Word by word, each word's activations loaded just before its codes use them, so fewer of the chunk's
    // activations are live at once (2-bit: 64 per chunk; MxMoE's mixed gate/up took 0.438 ms per step with the
    // chunk's activations loaded up front, 0.314 so, on an H200).
    const out: string[] = [];
    const dr = Array.from({ length: rows }, () => [] as string[]);
    const sxs: string[] = [];
    for (let wi = 0; wi < 4; wi++) {
      const is = Array.from({ length: perWord }, (_, j) => wi * perWord + j);
      for (const i of is) out.push(`let x${i} = ${xAt(i)};`);
      out.push(`let sx${wi} = dot(${is.map((i) => `x${i}`).join(" + ")}, vec4<f32>(1.0));`);
      sxs.push(`sx${wi}`);
      for (let r = 0; r < rows; r++) {
        const word = `w${r}.${"xyzw"[wi]}`;
        const terms = is.map((i) => `dot(lv${bits}(${word} >> ${(i % perWord) * 4 * bits}u), x${i})`);
        out.push(`let d${r}_${wi} = ${terms.join(" + ")};`);
        dr[r].push(`d${r}_${wi}`);
      }
    }
    for (let r = 0; r < rows; r++) {
      out.push(`acc${r} += sm${r}.x * (${dr[r].join(" + ")}) + sm${r}.y * (${sxs.join(" + ")});`);
    }
    return out.join("\n        ");
  }
  const lines = Array.from({ length: nx }, (_, i) => `let x${i} = ${xAt(i)};`);
  if (bits === 16) {
    for (let r = 0; r < rows; r++) {
      lines.push(
        `acc${r} += dot(vec4<f32>(unpack2x16float(w${r}.x), unpack2x16float(w${r}.y)), x0) + ` +
          `dot(vec4<f32>(unpack2x16float(w${r}.z), unpack2x16float(w${r}.w)), x1);`,
      );
    }
    return lines.join("\n        ");
  }
  const sum = Array.from({ length: nx }, (_, i) => `x${i}`).join(" + ");
  lines.push(`let sx = dot(${sum}, vec4<f32>(1.0));`);
  for (let r = 0; r < rows; r++) {
    const terms = Array.from({ length: nx }, (_, i) => {
      const word = `w${r}.${"xyzw"[Math.floor(i / perWord)]}`;
      return `dot(lv${bits}(${word} >> ${(i % perWord) * 4 * bits}u), x${i})`;
    });
    lines.push(`acc${r} += sm${r}.x * (${terms.join(" + ")}) + sm${r}.y * sx;`);
  }
  return lines.join("\n        ");
}

/** WGSL of word `i` of a chunk of row `r` (vectors `w{r}`, then `wb{r}`, `wc{r}` at 3 bits: words 0–11). */
function chunkWord(r: number, i: number): string {
  return `${vecName(Math.floor(i / 4), r)}.${"xyzw"[i % 4]}`;
}

/**
 * WGSL statements `let n{r}_{s}_{o} = …` (o = 0–3): the four octets of unit s (32 values) of a 3-bit chunk of
 * row `r`, each as a word of 4-bit fields (value p at bits 4p): its low bits masked from a low word, its high
 * bits shifted into place from the high word. With one parameter pair per chunk the unit's low bits are in words
 * 2s and 2s + 1 and its high bits in word 8 + s; with `params` 2 or 4 groups per chunk each group's low words
 * come first, then its high ones.
 */
function w3Octets(r: number, s: number, params: number): string[] {
  let lo: number, hi: number;
  if (params === 1) [lo, hi] = [2 * s, 8 + s];
  else {
    const per = 4 / params, g = Math.floor(s / per), u = s % per, base = g * 3 * per;
    [lo, hi] = [base + 2 * u, base + 2 * per + u];
  }
  const h = chunkWord(r, hi);
  return [0, 1, 2, 3].map((o) => {
    const l = `(${chunkWord(r, lo + (o >> 1))} >> ${2 * (o & 1)}u)`;
    const hs = o <= 2 ? `(${h} << ${2 - o}u)` : `(${h} >> 1u)`;
    return `let n${r}_${s}_${o} = (${l} & 0x33333333u) | (${hs} & 0x44444444u);`;
  });
}

/**
 * WGSL statements accumulating one 128-value 3-bit chunk (vectors `w{r}`, `wb{r}`, `wc{r}`: 12 words) of each of
 * `rows` rows against its 32 activation vec4s, in four 32-value units, each unit's activations loaded just before
 * its codes use them. Each octet of a unit becomes a word of 4-bit fields (its low bits masked from a low word,
 * its high bits shifted into place from the high word: engine/quant/pack.ts) read as at 4 bits. With one
 * parameter pair per chunk (groups of 128 or more) the chunk is one block: unit s has its low bits in words 2s
 * and 2s + 1 and its high bits in word 8 + s. With `params` 2 or 4 it holds that many groups (64 or 32 values, 6
 * or 3 words each: low words, then high), and unit s uses pair `sm{r}p{q}` of its group.
 */
function chunkCode3(rows: number, xAt: (i: number) => string, params: number): string {
  const out: string[] = [];
  const dr = Array.from({ length: rows }, () => [] as string[]);
  const sxs: string[] = [];
  for (let s = 0; s < 4; s++) {
    for (let i = 0; i < 8; i++) out.push(`let x${8 * s + i} = ${xAt(8 * s + i)};`);
    out.push(
      `let sx${s} = dot(${
        Array.from({ length: 8 }, (_, i) => `x${8 * s + i}`).join(" + ")
      }, vec4<f32>(1.0));`,
    );
    sxs.push(`sx${s}`);
    for (let r = 0; r < rows; r++) {
      out.push(...w3Octets(r, s, params));
      const terms: string[] = [];
      for (let o = 0; o < 4; o++) {
        terms.push(
          `dot(lv4(n${r}_${s}_${o}), x${8 * s + 2 * o})`,
          `dot(lv4(n${r}_${s}_${o} >> 16u), x${8 * s + 2 * o + 1})`,
        );
      }
      if (params === 1) {
        out.push(`let d${r}_${s} = ${terms.join(" + ")};`);
        dr[r].push(`d${r}_${s}`);
      } else {
        const sm = paramName({ vecs: 3, params }, r, Math.floor(s / (4 / params)));
        out.push(`acc${r} += ${sm}.x * (${terms.join(" + ")}) + ${sm}.y * sx${s};`);
      }
    }
  }
  if (params === 1) {
    for (let r = 0; r < rows; r++) {
      out.push(`acc${r} += sm${r}.x * (${dr[r].join(" + ")}) + sm${r}.y * (${sxs.join(" + ")});`);
    }
  }
  return out.join("\n        ");
}

/** Values of a chunk of `bits` (three 16-byte vectors at 3 bits, else one). */
function valuesPerChunk(bits: number): number {
  return bits === 3 ? 128 : 128 / bits;
}

/**
 * WGSL statements accumulating chunk `c` (in scope) of each of `rows` rows with int8 activations (`int8`
 * staging, {@linkcode i8StageBlock}): the chunk's activation words are vec4s `xq[q0 + i · cpr + c]`, its
 * blocks' (scale, Σx̃) pairs `xd[q0 + block]` (8 bits: the half block's scale and Σ levels at `xd[q0 + c]`);
 * `q0` is the row's offset in both arrays. Levels are masked into bytes and multiplied four at a time with
 * `dot4I8Packed`: a 4-bit word's even fields, then its odd ones (activations staged in that order), a 2-bit
 * word's fields s, 4 + s, 8 + s, 12 + s for each s, an 8-bit word's bytes less 128 (levels are unsigned, the
 * product signed: the 128 · Σ x̃ it leaves out is added back), a 3-bit octet as at 4 bits (see chunkCode3).
 */
function chunkCodeI8(bits: number, rows: number, lay: ChunkLayout, cpr: number): string {
  const q = (i: number) => `xq[q0 + ${i * cpr}u + c]`;
  const out: string[] = [];
  const dot = (a: string, b: string) => `dot4I8Packed(${a}, ${b})`;
  const M4 = "0x0f0f0f0fu", M2 = "0x03030303u";

  if (bits === 8) {
    // Half a block (its pair: the block's scale, Σ of the half's levels): levels q − 128 against the
    // activations, 128 · Σ levels added back with the group minimum's term.
    out.push(`let qa = ${q(0)};`, `let da = xd[q0 + c];`);
    for (let r = 0; r < rows; r++) {
      const terms = ["x", "y", "z", "w"].map((k) => dot(`w${r}.${k} ^ 0x80808080u`, `qa.${k}`));
      out.push(
        `acc${r} += da.x * (sm${r}.x * f32(${terms.join(" + ")}) + (128.0 * sm${r}.x + sm${r}.y) * da.y);`,
      );
    }
    return out.join("\n        ");
  }
  if (bits === 4 || bits === 2) {
    const nq = valuesPerChunk(bits) / 16, nb = valuesPerChunk(bits) / 32; // activation vec4s, blocks
    for (let i = 0; i < nq; i++) out.push(`let qa${i} = ${q(i)};`);
    for (let b = 0; b < nb; b++) out.push(`let da${b} = xd[q0 + c * ${nb}u + ${b}u];`);
    for (let r = 0; r < rows; r++) {
      const perBlock: string[] = [];
      for (let b = 0; b < nb; b++) {
        const terms: string[] = [];
        if (bits === 4) {
          // Words 4b… of the chunk: word p's even fields against component 2(p % 2), odd against the next.
          for (let p = 0; p < 4; p++) {
            const w = chunkWord(r, p), a = `qa${p >> 1}`, k = 2 * (p & 1);
            terms.push(
              dot(`${w} & ${M4}`, `${a}.${"xyzw"[k]}`),
              dot(`(${w} >> 4u) & ${M4}`, `${a}.${"xyzw"[k + 1]}`),
            );
          }
        } else {
          for (let p = 2 * b; p < 2 * b + 2; p++) {
            for (let s = 0; s < 4; s++) {
              terms.push(
                dot(
                  s === 0 ? `${chunkWord(r, p)} & ${M2}` : `(${chunkWord(r, p)} >> ${2 * s}u) & ${M2}`,
                  `qa${p}.${"xyzw"[s]}`,
                ),
              );
            }
          }
        }
        out.push(`let i${r}_${b} = ${terms.join(" + ")};`);
        perBlock.push(`da${b}.x * f32(i${r}_${b})`);
      }
      const sums = Array.from({ length: nb }, (_, b) => `da${b}.y`).join(" + ");
      out.push(`acc${r} += sm${r}.x * (${perBlock.join(" + ")}) + sm${r}.y * (${sums});`);
    }
    return out.join("\n        ");
  }
  // 3 bits: unit s of the chunk is block 4c + s, its activations vec4s 2s and 2s + 1.
  for (let s = 0; s < 4; s++) {
    out.push(`let qa${2 * s} = ${q(2 * s)};`, `let qa${2 * s + 1} = ${q(2 * s + 1)};`);
    out.push(`let da${s} = xd[q0 + c * 4u + ${s}u];`);
  }
  for (let r = 0; r < rows; r++) {
    const perUnit: string[] = [];
    for (let s = 0; s < 4; s++) {
      out.push(...w3Octets(r, s, lay.params));
      const terms: string[] = [];
      for (let o = 0; o < 4; o++) {
        const n = `n${r}_${s}_${o}`;
        const a = `qa${2 * s + (o >> 1)}`, k = 2 * (o & 1);
        terms.push(
          dot(`${n} & ${M4}`, `${a}.${"xyzw"[k]}`),
          dot(`(${n} >> 4u) & ${M4}`, `${a}.${"xyzw"[k + 1]}`),
        );
      }
      out.push(`let i${r}_${s} = ${terms.join(" + ")};`);
      perUnit.push(`da${s}.x * f32(i${r}_${s})`);
    }
    if (lay.params === 1) {
      const sums = [0, 1, 2, 3].map((s) => `da${s}.y`).join(" + ");
      out.push(`acc${r} += sm${r}.x * (${perUnit.join(" + ")}) + sm${r}.y * (${sums});`);
    } else {
      const per = 4 / lay.params;
      for (let g = 0; g < lay.params; g++) {
        const us = Array.from({ length: per }, (_, u) => g * per + u);
        const sm = paramName(lay, r, g);
        out.push(
          `acc${r} += ${sm}.x * (${us.map((u) => perUnit[u]).join(" + ")}) + ${sm}.y * (${
            us.map((u) => `da${u}.y`).join(" + ")
          });`,
        );
      }
    }
  }
  return out.join("\n        ");
}

/**
 * WGSL statements that round block `b` (32 values, in scope as vec4s `a0`…`a7`) to int8 levels with scale
 * `max |x| / 127` and store them for matrix `m`'s scheme (bits `m.x`) in workgroup memory: the block's (scale,
 * Σx̃) at `xd[q0 + b]` (8 bits: each half's scale and Σ of its levels at `xd[q0 + 2b + u]`), its levels as
 * two vec4s of packed words, each placed where the chunk that reads it looks (`xq[q0 + i · cpr + c]`,
 * {@linkcode chunkCodeI8}), in the order that scheme's masks leave the levels:
 * natural at 8 bits, even then odd values of each octet at 4 and 3, values s, 4 + s, 8 + s, 12 + s of each
 * 16 at 2. `bits` lists the staged bit widths.
 */
function i8StageBlock(k: number, bits: readonly number[]): string {
  const out = [
    "let amax = max(max(max(abs(a0), abs(a1)), max(abs(a2), abs(a3))), max(max(abs(a4), abs(a5)), max(abs(a6), abs(a7))));",
    "let dq = max(max(amax.x, amax.y), max(amax.z, amax.w)) / 127.0;",
    "let dv = select(1.0, dq, dq > 0.0);",
    ...Array.from({ length: 8 }, (_, i) => `let l${i} = vec4<i32>(round(a${i} / dv));`),
  ];
  // Every scheme but 8 bits: the block's (scale, Σx̃) at q0 + b; 8 bits: each half's (scale, Σ levels) at
  // q0 + 2b + u (a chunk is half a block).
  const sums = [
    "let ls = l0 + l1 + l2 + l3 + l4 + l5 + l6 + l7;",
    "xd[q0 + b] = vec2<f32>(dq, dq * f32(ls.x + ls.y + ls.z + ls.w));",
  ];
  const halfSums = [0, 1].map((u) => {
    const v = `(l${4 * u} + l${4 * u + 1} + l${4 * u + 2} + l${4 * u + 3})`;
    return `{ let lh = ${v}; xd[q0 + 2u * b + ${u}u] = vec2<f32>(dq, f32(lh.x + lh.y + lh.z + lh.w)); }`;
  });
  const pk = (parts: string[]) => `pack4xI8(vec4<i32>(${parts.join(", ")}))`;
  const branches = bits.map((bt) => {
    const V = valuesPerChunk(bt), cpr = k / V;
    const stores = [0, 1].map((u) => {
      // The half's value offset 32b + 16u: its chunk and vec4 within the chunk.
      const at = `${cpr}u * (((b * 32u + ${16 * u}u) % ${V}u) / 16u) + (b * 32u + ${16 * u}u) / ${V}u`;
      let words: string[];
      if (bt === 8) words = [0, 1, 2, 3].map((j) => `pack4xI8(l${4 * u + j})`);
      else if (bt === 2) {
        words = [0, 1, 2, 3].map((s) => pk([0, 1, 2, 3].map((j) => `l${4 * u + j}.${"xyzw"[s]}`)));
      } else {
        words = [0, 1].flatMap((h) => {
          const a = `l${4 * u + 2 * h}`, c = `l${4 * u + 2 * h + 1}`;
          return [pk([`${a}.x`, `${a}.z`, `${c}.x`, `${c}.z`]), pk([`${a}.y`, `${a}.w`, `${c}.y`, `${c}.w`])];
        });
      }
      return `xq[q0 + ${at}] = vec4<u32>(${words.join(", ")});`;
    });
    return { cond: `m.x == ${bt}u`, stores: [...(bt === 8 ? halfSums : sums), ...stores] };
  });
  out.push(
    branches.length === 1
      ? branches[0].stores.join(" ")
      : branches.map((br) => `if (${br.cond}) {\n        ${br.stores.join("\n        ")}\n      }`).join(
        " else ",
      ),
  );
  return out.join("\n      ");
}

/** A quantization scheme of a weight set: bits (16: plain f16) and group size (f16: the row length). */
export interface QuantScheme {
  /** 2, 3, 4, 8 or 16. */
  bits: number;
  /** Group size. */
  group: number;
}

/**
 * Whether rows of `k` values in `s` can be read in 16-byte chunks that each lie inside one group, or (3 bits)
 * in chunks of 128 values (three 16-byte vectors: one 3-bit block, or two or four whole groups of 64 or 32).
 */
function chunked(s: QuantScheme, k: number): boolean {
  if (s.bits === 16) return k % 8 === 0;
  if (s.bits === 3) {
    return (s.group % 128 === 0 || s.group === 64 || s.group === 32) && k % s.group === 0 && k % 128 === 0;
  }
  return (s.bits === 2 || s.bits === 4 || s.bits === 8) && s.group % (128 / s.bits) === 0 &&
    k % s.group === 0;
}

/**
 * Whether a staged packed kernel with {@linkcode MatvecShape.int8} reads matrices of scheme `s` (rows of `k`
 * values) against int8 activations: rows of whole 32-value blocks read in chunks, f16 excepted (f16 rows and
 * rows read word by word keep f32 activations).
 */
export function int8Staged(s: QuantScheme, k: number): boolean {
  return k % 32 === 0 && s.bits !== 16 && chunked(s, k);
}

/** Vec4s of activations one chunk of `bits` multiplies (3 bits: 128 values). */
function vec4sPerChunk(bits: number): number {
  return bits === 16 ? 2 : bits === 3 ? 32 : 32 / bits;
}

/** Vec4s of activations one chunk of scheme `s` multiplies. */
function chunkVec4s(s: QuantScheme): number {
  return vec4sPerChunk(s.bits);
}

/** A chunk's 16-byte vectors of weights and its (scale, min) pairs per row. */
interface ChunkLayout {
  /** 16-byte vectors (3 for a 3-bit chunk, else 1). */
  vecs: number;
  /** Parameter pairs (a 3-bit chunk of groups of 64 or 32 spans 2 or 4 groups; f16: none). */
  params: number;
}

/** The layout of a chunk of scheme `s`. */
function chunkLayout(s: QuantScheme): ChunkLayout {
  if (s.bits === 16) return { vecs: 1, params: 0 };
  if (s.bits === 3) return { vecs: 3, params: Math.max(1, 128 / s.group) };
  return { vecs: 1, params: 1 };
}

/** WGSL name of 16-byte vector `v` of a chunk of row `r`. */
function vecName(v: number, r: number): string {
  return `${["w", "wb", "wc"][v]}${r}`;
}

/** WGSL name of parameter pair `q` of a chunk of row `r`. */
function paramName(lay: ChunkLayout, r: number, q: number): string {
  return lay.params === 1 ? `sm${r}` : `sm${r}p${q}`;
}

/** The distinct schemes of `schemes` whose rows of `k` values are read in 16-byte chunks. */
function chunkedSchemes(schemes: readonly QuantScheme[], k: number): QuantScheme[] {
  const seen = new Map<string, QuantScheme>();
  for (const sc of schemes) {
    if (chunked(sc, k)) seen.set(sc.bits === 16 ? "16" : `${sc.bits}/${sc.group}`, sc);
  }
  return [...seen.values()];
}

/** Whether schemes of one bit width share a code path, their group sizes read from the meta entry. */
const MERGE_GROUPS = true;

/** A code path of the chunked dot products: its schemes (one bit width and chunk layout) and WGSL condition. */
interface ChunkBranch {
  /** The schemes it reads (several only with one parameter pair per chunk). */
  schemes: QuantScheme[];
  /** WGSL condition on meta entry `m`. */
  cond: string;
}

/**
 * The code paths of a weight set's chunked schemes: schemes with the same bits and chunk layout share one (with
 * {@linkcode MERGE_GROUPS}), the sizes that depend on the group computed from the meta entry; each code path a
 * scheme set holds makes its expert kernels slower whether or not it runs.
 */
function chunkBranches(schemes: readonly QuantScheme[], k: number): ChunkBranch[] {
  const byKey = new Map<string, QuantScheme[]>();
  for (const sc of chunkedSchemes(schemes, k)) {
    const lay = chunkLayout(sc);
    const key = MERGE_GROUPS && lay.params === 1 ? `${sc.bits}` : `${sc.bits}/${sc.group}`;
    byKey.set(key, [...(byKey.get(key) ?? []), sc]);
  }
  return [...byKey.values()].map((list) => ({
    schemes: list,
    cond: list.length === 1
      ? isScheme(list[0])
      : `m.x == ${list[0].bits}u && (${
        list.map((sc) => `m.y == ${sc.group}u`).join(" || ")
      }) && m.z % 4u == 0u`,
  }));
}

/**
 * The code path the packed expert kernels read scheme `s` by, in rows of `k` values: schemes with the same key
 * share one (`w4` for every chunked 4-bit scheme with one parameter pair per chunk, `words` for every scheme read
 * word by word). Each path a weight set holds and runs slows its kernels (an H200 stepped 1.263 ms with experts
 * alternating w4g128 and w2g128 against 1.226 with w4g128 alone), which MxMoE's allocator weighs.
 */
export function codePathKey(s: QuantScheme, k: number): string {
  if (!chunked(s, k)) return "words";
  if (s.bits === 16) return "f16";
  return MERGE_GROUPS && chunkLayout(s).params === 1 ? `w${s.bits}` : `w${s.bits}g${s.group}`;
}

/**
 * How activations are staged for a weight set's schemes: one branch (WGSL condition on meta entry `m`) per
 * layout of staged activations (vec4s per chunk `nx`, which only the bit width sets), over the code paths.
 */
function stagingBranches(k: number, schemes: readonly QuantScheme[]): { cond: string; nx: number }[] {
  const byNx = new Map<number, string[]>();
  for (const br of chunkBranches(schemes, k)) {
    const nx = chunkVec4s(br.schemes[0]);
    byNx.set(nx, [...(byNx.get(nx) ?? []), br.cond]);
  }
  return [...byNx].map(([nx, conds]) => ({
    cond: conds.length === 1 ? conds[0] : conds.map((c) => `(${c})`).join(" || "),
    nx,
  }));
}

/**
 * The int8 staging of a weight set's schemes (rows of `k` values): the bit widths staged as int8 (every chunked
 * scheme but f16), the WGSL condition on meta entry `m` of those schemes, and whether an f16 scheme is staged
 * as f32 beside them. Undefined where nothing would be staged as int8.
 */
function i8Staging(
  k: number,
  schemes: readonly QuantScheme[],
): { bits: number[]; cond: string; f16: boolean } | undefined {
  if (k % 32 !== 0) return undefined;
  const paths = chunkBranches(schemes, k);
  const ints = paths.filter((br) => br.schemes[0].bits !== 16);
  if (ints.length === 0) return undefined;
  return {
    bits: [...new Set(ints.map((br) => br.schemes[0].bits))],
    cond: ints.length === 1 ? ints[0].cond : ints.map((br) => `(${br.cond})`).join(" || "),
    f16: ints.length < paths.length,
  };
}

/** WGSL condition: meta entry `m` is scheme `sc` and 16-byte aligned (its rows are read in chunks). */
function isScheme(sc: QuantScheme): string {
  return sc.bits === 16
    ? "m.x == 16u && m.z % 4u == 0u"
    : `m.x == ${sc.bits}u && m.y == ${sc.group}u && m.z % 4u == 0u`;
}

/**
 * WGSL of `stage_x(m, xo4, xs0, li)`: copies the `k / 4` activation vec4s from `xa[xo4..]` into workgroup memory
 * `xsh[xs0..]`, permuted for matrix `m`'s scheme so that the threads reading consecutive chunks read
 * consecutive vec4s (vec4 i of chunk c at `i · (k / 4 / nx) + c`, nx vec4s per chunk: no bank conflicts). For
 * a scheme read word by word nothing is copied (its path reads `xa`). `wg` threads share the copy.
 */
function stageFn(
  k: number,
  schemes: readonly QuantScheme[],
  wg: number,
  norm = false,
  int8 = false,
): string {
  const k4 = k / 4;
  // With a fused RMSNorm the staged values are x∘g and the function returns the thread's share of Σx².
  const put = norm
    ? "let v = xa[xo4 + j]; ss += dot(v, v); xsh[DST] = v * gw[j];"
    : "xsh[DST] = xa[xo4 + j];";
  const i8 = int8 ? i8Staging(k, schemes) : undefined;
  // With int8 only f16 rows (2 vec4s per chunk) are staged as f32.
  const floats = stagingBranches(k, schemes).filter(({ nx }) => !i8 || nx === 2);
  const branches = floats.map(({ cond, nx }) => {
    const dst = `xs0 + (j % ${nx}u) * ${k4 / nx}u + j / ${nx}u`;
    // A constant trip count where the threads divide the row (the copies unroll, loads in flight together).
    const copy = k4 % wg === 0
      ? `for (var u = 0u; u < ${k4 / wg}u; u++) { let j = li + u * ${wg}u; ${put.replace("DST", dst)} }`
      : `for (var j = li; j < ${k4}u; j += ${wg}u) { ${put.replace("DST", dst)} }`;
    return `if (${cond}) {
    ${copy}
  }`;
  });
  if (i8) {
    // Block b's eight vec4s (normed), then its levels.
    const loads = Array.from(
      { length: 8 },
      (_, i) =>
        norm
          ? `let v${i} = xa[xo4 + b * 8u + ${i}u]; ss += dot(v${i}, v${i}); let a${i} = v${i} * gw[b * 8u + ${i}u];`
          : `let a${i} = xa[xo4 + b * 8u + ${i}u];`,
    );
    branches.push(`if (${i8.cond}) {
    let q0 = xs0 / 4u;
    for (var b = li; b < ${k / 32}u; b += ${wg}u) {
      ${loads.join("\n      ")}
      ${i8StageBlock(k, i8.bits)}
    }
  }`);
  }
  return norm
    ? `
fn stage_x(m: vec4<u32>, xo4: u32, xs0: u32, li: u32) -> f32 {
  var ss = 0.0;
  ${branches.join(" else ")}
  return ss;
}`
    : `
fn stage_x(m: vec4<u32>, xo4: u32, xs0: u32, li: u32) {
  ${branches.join(" else ")}
}`;
}

/**
 * WGSL of `qdot1(m, row0, xo, xs0, t)` or `qdot2(m, row0, row1, xo, xs0, t)`: the partial dot products of `rows`
 * rows of matrix `m` (meta entry) with activations `xa` from value `xo` (a multiple of 4) over a thread's share
 * (`t` of TPR threads). `K` is the row length. Rows are read in 16-byte chunks where the scheme allows (2, 4, 8
 * bits with groups of whole chunks, or f16; 16-byte aligned), else word by word. With `schemes` (those the
 * weight set holds), each chunked scheme gets a branch with its sizes as constants, and with `staged` it reads
 * the activations from workgroup memory at `xs0`, as `stage_x` left them; without `schemes`, one branch per bit
 * width computes the sizes at run time. With `tpr` (the team size TPR, known when building) the constant-size
 * branches unroll the thread's chunks, their loads issued together; where the weight set has several code paths,
 * the shape's `step` > 0 makes that a loop of `step` chunks per pass (less code per path). With its `int8` (and
 * `staged`) chunked 2-, 3-, 4- and 8-bit rows multiply int8 activations ({@linkcode chunkCodeI8}).
 */
function qdotFn(
  rows: 1 | 2,
  k: number,
  schemes?: readonly QuantScheme[],
  staged = false,
  tpr = 0,
  { step: multiStep = 0, int8 = false }: Pick<MatvecShape, "step" | "int8"> = {},
): string {
  const rowArgs = Array.from({ length: rows }, (_, r) => `row${r}: u32`).join(", ");
  const ret = rows === 1 ? "f32" : "vec2<f32>";
  const accs = Array.from({ length: rows }, (_, r) => `acc${r}`).join(", ");
  const decl = Array.from({ length: rows }, (_, r) => `var acc${r} = 0.0;`).join(" ");
  const result = rows === 1 ? "acc0" : `vec2<f32>(${accs})`;
  // Activations from global memory: vec4 i of the chunk at vec4 xb (= xo4 + c · vec4s per chunk).
  const global = (i: number) => `xa[xb + ${i}u]`;
  // The loop over a thread's chunks; sizes are WGSL expressions (constants or run-time values). `lay`: the
  // chunk's 16-byte vectors and parameter pairs (chunkLayout); `group(c, p)`: the index of parameter pair p of
  // chunk c in its row.
  const loads = (
    lay: ChunkLayout,
    rowVecs: string,
    groups: string,
    c: string,
    group: (c: string, p: number) => string,
    sfx: string,
  ) => {
    const out: string[] = [];
    for (let r = 0; r < rows; r++) {
      for (let v = 0; v < lay.vecs; v++) {
        const at = lay.vecs === 1 ? c : `${c} * ${lay.vecs}u + ${v}u`;
        out.push(`let ${vecName(v, r)}${sfx} = qw[m.z / 4u + row${r} * ${rowVecs} + ${at}];`);
      }
      for (let q = 0; q < lay.params; q++) {
        out.push(
          `let ${paramName(lay, r, q)}${sfx} = unpack2x16float(qp[m.w + row${r} * ${groups} + ${
            group(c, q)
          }]);`,
        );
      }
    }
    return out;
  };
  // Names of one chunk's loads (the unrolled chunks load into suffixed names first).
  const names = (lay: ChunkLayout) => {
    const out: string[] = [];
    for (let r = 0; r < rows; r++) {
      for (let v = 0; v < lay.vecs; v++) out.push(vecName(v, r));
      for (let q = 0; q < lay.params; q++) out.push(paramName(lay, r, q));
    }
    return out;
  };
  const xBase = (b: number) => `let xb = xo4 + c * ${vec4sPerChunk(b)}u;`;
  const loop = (
    b: number,
    lay: ChunkLayout,
    cpr: string,
    groups: string,
    group: (c: string, p: number) => string,
    xAt: (i: number) => string,
    code = chunkCode(b, rows, xAt, lay),
  ) => {
    const rowVecs = lay.vecs === 1 ? cpr : `${cpr} * ${lay.vecs}u`;
    return `for (var c = t; c < ${cpr}; c += TPR) {
        ${loads(lay, rowVecs, groups, "c", group, "").join("\n        ")}
        ${xAt === global ? xBase(b) : ""}
        ${code}
      }
      return ${result};`;
  };
  // With constant sizes and a known team size the thread's chunks (c = t, t + tpr, ...) are unrolled and
  // their loads issued UNROLL at a time, so they are in flight together (a loop waits for each in turn).
  const unrolled = (
    b: number,
    lay: ChunkLayout,
    cpr: number,
    groups: string,
    group: (c: string, p: number) => string,
    xAt: (i: number) => string,
    step: number,
    code = chunkCode(b, rows, xAt, lay),
  ) => {
    const nit = Math.ceil(cpr / tpr);
    // Chunk c{u}'s dot products, from the values its loads left in suffixed names.
    const block = (u: number) =>
      `{
          let c = c${u};
          ${names(lay).map((n) => `let ${n} = ${n}_${u};`).join(" ")}
          ${xAt === global ? xBase(b) : ""}
          ${code}
        }`;
    if (step > 0 && nit > step && nit % step === 0 && cpr % tpr === 0) {
      // A loop over the thread's chunks, `step` per pass, their loads in flight together.
      const us = Array.from({ length: step }, (_, i) => i);
      const body: string[] = [];
      for (const u of us) {
        body.push(`let c${u} = t + (u0 + ${u}u) * ${tpr}u;`);
        body.push(...loads(lay, `${cpr * lay.vecs}u`, groups, `c${u}`, group, `_${u}`));
      }
      body.push(...us.map(block));
      return `for (var u0 = 0u; u0 < ${nit}u; u0 += ${step}u) {
        ${body.join("\n        ")}
      }
      return ${result};`;
    }
    const out: string[] = [];
    for (let u0 = 0; u0 < nit; u0 += UNROLL) {
      const us = Array.from({ length: Math.min(UNROLL, nit - u0) }, (_, i) => u0 + i);
      for (const u of us) {
        // The last chunk may lie past the row when tpr does not divide it: its loads read the row's last.
        const cu = u === nit - 1 && cpr % tpr !== 0 ? `min(t + ${u * tpr}u, ${cpr - 1}u)` : `t + ${u * tpr}u`;
        out.push(`let c${u} = ${cu};`);
        out.push(...loads(lay, `${cpr * lay.vecs}u`, groups, `c${u}`, group, `_${u}`));
      }
      for (const u of us) {
        out.push(u === nit - 1 && cpr % tpr !== 0 ? `if (t + ${u * tpr}u < ${cpr}u) ${block(u)}` : block(u));
      }
    }
    return `${out.join("\n      ")}
      return ${result};`;
  };
  let vector: string;
  if (schemes) {
    const paths = chunkBranches(schemes, k);
    // Several code paths: each path's chunks unrolled multiStep at a time (less code to fetch).
    const step = paths.length > 1 ? multiStep : 0;
    // Int8 activations (staged so by stage_x) for every chunked scheme but f16.
    const i8 = staged && int8 && i8Staging(k, schemes) !== undefined;
    const branches = paths.map((br) => {
      const sc = br.schemes[0], nx = chunkVec4s(sc), cpr = k / (4 * nx), lay = chunkLayout(sc);
      // Staged: vec4 i of chunk c is at xs0 + i · cpr + c.
      const xAt = staged ? (i: number) => `xsh[xs0 + ${i * cpr}u + c]` : global;
      // One group size: constants. Several (same bits and layout, one parameter pair per chunk): the chunks
      // per group from the meta entry, a shift where every group's count is a power of two.
      const single = br.schemes.length === 1;
      const cpgs = br.schemes.map((x) => Math.max(1, x.group / (4 * nx)));
      const pow2 = cpgs.every((c) => (c & (c - 1)) === 0);
      const groups = sc.bits === 16 ? "1u" : single ? `${k / sc.group}u` : "gpr";
      // Chunks per group, or (several groups in a chunk) parameter pair p of chunk c at c · params + p.
      const group = (c: string, p: number) =>
        sc.bits === 16
          ? "0u"
          : lay.params > 1
          ? `${c} * ${lay.params}u + ${p}u`
          : single
          ? `${c} / ${cpgs[0]}u`
          : pow2
          ? `(${c} >> cps)`
          : `${c} / cpg`;
      const sizes = single || sc.bits === 16 ? "" : `let gpr = ${k}u / m.y;
      ${pow2 ? `let cps = countTrailingZeros(m.y / ${4 * nx}u);` : `let cpg = m.y / ${4 * nx}u;`}
      `;
      const code = i8 && sc.bits !== 16 ? chunkCodeI8(sc.bits, rows, lay, cpr) : undefined;
      return `if (${br.cond}) {
      ${sizes}${
        tpr > 0 && cpr / tpr <= MAX_UNROLLED
          ? unrolled(sc.bits, lay, cpr, groups, group, xAt, step, code)
          : loop(sc.bits, lay, `${cpr}u`, groups, group, xAt, code)
      }
    }`;
    });
    vector = branches.length === 0 ? "" : `let xo4 = xo / 4u;
  ${i8 ? "let q0 = xs0 / 4u;" : ""}
  ${branches.join(" else ")}`;
  } else {
    const branches = VECTOR_BITS.map((b) =>
      `if (bits == ${b}u) {
      ${loop(b, { vecs: 1, params: b === 16 ? 0 : 1 }, "cpr", "groups", (c) => `${c} / cpg`, global)}
    }`
    ).join(" else ");
    vector = `let bits = m.x;
  let G = m.y;
  let v = 32u / bits;
  let wpg = (G + v - 1u) / v;
  let groups = K / G;
  let wpr = groups * wpg;
  if ((bits == 2u || bits == 4u || bits == 8u || bits == 16u) && G % v == 0u && wpg % 4u == 0u && m.z % 4u == 0u) {
    let cpr = wpr / 4u;
    let cpg = max(wpg / 4u, 1u);
    let xo4 = xo / 4u;
    ${branches}
  }`;
  }
  const generic = Array.from({ length: rows }, (_, r) => `acc${r} = qdot_words(m, row${r}, xo, t);`).join(
    " ",
  );
  return `
fn qdot${rows}(m: vec4<u32>, ${rowArgs}, xo: u32, xs0: u32, t: u32) -> ${ret} {
  ${decl}
  ${vector}
  ${generic}
  return ${result};
}`;
}

/** WGSL of the word-by-word dot product (any scheme) and the helpers of the chunked one. */
function qdotWordsFn(): string {
  return `
fn qword(i: u32) -> u32 {
  return qw[i >> 2u][i & 3u];
}
fn xs(i: u32) -> f32 {
  return xa[i >> 2u][i & 3u];
}
fn nib4(w: u32, shift: u32, bits: u32) -> vec4<f32> {
  let m = (1u << bits) - 1u;
  return vec4<f32>(vec4<u32>(w >> shift, w >> (shift + bits), w >> (shift + 2u * bits), w >> (shift + 3u * bits)) & vec4<u32>(m));
}
fn lv2(w: u32) -> vec4<f32> {
  return vec4<f32>(vec4<u32>(w, w >> 2u, w >> 4u, w >> 6u) & vec4<u32>(3u));
}
fn lv4(w: u32) -> vec4<f32> {
  return vec4<f32>(vec4<u32>(w, w >> 4u, w >> 8u, w >> 12u) & vec4<u32>(15u));
}
fn lv8(w: u32) -> vec4<f32> {
  return vec4<f32>(vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) & vec4<u32>(255u));
}
// 3 bits, any group (a multiple of 8): four values at a time. Value i of a block of n (blocks of 128 per group,
// 12 words each) is place p of octet o of unit s (i = 32 s + 8 o + p): its low bits in word 2 s + o / 2 at bit
// 4 p + 2 (o % 2), its high bit in word ceil(n / 16) + s at bit 4 p + o.
fn qdot_w3(m: vec4<u32>, row: u32, xo: u32, t: u32) -> f32 {
  let G = m.y;
  let rest = G % 128u;
  let wpg = (G / 128u) * 12u + select(0u, (rest + 15u) / 16u + (rest + 31u) / 32u, rest > 0u);
  let groups = K / G;
  let wrow = m.z + row * groups * wpg;
  let prow = m.w + row * groups;
  let one = vec4<f32>(1.0);
  var acc = 0.0;
  for (var c = t; c < K / 4u; c += TPR) {
    let j = c * 4u;
    let g = j / G;
    let jg = j - g * G;
    let i = jg % 128u;
    let n = min(128u, G - (jg - i));
    let base = wrow + g * wpg + (jg / 128u) * 12u;
    let s = i / 32u;
    let o = (i / 8u) % 4u;
    let p = i % 8u;
    let lo = qword(base + 2u * s + o / 2u) >> (4u * p + 2u * (o % 2u));
    let hi = qword(base + (n + 15u) / 16u + s) >> (4u * p + o);
    let lv = lv4((lo & 0x3333u) | ((hi << 2u) & 0x4444u));
    let sm = unpack2x16float(qp[prow + g]);
    let xv = xa[(xo + j) >> 2u];
    acc += sm.x * dot(lv, xv) + sm.y * dot(xv, one);
  }
  return acc;
}
fn qdot_words(m: vec4<u32>, row: u32, xo: u32, t: u32) -> f32 {
  let bits = m.x;
  if (bits == 3u) { return qdot_w3(m, row, xo, t); }
  let G = m.y;
  let v = 32u / bits;
  let wpg = (G + v - 1u) / v;
  let groups = K / G;
  let wpr = groups * wpg;
  let wrow = m.z + row * wpr;
  let prow = m.w + row * groups;
  var acc = 0.0;
  for (var c = t; c < wpr; c += TPR) {
    let g = c / wpg;
    let j0 = (c % wpg) * v;
    let word = qword(wrow + c);
    let xb = xo + g * G + j0;
    if (bits == 16u) {
      let h = unpack2x16float(word);
      acc += h.x * xs(xb) + h.y * xs(xb + 1u);
      continue;
    }
    let sm = unpack2x16float(qp[prow + g]);
    var s = 0.0;
    var sx = 0.0;
    if (G - j0 < v) {
      // A partial last word: one level at a time.
      let n = min(v, G - j0);
      for (var j = 0u; j < n; j++) {
        let xv = xs(xb + j);
        s += f32(extractBits(word, j * bits, bits)) * xv;
        sx += xv;
      }
    } else {
      // 2, 4 or 8 bits: 16, 8 or 4 levels per word, four at a time against aligned vec4 activations
      // (xb is a multiple of 4: rows, groups and word starts all are).
      let one = vec4<f32>(1.0);
      for (var q = 0u; q < v; q += 4u) {
        let xv = xa[(xb + q) >> 2u];
        s += dot(nib4(word, q * bits, bits), xv);
        sx += dot(xv, one);
      }
    }
    acc += sm.x * s + sm.y * sx;
  }
  return acc;
}`;
}

/** The activations are read as vec4: rows of K values must start 16-byte aligned. */
function checkK(label: string, k: number): void {
  if (!Number.isInteger(k) || k <= 0 || k % 4 !== 0) {
    throw new RangeError(`Cannot build ${label}: the row length ${k} must be a positive multiple of 4`);
  }
}

function reduce(wg: number): string {
  return `var<workgroup> part: array<f32, ${wg}>;
// The sum of v over the whole workgroup (its barriers also publish what the threads wrote before it).
fn reduce_all(li: u32, v: f32) -> f32 {
  part[li] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { part[li] += part[li + s]; }
    workgroupBarrier();
  }
  let r = part[0];
  workgroupBarrier();
  return r;
}
var<workgroup> part2: array<f32, ${wg}>;
fn reduce_seg2(li: u32, t: u32, a: f32, b: f32) -> vec2<f32> {
  part[li] = a;
  part2[li] = b;
  workgroupBarrier();
  for (var s = TPO / 2u; s > 0u; s >>= 1u) {
    if (t < s) {
      part[li] += part[li + s];
      part2[li] += part2[li + s];
    }
    workgroupBarrier();
  }
  let r = vec2<f32>(part[li - t], part2[li - t]);
  workgroupBarrier();
  return r;
}
fn reduce_seg(li: u32, t: u32, v: f32) -> f32 {
  part[li] = v;
  workgroupBarrier();
  for (var s = TPO / 2u; s > 0u; s >>= 1u) {
    if (t < s) { part[li] += part[li + s]; }
    workgroupBarrier();
  }
  let r = part[li - t];
  workgroupBarrier();
  return r;
}`;
}

// qw is read as 16-byte chunks: buildQuantSet pads it to whole chunks.
const QBINDINGS = `@group(0) @binding(1) var<storage, read> qw: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> qp: array<u32>;
@group(0) @binding(3) var<storage, read> qmeta: array<vec4<u32>>;`;

/** WGSL of the staging buffer `xsh` ([slots · k/4] vec4<f32>) and `stage_x`, when staged with schemes. */
function stagedDecl(
  k: number,
  schemes: readonly QuantScheme[] | undefined,
  staged: boolean,
  slots: number,
  wg: number,
  norm = false,
  int8 = false,
): string {
  if (!staged || !schemes) return "";
  return `${stagedArrays(k, schemes, slots, int8)}
${stageFn(k, schemes, wg, norm, int8)}`;
}

/**
 * WGSL of the workgroup arrays of `slots` staged rows of `k` activations: `xsh` ([slots · k/4] vec4<f32>, the
 * permuted f32 values) and with `int8` `xq` ([slots · k/16] vec4<u32>: the levels, four per word) and `xd`
 * ([slots · k/16] vec2<f32>: each block's scale and Σx̃, or at 8 bits each half block's scale and Σ levels),
 * `xsh` then only where an f16 scheme needs it.
 */
function stagedArrays(k: number, schemes: readonly QuantScheme[], slots: number, int8: boolean): string {
  const i8 = int8 ? i8Staging(k, schemes) : undefined;
  const out: string[] = [];
  if (!i8 || i8.f16) out.push(`var<workgroup> xsh: array<vec4<f32>, ${slots * (k / 4)}>;`);
  if (i8) {
    out.push(`var<workgroup> xq: array<vec4<u32>, ${slots * (k / 16)}>;`);
    out.push(`var<workgroup> xd: array<vec2<f32>, ${slots * (k / 16)}>;`);
  }
  return out.join("\n");
}

/**
 * Throws unless a kernel with a fused RMSNorm can be built: it needs the weight set's schemes, every one read in
 * 16-byte chunks (the staged path, which applies the norm), and the staging buffer.
 */
function checkNormFusable(
  label: string,
  k: number,
  schemes: readonly QuantScheme[] | undefined,
  staged: boolean,
) {
  if (!schemes || !staged || !schemes.every((sc) => chunked(sc, k))) {
    throw new RangeError(
      `Cannot build ${label} with a fused RMSNorm: it needs staged activations and schemes read in 16-byte ` +
        `chunks (2, 4, 8 bits with groups of whole chunks, or f16)`,
    );
  }
}

/**
 * Whether a quantized mat-vec or gate/up of weight set `set` (rows of `k` values, `shape`) can take its input's
 * RMSNorm fused in on `device`: every scheme read in 16-byte chunks, every matrix 16-byte aligned, and room to
 * stage the activations.
 */
export function qNormFusable(
  device: GPUDevice,
  set: { meta: Uint32Array; schemes: readonly QuantScheme[] },
  k: number,
  shape: MatvecShape,
): boolean {
  for (let i = 0; i < set.meta.length; i += 4) {
    if (set.meta[i] === 0) continue;
    if (set.meta[i + 2] % 4 !== 0) return false;
  }
  return k % 4 === 0 && set.schemes.every((sc) => chunked(sc, k)) &&
    qStagingPlan(device.limits.maxComputeWorkgroupStorageSize, shape, k, 1, set.schemes).staged;
}

/**
 * Workgroup memory of the staged activations of a kernel whose rows have `k` values and that stages `slots`
 * rows at once (the down projection: its k experts' inputs; others: 1): 4k bytes a row in f32; with `int8` and
 * a scheme of `schemes` staged as int8, 1.5k (levels, then a (scale, sum) pair per 16 values), plus the f32
 * copy where an f16 scheme needs it.
 */
export function qStagedBytes(k: number, slots = 1, schemes?: readonly QuantScheme[], int8 = false): number {
  const i8 = int8 && schemes ? i8Staging(k, schemes) : undefined;
  if (!i8) return slots * k * 4;
  return slots * (k + k / 2 + (i8.f16 ? 4 * k : 0));
}

/**
 * How a packed kernel (`shape`, rows of `k` values, `slots` rows staged at once, weight set `schemes`) stages
 * its activations within `limit` bytes of workgroup memory: int8 as `shape` asks where it fits, else f32 where
 * that fits (an int8 set with an f16 scheme stages both copies), else not at all. Returns the shape to build
 * with.
 */
export function qStagingPlan(
  limit: number,
  shape: MatvecShape,
  k: number,
  slots: number,
  schemes: readonly QuantScheme[] | undefined,
): { staged: boolean; shape: MatvecShape } {
  const fits = (int8: boolean) => qStagedBytes(k, slots, schemes, int8) + reduceBytes(shape) <= limit;
  if (!schemes) return { staged: false, shape };
  if (fits(shape.int8 ?? false)) return { staged: true, shape };
  if (shape.int8 && fits(false)) return { staged: true, shape: { ...shape, int8: false } };
  return { staged: false, shape };
}

/** Workgroup memory the reductions of a mat-vec take: two f32 per thread. */
function reduceBytes(shape: MatvecShape): number {
  return 2 * 4 * shape.tpo * shape.outs;
}

/** Shapes of a quantized linear layer. */
export interface QLinearParams {
  /** Output features N. */
  n: number;
  /** Input features K. */
  k: number;
  /** "store": y = α(xWᵀ); "add": y += α(xWᵀ). A bias, when any, is bound at 4. */
  mode: "store" | "add";
  /** A bias [N] f32 is bound at 4 (y moves to 5). */
  bias: boolean;
  /** Output scale α. */
  alpha: number;
  /** The schemes the weight set holds (each gets a branch with constant sizes); absent: any, sized at run time. */
  schemes?: readonly QuantScheme[];
  /**
   * The RMSNorm of x (this epsilon) fused in: x is the un-normalized input, the norm weight [K] f32 is bound
   * last, and each row's sums are scaled by its `1/rms`. Needs {@linkcode qNormFusable}.
   */
  normEps?: number;
}

/**
 * WGSL of the quantized mat-vec. Bindings: 0 x [R, K] f32; 1 qw; 2 qp; 3 meta (entry 0); (4 bias); y [R, N];
 * with `normEps` last the norm weight [K] f32. Grid: ceil(N / shape.outs) workgroups (2-D above the limit);
 * rows: `st.rows`. With `staged` (and schemes) each row's activations are first copied to workgroup memory
 * ({@linkcode qStagedBytes}).
 */
export function qgemvWgsl(p: QLinearParams, shape: MatvecShape = QGEMV_SHAPE, staged = false): string {
  checkK("the quantized mat-vec", p.k);
  checkMatvecShape("the quantized mat-vec", shape);
  const norm = p.normEps !== undefined;
  if (norm) checkNormFusable("the quantized mat-vec", p.k, p.schemes, staged);
  const wg = shape.outs * shape.tpo;
  const v = p.bias ? "(d + bias[n])" : "d";
  const val = p.alpha === 1 ? v : `${f32Lit(p.alpha)} * ${v}`;
  return `${prelude()}
const N: u32 = ${p.n}u;
const K: u32 = ${p.k}u;
const TPO: u32 = ${shape.tpo}u;
const TPR: u32 = TPO;
@group(0) @binding(0) var<storage, read> xa: array<vec4<f32>>;
${QBINDINGS}
${p.bias ? "@group(0) @binding(4) var<storage, read> bias: array<f32>;" : ""}
@group(0) @binding(${p.bias ? 5 : 4}) var<storage, read_write> y: array<f32>;
${norm ? `@group(0) @binding(${p.bias ? 6 : 5}) var<storage, read> gw: array<vec4<f32>>;` : ""}
${qdotWordsFn()}
${stagedDecl(p.k, p.schemes, staged, 1, wg, norm, shape.int8)}
${qdotFn(1, p.k, p.schemes, staged && p.schemes !== undefined, shape.tpo, shape)}
${reduce(wg)}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let wid = wg.x + wg.y * nwg.x;
  if (wid * ${shape.outs}u >= N) { return; }
  let t = li % TPO;
  let n = wid * ${shape.outs}u + li / TPO;
  let m = qmeta[0];
  for (var r = 0u; r < st.rows; r++) {
    ${
    norm
      ? `let inv = inverseSqrt(reduce_all(li, stage_x(m, r * K / 4u, 0u, li)) / ${f32Lit(p.k)} + ${
        f32Lit(p.normEps!)
      });`
      : staged && p.schemes
      ? "stage_x(m, r * K / 4u, 0u, li);\n    workgroupBarrier();"
      : ""
  }
    var acc = 0.0;
    if (n < N) { acc = qdot1(m, n, r * K, 0u, t); }
    let d = reduce_seg(li, t, acc)${norm ? " * inv" : ""};
    if (t == 0u && n < N) { ${p.mode === "add" ? `y[r * N + n] += ${val};` : `y[r * N + n] = ${val};`} }
  }
}`;
}

/** Shapes of the quantized expert gate/up projection. */
export interface QGateUpParams {
  /** Hidden size H (= K). */
  hidden: number;
  /** Expert width I; each expert's matrix is [2I, H]. */
  inter: number;
  /** Experts per row. */
  topK: number;
  /** The schemes the weight set holds (each gets a branch with constant sizes); absent: any, sized at run time. */
  schemes?: readonly QuantScheme[];
  /**
   * The RMSNorm of x (this epsilon) fused in: x is the un-normalized input, the norm weight [H] f32 is bound
   * last, and each row's gate and up sums are scaled by its `1/rms`. Needs {@linkcode qNormFusable}.
   */
  normEps?: number;
}

/**
 * WGSL of quantized gate/up. Bindings: 0 x [R, H]; 1 qw; 2 qp; 3 meta [E]; 4 ids [R, k] u32; 5 h [R k, I];
 * with `normEps` 6 the norm weight [H] f32. Grid: (ceil(I / shape.outs), rows · k). With `staged` (and schemes)
 * the row's activations are first copied to workgroup memory ({@linkcode qStagedBytes}).
 */
export function qGateUpWgsl(p: QGateUpParams, shape: MatvecShape = QGATEUP_SHAPE, staged = false): string {
  checkK("the quantized gate/up", p.hidden);
  checkMatvecShape("the quantized gate/up", shape);
  const norm = p.normEps !== undefined;
  if (norm) checkNormFusable("the quantized gate/up", p.hidden, p.schemes, staged);
  const wg = shape.outs * shape.tpo;
  return `${prelude()}
const K: u32 = ${p.hidden}u;
const I: u32 = ${p.inter}u;
const TOPK: u32 = ${p.topK}u;
const TPO: u32 = ${shape.tpo}u;
const TPR: u32 = TPO;
@group(0) @binding(0) var<storage, read> xa: array<vec4<f32>>;
${QBINDINGS}
@group(0) @binding(4) var<storage, read> ids: array<u32>;
@group(0) @binding(5) var<storage, read_write> h: array<f32>;
${norm ? "@group(0) @binding(6) var<storage, read> gw: array<vec4<f32>>;" : ""}
${qdotWordsFn()}
${stagedDecl(p.hidden, p.schemes, staged, 1, wg, norm, shape.int8)}
${qdotFn(2, p.hidden, p.schemes, staged && p.schemes !== undefined, shape.tpo, shape)}
${reduce(wg)}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let slot = wg.y;
  if (slot >= st.rows * TOPK) { return; }
  let r = slot / TOPK;
  let m = qmeta[ids[slot]];
  let t = li % TPO;
  let i = wg.x * ${shape.outs}u + li / TPO;
  ${
    norm
      ? `let inv = inverseSqrt(reduce_all(li, stage_x(m, r * K / 4u, 0u, li)) / ${f32Lit(p.hidden)} + ${
        f32Lit(p.normEps!)
      });`
      : staged && p.schemes
      ? "stage_x(m, r * K / 4u, 0u, li);\n  workgroupBarrier();"
      : ""
  }
  var gu0 = vec2<f32>(0.0);
  if (i < I) { gu0 = qdot2(m, i, I + i, r * K, 0u, t); }
  let gu = reduce_seg2(li, t, gu0.x, gu0.y);
  let gs = gu.x${norm ? " * inv" : ""};
  let us = gu.y${norm ? " * inv" : ""};
  if (t == 0u && i < I) { h[slot * I + i] = gs / (1.0 + exp(-gs)) * us; }
}`;
}

/** Shapes of the quantized expert down projection. */
export interface QDownParams {
  /** Hidden size H; each expert's matrix is [H, I]. */
  hidden: number;
  /** Expert width I (= K). */
  inter: number;
  /** Experts per row. */
  topK: number;
  /** Residual multiplier α. */
  alpha: number;
  /** The schemes the weight set holds (each gets a branch with constant sizes); absent: any, sized at run time. */
  schemes?: readonly QuantScheme[];
}

/**
 * WGSL of quantized down with the residual add: `x_r += α Σ_j w_rj · down_e(h[r k + j])`. Bindings: 0 h [R k, I];
 * 1 qw; 2 qp; 3 meta [E]; 4 ids [R, k]; 5 weights [R, k]; 6 x [R, H]. Grid: (ceil(H / shape.outs), rows). With
 * `staged` (and schemes) the row's k expert inputs are first copied to workgroup memory ({@linkcode qStagedBytes}).
 *
 * Thread `li` is lane `li % TPR` of output `(li / TPR) % OUTS` in team `li / (OUTS · TPR)`; team q sums experts
 * q, q + SPLIT, … of its outputs. Teams are whole runs of `OUTS · TPR` threads, so the threads of a warp (32) work
 * on one expert at a time and its scheme's branch is uniform across the warp (with teams inside an output's
 * threads, MxMoE's mixed down ran both branches: 0.377 against uniform w4g128's 0.306 ms per step on an H200).
 */
export function qDownWgsl(p: QDownParams, shape: MatvecShape = QDOWN_SHAPE, staged = false): string {
  checkK("the quantized down projection", p.inter);
  checkMatvecShape("the quantized down projection", shape);
  const wg = shape.outs * shape.tpo, split = shape.split ?? 1;
  const stage = staged && p.schemes !== undefined;
  return `${prelude()}
const H: u32 = ${p.hidden}u;
const K: u32 = ${p.inter}u;
const TOPK: u32 = ${p.topK}u;
const OUTS: u32 = ${shape.outs}u;
const WG: u32 = ${wg}u;
// Teams of OUTS · TPR threads sum different experts.
const SPLIT: u32 = ${split}u;
const TPR: u32 = ${shape.tpo / split}u;
@group(0) @binding(0) var<storage, read> xa: array<vec4<f32>>;
${QBINDINGS}
@group(0) @binding(4) var<storage, read> ids: array<u32>;
@group(0) @binding(5) var<storage, read> wts: array<f32>;
@group(0) @binding(6) var<storage, read_write> x: array<f32>;
${qdotWordsFn()}
${stage ? stagedArrays(p.inter, p.schemes!, p.topK, shape.int8 ?? false) : ""}
var<workgroup> dmeta: array<vec4<u32>, TOPK>;
var<workgroup> dwts: array<f32, TOPK>;
var<workgroup> part: array<f32, WG>;
${qdotFn(1, p.inter, p.schemes, stage, shape.tpo / split, shape)}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.y;
  if (r >= st.rows) { return; }
  let tt = li % TPR;
  let o = (li / TPR) % OUTS;
  let team = li / (OUTS * TPR);
  let c = wg.x * OUTS + o;
  ${stage ? downStaging(p.inter, p.topK, p.schemes!, wg, shape.int8) : DOWN_METAS}
  var acc = 0.0;
  if (c < H) {
    for (var j = team; j < TOPK; j += SPLIT) {
      acc += dwts[j] * qdot1(dmeta[j], c, (r * TOPK + j) * K, j * K / 4u, tt);
    }
  }
  // The lanes' sums, then team 0's first lane adds the other teams'.
  part[li] = acc;
  workgroupBarrier();
  for (var s = TPR / 2u; s > 0u; s >>= 1u) {
    if (tt < s) { part[li] += part[li + s]; }
    workgroupBarrier();
  }
  if (team == 0u && tt == 0u && c < H) {
    var d = 0.0;
    for (var q = 0u; q < SPLIT; q++) { d += part[q * OUTS * TPR + o * TPR]; }
    x[r * H + c] += ${f32Lit(p.alpha)} * d;
  }
}`;
}

/** WGSL: the row's experts' meta entries and routing weights into workgroup memory, read once for all threads. */
const DOWN_METAS = `for (var j = li; j < TOPK; j += WG) {
    let slot = r * TOPK + j;
    dmeta[j] = qmeta[ids[slot]];
    dwts[j] = wts[slot];
  }
  workgroupBarrier();`;

/** Activation vec4s a thread of the down projection loads before storing any (staging in rounds of this many). */
const STAGE_ROUND = 16;

/**
 * WGSL staging the down projection's `topK` expert inputs (rows of `k` values) in workgroup memory `xsh`, and the
 * meta entries: each thread's loads are issued before the meta entries are read and before any is stored, in
 * rounds of {@linkcode STAGE_ROUND}, so the copy waits for memory once per round (a loop over the experts waited
 * once per expert: the w4g128 down took 0.340–0.348 ms per step so, 0.320–0.329 with the loads first, on an
 * H200). Expert j's input is stored permuted for its scheme (vec4 i of chunk c at `j · k/4 + i · cpr + c`, as
 * `stage_x` does); for a scheme read word by word nothing is stored (its dot product reads `xa`).
 */
function downStaging(
  k: number,
  topK: number,
  schemes: readonly QuantScheme[],
  wg: number,
  int8 = false,
): string {
  const i8 = int8 ? i8Staging(k, schemes) : undefined;
  if (i8) return downStagingI8(k, topK, schemes, wg, i8);
  const k4 = k / 4, nper = Math.ceil(k4 / wg);
  const pairs: [number, number][] = [];
  for (let j = 0; j < topK; j++) for (let u = 0; u < nper; u++) pairs.push([j, u]);
  const layouts = stagingBranches(k, schemes);
  if (layouts.length === 0) return DOWN_METAS;
  const load = ([j, u]: [number, number]) => {
    const i = `li + ${u * wg}u`;
    return `let a${j}_${u} = xa[(r * TOPK + ${j}u) * ${k4}u + ${
      (u + 1) * wg <= k4 ? i : `min(${i}, ${k4 - 1}u)`
    }];`;
  };
  const store = ([j, u]: [number, number]) => {
    const branches = layouts.map(({ cond, nx }) =>
      `if (${cond}) { xsh[${j * k4}u + (i % ${nx}u) * ${k4 / nx}u + i / ${nx}u] = a${j}_${u}; }`
    );
    const body = `{ let m = dmeta[${j}u]; let i = li + ${u * wg}u; ${branches.join(" else ")} }`;
    return (u + 1) * wg <= k4 ? body : `if (li + ${u * wg}u < ${k4}u) ${body}`;
  };
  const out: string[] = [];
  for (let b = 0; b < pairs.length; b += STAGE_ROUND) {
    const round = pairs.slice(b, b + STAGE_ROUND);
    out.push(...round.map(load));
    // The meta entries load after the first round's activations are on their way.
    if (b === 0) out.push(DOWN_METAS);
    out.push(...round.map(store));
  }
  out.push("workgroupBarrier();");
  return out.join("\n  ");
}

/**
 * WGSL staging the down projection's `topK` expert inputs as int8 ({@linkcode i8StageBlock}): thread `li`
 * takes blocks li, li + wg, … of all experts' 32-value blocks, their loads issued (two blocks at a time) before
 * the meta entries are read; an f16 expert's blocks are stored as f32 (`xsh`, permuted as `stage_x` does), a
 * word-by-word expert's not at all.
 */
function downStagingI8(
  k: number,
  topK: number,
  schemes: readonly QuantScheme[],
  wg: number,
  i8: { bits: number[]; cond: string; f16: boolean },
): string {
  const k4 = k / 4, kb = k / 32, nb = topK * kb, nper = Math.ceil(nb / wg);
  // f16 rows (2 vec4s per chunk) keep f32 activations.
  const f16 = stagingBranches(k, schemes).find(({ nx }) => nx === 2);
  const out: string[] = [];
  const ROUND = 2;
  for (let u0 = 0; u0 < nper; u0 += ROUND) {
    const us = Array.from({ length: Math.min(ROUND, nper - u0) }, (_, i) => u0 + i);
    for (const u of us) {
      const bi = (u + 1) * wg <= nb ? `li + ${u * wg}u` : `min(li + ${u * wg}u, ${nb - 1}u)`;
      out.push(`let bi${u} = ${bi};`);
      for (let i = 0; i < 8; i++) {
        out.push(
          `let a${u}_${i} = xa[(r * TOPK + bi${u} / ${kb}u) * ${k4}u + (bi${u} % ${kb}u) * 8u + ${i}u];`,
        );
      }
    }
    if (u0 === 0) out.push(DOWN_METAS);
    for (const u of us) {
      const f = f16
        ? `if (${f16.cond}) { ${
          Array.from({ length: 8 }, (_, i) =>
            `xsh[j * ${k4}u + ((b * 8u + ${i}u) % 2u) * ${k4 / 2}u + (b * 8u + ${i}u) / 2u] = a${u}_${i};`)
            .join(" ")
        } } else `
        : "";
      const body = `{
    let j = bi${u} / ${kb}u;
    let b = bi${u} % ${kb}u;
    let m = dmeta[j];
    ${f}if (${i8.cond}) {
      let q0 = j * ${k / 16}u;
      ${Array.from({ length: 8 }, (_, i) => `let a${i} = a${u}_${i};`).join(" ")}
      ${i8StageBlock(k, i8.bits)}
    }
  }`;
      out.push((u + 1) * wg <= nb ? body : `if (li + ${u * wg}u < ${nb}u) ${body}`);
    }
  }
  out.push("workgroupBarrier();");
  return out.join("\n  ");
}

/** The quantized mat-vec program (`shape`: see {@linkcode qgemvWgsl}). */
export function qgemvProgram(
  device: GPUDevice,
  ring: StepRing,
  p: QLinearParams,
  shape: MatvecShape = QGEMV_SHAPE,
): Promise<Program> {
  const plan = qStagingPlan(device.limits.maxComputeWorkgroupStorageSize, shape, p.k, 1, p.schemes);
  return P.get(device, ring, "qgemv", qgemvWgsl(p, plan.shape, plan.staged), qLinearBindings(p));
}

/** `reads` read-only bindings, then one written. */
function readsThenWrite(reads: number): ("read" | "write")[] {
  return [...Array<"read">(reads).fill("read"), "write"];
}

/** Access of the bindings of a quantized linear layer (mat-vec or GEMM): x, qw, qp, meta, (bias), y. */
export function qLinearBindings(p: QLinearParams): ("read" | "write")[] {
  const access = readsThenWrite(p.bias ? 5 : 4);
  return p.normEps !== undefined ? [...access, "read"] : access;
}

/**
 * The quantized gate/up program (`shape`: see {@linkcode qGateUpWgsl}); its activations are staged where the set's
 * schemes are given and the device has the room, unless `allowStaging` is false.
 */
export function qGateUpProgram(
  device: GPUDevice,
  ring: StepRing,
  p: QGateUpParams,
  shape: MatvecShape = QGATEUP_SHAPE,
  allowStaging = true,
): Promise<Program> {
  const plan = qStagingPlan(device.limits.maxComputeWorkgroupStorageSize, shape, p.hidden, 1, p.schemes);
  // x, qw, qp, meta, ids; h; (norm weight).
  const access = readsThenWrite(5);
  return P.get(
    device,
    ring,
    "q-gate-up",
    qGateUpWgsl(p, plan.shape, allowStaging && plan.staged),
    p.normEps !== undefined ? [...access, "read"] : access,
  );
}

/**
 * The quantized down program (`shape`: see {@linkcode qDownWgsl}); its experts' inputs are staged where the set's
 * schemes are given and the device has the room, unless `allowStaging` is false.
 */
export function qDownProgram(
  device: GPUDevice,
  ring: StepRing,
  p: QDownParams,
  shape: MatvecShape = QDOWN_SHAPE,
  allowStaging = true,
): Promise<Program> {
  const plan = qStagingPlan(device.limits.maxComputeWorkgroupStorageSize, shape, p.inter, p.topK, p.schemes);
  // h, qw, qp, meta, ids, weights; x.
  return P.get(
    device,
    ring,
    "q-down",
    qDownWgsl(p, plan.shape, allowStaging && plan.staged),
    readsThenWrite(6),
  );
}

/** One matrix of a weight set: packed levels, or plain f16 bits ([rows, cols], cols even). */
export type QuantMatrix =
  | {
    rows: number;
    cols: number;
    bits: number;
    group: number;
    qweight: Uint32Array;
    scales: Uint16Array;
    mins: Uint16Array;
  }
  | { rows: number; cols: number; f16: Uint16Array };

/**
 * The qw, qp and meta arrays of a weight set of matrices laid one after another (qw padded to whole 16-byte
 * chunks), and the distinct schemes it holds (by bits, then group size).
 */
export function buildQuantSet(
  mats: QuantMatrix[],
): { qw: Uint32Array; qp: Uint32Array; meta: Uint32Array; schemes: QuantScheme[] } {
  let words = 0, params = 0;
  const entries: QuantMeta[] = [];
  for (const m of mats) {
    if ("f16" in m) {
      if (m.cols % 2 !== 0) {
        throw new RangeError(`Cannot store an f16 matrix with an odd row length ${m.cols}`);
      }
      entries.push({ bits: 16, group: m.cols, wordOffset: words, paramOffset: params });
      words += m.rows * m.cols / 2;
    } else {
      entries.push({ bits: m.bits, group: m.group, wordOffset: words, paramOffset: params });
      words += m.qweight.length;
      params += m.scales.length;
    }
  }
  const qw = new Uint32Array(Math.ceil(Math.max(1, words) / 4) * 4),
    qp = new Uint32Array(Math.max(1, params));
  mats.forEach((m, i) => {
    const e = entries[i];
    if ("f16" in m) {
      qw.set(new Uint32Array(m.f16.buffer, m.f16.byteOffset, m.f16.length / 2), e.wordOffset);
    } else {
      qw.set(m.qweight, e.wordOffset);
      for (let j = 0; j < m.scales.length; j++) qp[e.paramOffset + j] = m.scales[j] | (m.mins[j] << 16);
    }
  });
  return { qw, qp, meta: metaTable(entries), schemes: schemeSet(entries) };
}

/**
 * The distinct schemes of `schemes`, sorted by bits, then group size: weight sets holding the same schemes (in
 * whatever order) build the same kernels.
 */
export function schemeSet(schemes: Iterable<QuantScheme>): QuantScheme[] {
  const seen = new Map<string, QuantScheme>();
  for (const s of schemes) seen.set(`${s.bits}/${s.group}`, { bits: s.bits, group: s.group });
  return [...seen.values()].sort((a, b) => a.bits - b.bits || a.group - b.group);
}
