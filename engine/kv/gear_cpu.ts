/**
 * The compressed KV cache of the CPU decoder, with the streaming-buffer policy both backends follow:
 *
 * - a forward call appends its rows' keys and values to a full-precision ring (per layer, [nKV, bufCap, hd]);
 * - its attention reads the compressed tokens [0, ⌊pos/buffer⌋·buffer) and the ring;
 * - after the call, the whole blocks of `buffer` tokens it completed are compressed together as one segment
 *   (`gearCompressRef`), with the prefill rank when the call had more than one row (a prompt chunk) and the
 *   decode rank otherwise, and the mode's fit (`gear_fit.ts`). Prompts are read in chunks of `chunkRows`, as
 *   the GPU decoder reads them.
 *
 * The cache keeps the packed store (what the GPU holds and what accounting counts) and, for speed, a dense f32
 * view of what it stands for (the reconstruction of compressed tokens, the exact values of the others), which
 * the decoder's attention reads.
 *
 * @module
 */

import { gearCompressRef, gearReconstructRef } from "../../kernels/cpu/gear.ts";
import { compressedBefore, type GearLayout, gearLayout } from "../../kernels/gear_layout.ts";
import { kvBytes, type KvShape, plainBytesPerToken, type Segment } from "./accounting.ts";
import { gearFitPolicy } from "./gear_fit.ts";
import { isCompressed, type ResolvedKvCache } from "./kv_options.ts";

/** A compressed KV cache of one sequence on the CPU. */
export class GearCpuCache {
  /** The configuration. */
  readonly kv: ResolvedKvCache;
  /** The store layout (batch 1). */
  readonly layout: GearLayout;
  /** Positions the cache holds. */
  readonly capacity: number;
  /** Per layer: the packed store. */
  readonly stores: Uint32Array[];
  /** Per layer: full-precision rings of K and V [nKV, bufCap, hd]. */
  readonly ringK: Float32Array[];
  /** See {@linkcode ringK}. */
  readonly ringV: Float32Array[];
  /** Per layer: dense K and V [nKV, capacity, hd] that attention reads (reconstructed where compressed). */
  readonly viewK: Float32Array[];
  /** See {@linkcode viewK}. */
  readonly viewV: Float32Array[];
  /** Segments compressed so far. */
  readonly segments: Segment[] = [];
  /** Tokens appended so far. */
  length = 0;
  readonly #shape: KvShape;

  /** A cache for `capacity` positions of a model of `shape`, for calls of at most `maxRows` rows. */
  constructor(shape: KvShape, kv: ResolvedKvCache, capacity: number, maxRows: number) {
    if (!isCompressed(kv.mode)) {
      throw new RangeError(`Cannot make a compressed cache for the plain ${kv.mode} mode`);
    }
    this.kv = kv;
    this.capacity = capacity;
    this.#shape = shape;
    this.layout = gearLayout({
      batch: 1,
      nKV: shape.numKvHeads,
      hd: shape.headDim,
      capacity,
      bits: kv.bits,
      group: kv.group,
      buffer: kv.buffer,
      rMax: Math.max(kv.rank, kv.prefillRank),
      outliers: kv.outliers,
      maxRows,
    });
    const L = shape.numLayers, l = this.layout;
    const ring = l.nKV * l.bufCap * l.hd, view = l.nKV * capacity * l.hd;
    this.stores = Array.from({ length: L }, () => new Uint32Array(l.words));
    this.ringK = Array.from({ length: L }, () => new Float32Array(ring));
    this.ringV = Array.from({ length: L }, () => new Float32Array(ring));
    this.viewK = Array.from({ length: L }, () => new Float32Array(view));
    this.viewV = Array.from({ length: L }, () => new Float32Array(view));
  }

  /** Most rows one call may append. */
  get maxRows(): number {
    return this.layout.maxRows;
  }

  /** Appends layer `layer`'s keys and values `k`, `v` [rows, nKV, hd] of positions pos0.. . */
  append(layer: number, k: Float32Array, v: Float32Array, pos0: number, rows: number): void {
    const l = this.layout, d = l.hd;
    if (rows > l.maxRows) {
      throw new RangeError(
        `Cannot append ${rows} rows to the compressed cache: a call holds at most ${l.maxRows}`,
      );
    }
    if (pos0 + rows > this.capacity) {
      throw new RangeError(`Cannot append positions up to ${pos0 + rows}: the cache holds ${this.capacity}`);
    }
    for (let r = 0; r < rows; r++) {
      const t = pos0 + r;
      for (let h = 0; h < l.nKV; h++) {
        const src = (r * l.nKV + h) * d;
        const ringAt = (h * l.bufCap + (t % l.bufCap)) * d, viewAt = (h * this.capacity + t) * d;
        this.ringK[layer].set(k.subarray(src, src + d), ringAt);
        this.ringV[layer].set(v.subarray(src, src + d), ringAt);
        this.viewK[layer].set(k.subarray(src, src + d), viewAt);
        this.viewV[layer].set(v.subarray(src, src + d), viewAt);
      }
    }
  }

  /** Ends a forward call of `rows` rows at pos0: compresses the blocks it completed, in every layer. */
  endCall(pos0: number, rows: number): void {
    const l = this.layout;
    this.length = Math.max(this.length, pos0 + rows);
    const c0 = compressedBefore(pos0, l.buffer), c1 = compressedBefore(pos0 + rows, l.buffer);
    if (c1 <= c0) return;
    const rank = rows > 1 ? this.kv.prefillRank : this.kv.rank;
    for (let layer = 0; layer < this.stores.length; layer++) {
      const store = this.stores[layer];
      gearCompressRef(
        l,
        store,
        this.ringK[layer],
        this.ringV[layer],
        c0,
        c1,
        rank,
        this.kv.loops,
        this.kv.seed,
        undefined,
        gearFitPolicy(this.kv.mode),
      );
      for (let h = 0; h < l.nKV; h++) {
        const at = (h * this.capacity + c0) * l.hd;
        this.viewK[layer].set(gearReconstructRef(l, store, 0, 0, h, c0, c1), at);
        this.viewV[layer].set(gearReconstructRef(l, store, 1, 0, h, c0, c1), at);
      }
    }
    this.segments.push({ start: c0, length: c1 - c0, rank });
  }

  /** Bytes the cache holds now (all layers). */
  bytes(): number {
    const fp = this.length - compressedBefore(this.length, this.layout.buffer);
    return kvBytes(this.#shape, this.kv, this.segments, fp, "f32");
  }

  /** Bytes of a plain f16 cache of the same tokens. */
  bytesF16(): number {
    return this.length * plainBytesPerToken(this.#shape, "f16");
  }
}
