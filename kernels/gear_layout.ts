/**
 * Memory layout of a GEAR-compressed KV cache, shared by the WGSL kernels (`gear_compress.ts`,
 * `gear_attention.ts`) and their CPU references (`cpu/gear.ts`), so both read and write the same words.
 *
 * One layer's compressed part lives in one `u32` array, the *store*, with these sections (b = sequence,
 * h = KV head, bh = b·nKV + h, t = absolute position, T = token slots, a multiple of the block size):
 *
 * | section | shape | content |
 * | --- | --- | --- |
 * | codesK, codesV | [B, nKV, T, W] | b-bit codes of token t, channel c at bits (c·b) of the row's W words |
 * | parK | [B, nKV, T/g, hd] | keys: per channel c and group of g tokens, f16 scale (low) and f16 min (high) |
 * | parV | [B, nKV, T, nGV] | values: per token and group of gv channels, f16 scale and f16 min |
 * | qK, qV | [B, nKV, T, RW] | low-rank left factor Q (rows of the segment), rMax int8 per token, 4 per word |
 * | pK, pV | [B, nKV, nBlk, PW] | right factor P [hd, rMax] f16, then the rMax f16 column scales of Q, at the slot of the segment's first block |
 * | outK | [B, nKV, T/g, hd, kK] | key outliers of (group, channel), a u16 each (two per word): {@linkcode encodeOutlier} of token-in-group and value |
 * | outV | [B, nKV, T, 2·MW] | value outliers of a token, a u16 each (mV used, padded to whole words): channel-in-group and value |
 * | seg | [B, nBlk] | first block of the segment each block of sequence b belongs to |
 *
 * A key or value x is reconstructed as `code·scale + min + Σ_j q8[t, j]·qScale[j]·P[c, j] + outlier(t, c)`; the
 * outlier value stored is the correction `x − (code·scale + min)` at that entry, rounded to 4 significant bits
 * (an f16 without its 7 low mantissa bits). Q's columns are orthonormal over the segment, so each is stored as
 * int8 against its largest entry. Tokens not yet compressed stay in a full-precision ring buffer
 * [B, nKV, bufCap, hd] (f32, or f16 packed two per u32) at slot `t % bufCap`.
 *
 * @module
 */

/** What a compressed cache holds, before the layout is derived. */
export interface GearShape {
  /**
   * Sequences: lanes of a continuous batch, each at its own positions (decode rows of a batched step), or several
   * at the same positions (one call, grid z).
   */
  batch: number;
  /** Key/value heads. */
  nKV: number;
  /** Head width. */
  hd: number;
  /** Positions the cache holds. */
  capacity: number;
  /** Bits of a code: 2, 4 or 8. */
  bits: number;
  /** Key groups: g consecutive tokens of a channel; value groups: min(g, hd) consecutive channels of a token. */
  group: number;
  /** Tokens kept in full precision before a block of this many is compressed (multiple of 64 and of group). */
  buffer: number;
  /** Largest low-rank rank of any segment (0: no low-rank part). */
  rMax: number;
  /** Fraction of entries kept exactly as outliers (0: none). */
  outliers: number;
  /** Most rows one forward call appends (sizes the full-precision ring). */
  maxRows: number;
}

/** A {@linkcode GearShape} with every derived size and the word offset of every section of the store. */
export interface GearLayout extends GearShape {
  /** Words of one token's codes: ceil(hd·bits / 32). */
  W: number;
  /** Codes per word. */
  perWord: number;
  /** Value channel group: min(group, hd). */
  gv: number;
  /** Value groups per token. */
  nGV: number;
  /** Key outliers per (token group, channel). */
  kK: number;
  /** Value outliers per full value group. */
  kVFull: number;
  /** Value outliers in the last value group (which may be shorter). */
  kVLast: number;
  /** Value outliers per token. */
  mV: number;
  /** Words of one token's value outliers: ceil(mV / 2). */
  MW: number;
  /** Words of one token's Q row: ceil(rMax / 4). */
  RW: number;
  /** Words of one P matrix and its Q column scales: ceil((hd + 1)·rMax / 2). */
  PW: number;
  /** Blocks the store holds. */
  nBlk: number;
  /** Token slots: nBlk · buffer. */
  T: number;
  /** Slots of the full-precision ring. */
  bufCap: number;
  /** Word offsets of the sections. */
  off: {
    codesK: number;
    codesV: number;
    parK: number;
    parV: number;
    qK: number;
    qV: number;
    pK: number;
    pV: number;
    outK: number;
    outV: number;
    seg: number;
  };
  /** Words of the whole store. */
  words: number;
}

/** Most outliers one group may keep (bounded so the selection runs in registers on the GPU). */
export const MAX_GROUP_OUTLIERS = 16;
/** Largest rank of the low-rank part. */
export const MAX_RANK = 8;
/** Tokens per attention tile; the buffer must be a multiple of it. */
export const GEAR_TILE = 64;

/** Outliers kept in a group of `len` entries at fraction `s`: max(1, round(s·len)) when s > 0, else 0. */
export function outlierCount(s: number, len: number): number {
  return s > 0 ? Math.max(1, Math.round(s * len)) : 0;
}

/** Checks `s` and derives the layout. Throws a RangeError for shapes the kernels cannot serve. */
export function gearLayout(s: GearShape): GearLayout {
  const int = (name: string, v: number, min: number) => {
    if (!Number.isInteger(v) || v < min) {
      throw new RangeError(`Cannot lay out the GEAR cache: ${name} must be an integer >= ${min}, got ${v}`);
    }
  };
  int("batch", s.batch, 1);
  int("nKV", s.nKV, 1);
  int("hd", s.hd, 2);
  int("capacity", s.capacity, 1);
  int("maxRows", s.maxRows, 1);
  int("rMax", s.rMax, 0);
  if (s.hd > 65535) throw new RangeError(`Cannot lay out the GEAR cache: head width ${s.hd} exceeds 65535`);
  if (![2, 4, 8].includes(s.bits)) {
    throw new RangeError(`Cannot lay out the GEAR cache: bits must be 2, 4 or 8, got ${s.bits}`);
  }
  if (![32, 64, 128].includes(s.group)) {
    throw new RangeError(`Cannot lay out the GEAR cache: group must be 32, 64 or 128, got ${s.group}`);
  }
  if (!Number.isInteger(s.buffer) || s.buffer % GEAR_TILE !== 0 || s.buffer % s.group !== 0) {
    throw new RangeError(
      `Cannot lay out the GEAR cache: buffer ${s.buffer} must be a multiple of ${GEAR_TILE} and of the group ${s.group}`,
    );
  }
  if (s.outliers > 0 && s.hd % 2 !== 0) {
    throw new RangeError(`Cannot lay out the GEAR cache: outliers need an even head width, got ${s.hd}`);
  }
  if (s.rMax > MAX_RANK) {
    throw new RangeError(`Cannot lay out the GEAR cache: rank ${s.rMax} exceeds ${MAX_RANK}`);
  }
  if (!(s.outliers >= 0 && s.outliers < 1)) {
    throw new RangeError(`Cannot lay out the GEAR cache: outliers must be in [0, 1), got ${s.outliers}`);
  }
  const perWord = 32 / s.bits;
  const W = Math.ceil(s.hd / perWord);
  const gv = Math.min(s.group, s.hd);
  const nGV = Math.ceil(s.hd / gv);
  const lastLen = s.hd - (nGV - 1) * gv;
  const kK = outlierCount(s.outliers, s.group);
  const kVFull = outlierCount(s.outliers, gv);
  const kVLast = outlierCount(s.outliers, lastLen);
  if (kK > MAX_GROUP_OUTLIERS || kVFull > MAX_GROUP_OUTLIERS) {
    throw new RangeError(
      `Cannot lay out the GEAR cache: outlier fraction ${s.outliers} keeps more than ${MAX_GROUP_OUTLIERS} entries per group`,
    );
  }
  const mV = kVFull * (nGV - 1) + kVLast;
  const MW = Math.ceil(mV / 2);
  const RW = Math.ceil(s.rMax / 4);
  const PW = Math.ceil(((s.hd + 1) * s.rMax) / 2);
  const nBlk = Math.ceil(s.capacity / s.buffer);
  const T = nBlk * s.buffer;
  const bufCap = s.buffer * Math.ceil((s.maxRows + s.buffer - 1) / s.buffer);
  const BH = s.batch * s.nKV;
  let o = 0;
  const take = (n: number) => {
    const at = o;
    o += n;
    return at;
  };
  const off = {
    codesK: take(BH * T * W),
    codesV: take(BH * T * W),
    parK: take(BH * (T / s.group) * s.hd),
    parV: take(BH * T * nGV),
    qK: take(BH * T * RW),
    qV: take(BH * T * RW),
    pK: take(BH * nBlk * PW),
    pV: take(BH * nBlk * PW),
    outK: take(Math.ceil((BH * (T / s.group) * s.hd * kK) / 2)),
    outV: take(BH * T * MW),
    seg: take(s.batch * nBlk),
  };
  return { ...s, W, perWord, gv, nGV, kK, kVFull, kVLast, mV, MW, RW, PW, nBlk, T, bufCap, off, words: o };
}

/** Largest f16 magnitude an outlier keeps (bits 0x7b80): the largest e5m3 value below f16's infinity. */
const OUTLIER_MAG_MAX = 0xf7;

/**
 * An outlier as a u16: `index` (< 128: token in its key group, or channel in its value group) in the low 7
 * bits, and the f16 bits of `valueBits` rounded to the nearest value with 3 mantissa bits in the high 9 (sign,
 * exponent and mantissa keep their f16 places: the f16 of the stored value is `entry & 0xff80`).
 */
export function encodeOutlier(index: number, valueBits: number): number {
  const mag = Math.min(((valueBits & 0x7fff) + 0x40) >>> 7, OUTLIER_MAG_MAX);
  return (index & 0x7f) | (mag << 7) | (valueBits & 0x8000);
}

/** WGSL of {@linkcode encodeOutlier} (`enc_out`) and of reading the u16 at halfword `i` of a word section. */
export const OUTLIER_WGSL = /* wgsl */ `
fn enc_out(index: u32, value_bits: u32) -> u32 {
  let mag = min(((value_bits & 0x7fffu) + 0x40u) >> 7u, ${OUTLIER_MAG_MAX}u);
  return (index & 0x7fu) | (mag << 7u) | (value_bits & 0x8000u);
}
fn out_value(e: u32) -> f32 { return unpack2x16float(e & 0xff80u).x; }
`;

/**
 * Tokens compressed before a forward call whose first row is at `pos`: every whole block before it (the call
 * before it compressed each block it completed).
 */
export function compressedBefore(pos: number, buffer: number): number {
  return Math.floor(pos / buffer) * buffer;
}

/** Words of the full-precision ring buffer of one of K or V: [batch, nKV, bufCap, hd] in `dtype`. */
export function ringWords(l: GearLayout, dtype: "f32" | "f16"): number {
  const n = l.batch * l.nKV * l.bufCap * l.hd;
  return dtype === "f16" ? Math.ceil(n / 2) : n;
}

/** The seeded start of the power iteration: a value in [0, 1) for (seed, kind, head, block, index). */
export function powerStart(seed: number, kind: number, head: number, block: number, index: number): number {
  const h = hash32(
    (index + hash32((block + hash32((head * 2 + kind + hash32(seed >>> 0)) >>> 0)) >>> 0)) >>> 0,
  );
  return (h >>> 8) / 16777216;
}

/** A 32-bit integer mixer (the same arithmetic as the WGSL `hash32` of the compress kernel). */
export function hash32(x: number): number {
  let v = x >>> 0;
  v ^= v >>> 16;
  v = Math.imul(v, 0x7feb352d) >>> 0;
  v ^= v >>> 15;
  v = Math.imul(v, 0x846ca68b) >>> 0;
  v ^= v >>> 16;
  return v >>> 0;
}

/** WGSL of {@linkcode hash32} and {@linkcode powerStart}. */
export const HASH_WGSL = /* wgsl */ `
fn hash32(x: u32) -> u32 {
  var v = x;
  v ^= v >> 16u;
  v *= 0x7feb352du;
  v ^= v >> 15u;
  v *= 0x846ca68bu;
  v ^= v >> 16u;
  return v;
}
fn power_start(seed: u32, kind: u32, head: u32, block: u32, index: u32) -> f32 {
  let h = hash32(index + hash32(block + hash32(head * 2u + kind + hash32(seed))));
  return f32(h >> 8u) / 16777216.0;
}
`;
