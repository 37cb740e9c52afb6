/**
 * Bytes of KV cache per token: what a compressed cache really stores (codes, scales and mins, low-rank factors,
 * outliers with their indices, the segment table, and the full-precision buffer), against a plain f16 cache.
 * Both backends follow the same streaming policy, so the bytes follow from the prompt length, the total length
 * and the prefill chunk alone ({@linkcode simulateSegments}).
 *
 * @module
 */

import { compressedBefore, gearLayout } from "../../kernels/gear_layout.ts";
import { isCompressed, type ResolvedKvCache } from "./kv_options.ts";

/** The model dimensions accounting needs. */
export interface KvShape {
  /** Decoder layers. */
  numLayers: number;
  /** Key/value heads. */
  numKvHeads: number;
  /** Head width. */
  headDim: number;
}

/** One compressed segment: tokens compressed together, with one low-rank factor pair per head. */
export interface Segment {
  /** First token. */
  start: number;
  /** Tokens (whole blocks). */
  length: number;
  /** Rank of its low-rank part (0 for quant). */
  rank: number;
}

/** Bytes per token of a plain cache of `dtype` (all layers, K and V). */
export function plainBytesPerToken(shape: KvShape, dtype: "f16" | "f32"): number {
  return shape.numLayers * 2 * shape.numKvHeads * shape.headDim * (dtype === "f16" ? 2 : 4);
}

/**
 * The segments and full-precision tokens after a prompt of `promptLength` tokens read in chunks of
 * `chunkRows` rows, then single-token steps up to `totalLength` tokens: every call compresses the whole
 * blocks it completed as one segment, with the prefill rank when it had more than one row.
 */
export function simulateSegments(
  kv: ResolvedKvCache,
  promptLength: number,
  totalLength: number,
  chunkRows: number,
): { segments: Segment[]; fpTokens: number } {
  if (!isCompressed(kv.mode)) return { segments: [], fpTokens: totalLength };
  const segments: Segment[] = [];
  const call = (pos: number, rows: number) => {
    const c0 = compressedBefore(pos, kv.buffer), c1 = compressedBefore(pos + rows, kv.buffer);
    if (c1 > c0) segments.push({ start: c0, length: c1 - c0, rank: rows > 1 ? kv.prefillRank : kv.rank });
  };
  for (let p = 0; p < promptLength; p += chunkRows) call(p, Math.min(chunkRows, promptLength - p));
  for (let p = promptLength; p < totalLength; p++) call(p, 1);
  return { segments, fpTokens: totalLength - compressedBefore(totalLength, kv.buffer) };
}

/**
 * Bytes the cache holds for `segments` plus `fpTokens` full-precision tokens of `fpDtype` (all layers, K and V).
 */
export function kvBytes(
  shape: KvShape,
  kv: ResolvedKvCache,
  segments: readonly Segment[],
  fpTokens: number,
  fpDtype: "f16" | "f32",
): number {
  const fp = fpTokens * plainBytesPerToken(shape, fpDtype);
  if (!isCompressed(kv.mode)) return fp;
  const l = gearLayout({
    batch: 1,
    nKV: shape.numKvHeads,
    hd: shape.headDim,
    capacity: kv.buffer,
    bits: kv.bits,
    group: kv.group,
    buffer: kv.buffer,
    rMax: Math.max(kv.rank, kv.prefillRank),
    outliers: kv.outliers,
    maxRows: 1,
  });
  const d = shape.headDim;
  let perLayer = 0;
  for (const s of segments) {
    const n = s.length;
    const perHead = 2 * n * l.W * 4 + // codes of K and V
      (n / l.group) * d * 4 + n * l.nGV * 4 + // scale/min pairs (f16 + f16)
      2 * (n * s.rank + d * s.rank * 2 + s.rank * 2) + // Q rows (int8), P and Q's column scales (f16)
      (n / l.group) * d * l.kK * 2 + n * l.mV * 2; // outliers: a u16 each (7-bit index, 9-bit value)
    perLayer += perHead * shape.numKvHeads + (n / kv.buffer) * 4; // + the segment table
  }
  return shape.numLayers * perLayer + fp;
}

/**
 * KV bytes per token after a generation that read `promptLength` tokens (in chunks of `chunkRows`) and holds
 * `totalLength` tokens, with the full-precision buffer in `fpDtype`.
 */
export function kvBytesPerToken(
  shape: KvShape,
  kv: ResolvedKvCache,
  promptLength: number,
  totalLength: number,
  chunkRows: number,
  fpDtype: "f16" | "f32",
): number {
  if (totalLength <= 0) return 0;
  if (!isCompressed(kv.mode)) return plainBytesPerToken(shape, kv.mode === "f32" ? "f32" : "f16");
  const { segments, fpTokens } = simulateSegments(kv, promptLength, totalLength, chunkRows);
  return kvBytes(shape, kv, segments, fpTokens, fpDtype) / totalLength;
}
