/**
 * The compressed KV cache on WebGPU, as the GPU decoder uses it: per layer a store (`gear_layout.ts`) and
 * full-precision rings of K and V, the q/k stage writing into the ring, GEAR attention (one workgroup per
 * (head, row) for prompt chunks, split-K + merge for decode steps) and the compress dispatch that follows each
 * layer's attention when the call completed a block. Everything is made once, at load; per-call values come
 * from the step slot (pos, rows), so decode steps are still encoded many per submission with no readback.
 *
 * @module
 */

import type { QkNorm } from "../config.ts";
import {
  GEAR_SPLIT_TIERS,
  GEAR_WIDE_MAX_HD,
  GEAR_WIDE_MAX_SPLITS,
  type GearAttentionParams,
  gearAttentionProgram,
  gearMergeProgram,
  gearPartialFloats,
} from "../../kernels/gear_attention.ts";
import { gearCompressProgram, gearScratchFloats } from "../../kernels/gear_compress.ts";
import {
  compressedBefore,
  GEAR_TILE,
  type GearLayout,
  gearLayout,
  ringWords,
} from "../../kernels/gear_layout.ts";
import { type Dispatch, type Program, type StepRing, storageBuffer } from "../../kernels/gpu.ts";
import { qkRopeProgram } from "../../kernels/qk_rope.ts";
import { mergeGroupsX } from "../../kernels/split_merge.ts";
import { GpuError } from "../errors.ts";
import type { DType } from "../types.ts";
import { gearFitPolicy } from "./gear_fit.ts";
import type { ResolvedKvCache } from "./kv_options.ts";

/** Model dimensions the GPU cache needs. */
export interface GearGpuShape {
  /** Query heads. */
  nH: number;
  /** Key/value heads. */
  nKV: number;
  /** Head width. */
  hd: number;
  /** Positions the cache holds. */
  capacity: number;
  /** Sequences decoded together (lanes; continuous batching). */
  lanes: number;
  /** Rows of the largest call (prefill chunk). */
  maxRows: number;
  /** Score scale. */
  scale: number;
  /** q/k norm of the q/k stage. */
  qkNorm: QkNorm;
  /** RMSNorm epsilon of the q/k stage. */
  eps: number;
  /** q/k/v clamp (0: none). */
  clip: number;
  /** Precision of the full-precision ring (the model's dtype). */
  dtype: DType;
}

/** One layer's buffers and dispatches. */
export interface GearGpuLayer {
  /** Full-precision rings [nKV, bufCap, hd]. */
  ringK: GPUBuffer;
  /** See {@linkcode ringK}. */
  ringV: GPUBuffer;
  /** The packed store. */
  store: GPUBuffer;
  /** Tokens per compressed block. */
  buffer: number;
  /** The q/k stage (norms, rope) appending k and v to the rings. */
  qkRope: Dispatch;
  /** Attention of prompt rows (grid y = rows). */
  attention: Dispatch;
  /** Decode attention: split-K over tiles of 64 keys, then the merge. */
  split: Dispatch;
  /** {@linkcode split} by the 256-thread kernel: up to GEAR_WIDE_MAX_SPLITS tiles (short contexts). */
  splitWide: Dispatch | undefined;
  /** See {@linkcode split}. */
  merge: Dispatch;
  /**
   * {@linkcode split} over several tiles per workgroup, with its merge, per tier of GEAR_SPLIT_TIERS the cache
   * can reach (long contexts), in the same order.
   */
  splitTiers: { minTiles: number; tiles: number; split: Dispatch; merge: Dispatch }[];
  /** Compression of the blocks a multi-row call completed (prefill rank). */
  compressPrefill: Dispatch;
  /** Compression of the block a single-row call completed (decode rank). */
  compressDecode: Dispatch;
}

/** Programs shared by every layer (attention per sliding window). */
interface GearPrograms {
  qkRope: Program;
  compressPrefill: Program;
  compressDecode: Program;
  merge: Program;
  /** The merges of the multi-tile split kernels, per tier of GEAR_SPLIT_TIERS the cache can reach. */
  mergeTiers: Program[];
  attention: Map<number, GearAttentionPrograms>;
}

/** The attention programs of one sliding window. */
interface GearAttentionPrograms {
  full: Program;
  split: Program;
  wide: Program | undefined;
  /** The multi-tile split kernels, per tier of GEAR_SPLIT_TIERS the cache can reach. */
  tiers: Program[];
}

/** The compressed KV cache of a GPU decoder: shared programs and buffers, and a builder of per-layer parts. */
export class GearGpu {
  /** The store layout (one sequence per lane). */
  readonly layout: GearLayout;
  /** The configuration. */
  readonly kv: ResolvedKvCache;
  readonly #device: GPUDevice;
  readonly #shape: GearGpuShape;
  readonly #track: (b: GPUBuffer) => GPUBuffer;
  readonly #programs: GearPrograms;
  readonly #ring: StepRing;
  readonly #scratch: GPUBuffer;
  readonly #partials: GPUBuffer;

  private constructor(init: {
    device: GPUDevice;
    ring: StepRing;
    shape: GearGpuShape;
    kv: ResolvedKvCache;
    layout: GearLayout;
    track: (b: GPUBuffer) => GPUBuffer;
    programs: GearPrograms;
    scratch: GPUBuffer;
    partials: GPUBuffer;
  }) {
    this.#device = init.device;
    this.#ring = init.ring;
    this.#shape = init.shape;
    this.kv = init.kv;
    this.layout = init.layout;
    this.#track = init.track;
    this.#programs = init.programs;
    this.#scratch = init.scratch;
    this.#partials = init.partials;
  }

  /** Compiles the programs and allocates the shared buffers; `track` registers buffers for disposal. */
  static async create(
    device: GPUDevice,
    ring: StepRing,
    shape: GearGpuShape,
    kv: ResolvedKvCache,
    track: (b: GPUBuffer) => GPUBuffer,
  ): Promise<GearGpu> {
    const layout = gearLayout({
      batch: shape.lanes,
      nKV: shape.nKV,
      hd: shape.hd,
      capacity: shape.capacity,
      bits: kv.bits,
      group: kv.group,
      buffer: kv.buffer,
      rMax: Math.max(kv.rank, kv.prefillRank),
      outliers: kv.outliers,
      maxRows: shape.maxRows,
    });
    // The full-precision buffer is a ring: the q/k stage writes position p into slot p mod its capacity.
    const qkRope = await qkRopeProgram(device, ring, {
      nH: shape.nH,
      nKV: shape.nKV,
      hd: shape.hd,
      capacity: layout.bufCap,
      ring: true,
      qkNorm: shape.qkNorm,
      eps: shape.eps,
      clip: shape.clip,
      kvDtype: shape.dtype,
    });
    // Decode steps complete at most one block per sequence: their program has the segment length fixed.
    const compress = (rank: number, oneBlock: boolean) =>
      gearCompressProgram(device, ring, {
        layout,
        rank,
        loops: kv.loops,
        seed: kv.seed,
        ringDtype: shape.dtype,
        fit: gearFitPolicy(kv.mode),
        oneBlock,
      });
    const splitParams = GearGpu.#attentionParams(layout, shape, 0, true);
    const programs: GearPrograms = {
      qkRope,
      compressPrefill: await compress(kv.prefillRank, false),
      compressDecode: await compress(kv.rank, true),
      merge: await gearMergeProgram(device, ring, splitParams),
      mergeTiers: await Promise.all(
        GearGpu.#tiers(shape).map((t) =>
          gearMergeProgram(device, ring, { ...splitParams, tilesPerSplit: t.tiles })
        ),
      ),
      attention: new Map<number, GearAttentionPrograms>(),
    };
    const maxBinding = device.limits.maxStorageBufferBindingSize;
    if (layout.words * 4 > maxBinding) {
      throw new GpuError(
        `Cannot load the model: a layer's compressed KV cache of ${shape.lanes} lanes × ${shape.capacity} positions (${
          layout.words * 4
        } bytes) exceeds the adapter's maxStorageBufferBindingSize of ${maxBinding}; lower lanes or contextLength`,
      );
    }
    const scratch = track(storageBuffer(device, "gear-scratch", gearScratchFloats(layout) * 4));
    const partials = track(storageBuffer(device, "gear-partials", gearPartialFloats(splitParams) * 4));
    return new GearGpu({ device, ring, shape, kv, layout, track, programs, scratch, partials });
  }

  /** The tiers of GEAR_SPLIT_TIERS a decode step of this cache can reach (their kernels are built). */
  static #tiers(s: GearGpuShape) {
    const most = Math.floor((s.capacity - 1) / GEAR_TILE) + 1;
    return GEAR_SPLIT_TIERS.filter((t) => most >= t.minTiles);
  }

  static #attentionParams(
    l: GearLayout,
    s: GearGpuShape,
    window: number,
    split: boolean,
  ): GearAttentionParams {
    return {
      layout: l,
      nH: s.nH,
      scale: s.scale,
      window,
      ringDtype: s.dtype,
      rowsPerSeq: split ? 1 : s.maxRows,
      split,
    };
  }

  /**
   * Buffers and dispatches of layer `index` (sliding window `window`, 0: none): the q/k stage reads `qkv`,
   * `rope` and `qkNorm` and writes `q`; attention reads `q` and writes `attn` ([rows, nH·hd]).
   */
  async layer(
    index: number,
    window: number,
    b: { qkv: GPUBuffer; rope: GPUBuffer; qkNorm: GPUBuffer; q: GPUBuffer; attn: GPUBuffer },
  ): Promise<GearGpuLayer> {
    const device = this.#device, l = this.layout, s = this.#shape, P = this.#programs;
    let att = P.attention.get(window);
    if (!att) {
      att = {
        full: await gearAttentionProgram(device, this.#ring, GearGpu.#attentionParams(l, s, window, false)),
        split: await gearAttentionProgram(device, this.#ring, GearGpu.#attentionParams(l, s, window, true)),
        // The wide kernel holds a head in one workgroup's threads: heads over GEAR_WIDE_MAX_HD use the other.
        wide: l.hd <= GEAR_WIDE_MAX_HD
          ? await gearAttentionProgram(device, this.#ring, {
            ...GearGpu.#attentionParams(l, s, window, true),
            wide: true,
          })
          : undefined,
        tiers: await Promise.all(
          GearGpu.#tiers(s).map((t) =>
            gearAttentionProgram(device, this.#ring, {
              ...GearGpu.#attentionParams(l, s, window, true),
              tilesPerSplit: t.tiles,
            })
          ),
        ),
      };
      P.attention.set(window, att);
    }
    const ringBytes = ringWords(l, s.dtype) * 4;
    const ringK = this.#track(storageBuffer(device, `L${index}.gear-ring-k`, ringBytes));
    const ringV = this.#track(storageBuffer(device, `L${index}.gear-ring-v`, ringBytes));
    const store = this.#track(storageBuffer(device, `L${index}.gear-store`, l.words * 4));
    // A split-K attention program writing the partials, and a merge of them into attn.
    const splitK = (prog: Program, name: string): Dispatch => ({
      program: prog,
      group: prog.bind(`L${index}.gear-attention-${name}`, [b.q, store, ringK, ringV, this.#partials]),
      grid: [s.nH, 1, 1],
    });
    const merge = (prog: Program, name: string): Dispatch => ({
      program: prog,
      group: prog.bind(`L${index}.gear-attention-${name}`, [this.#partials, b.attn]),
      grid: [mergeGroupsX(s.nH, s.hd), 1, 1],
    });
    const compress = (prog: Program): Dispatch => ({
      program: prog,
      group: prog.bind(`L${index}.gear-compress`, [store, ringK, ringV, this.#scratch]),
      grid: [l.nKV, 2, 1],
    });
    return {
      ringK,
      ringV,
      store,
      buffer: l.buffer,
      qkRope: {
        program: P.qkRope,
        group: P.qkRope.bind(`L${index}.qk-rope-ring`, [b.qkv, b.rope, b.qkNorm, b.q, ringK, ringV]),
        grid: [s.nH + s.nKV, 1, 1],
      },
      attention: {
        program: att.full,
        group: att.full.bind(`L${index}.gear-attention`, [b.q, store, ringK, ringV, b.attn]),
        grid: [s.nH, 1, 1],
      },
      split: splitK(att.split, "split"),
      splitWide: att.wide && splitK(att.wide, "split-wide"),
      merge: merge(P.merge, "merge"),
      splitTiers: GearGpu.#tiers(s).map((t, i) => ({
        ...t,
        split: splitK(att.tiers[i], `split-t${t.tiles}`),
        merge: merge(P.mergeTiers[i], `merge-t${t.tiles}`),
      })),
      compressPrefill: compress(P.compressPrefill),
      compressDecode: compress(P.compressDecode),
    };
  }

  /**
   * Calls `emit` with layer `L`'s attention dispatches for `rows` rows at `pos`, then its compression. With
   * `batched` (the positions of the rows of a batched step, `pos` their largest) each row is a decode step of its
   * own lane: split-K over the largest position's tiles, and compression when any row completes a block.
   */
  static emitAttention(
    L: GearGpuLayer,
    rows: number,
    pos: number,
    emit: (d: Dispatch) => void,
    batched?: readonly number[],
  ): void {
    // Split-K: the 256-thread kernel over few tiles (latency), the 64-thread one over many (throughput), over
    // several tiles per workgroup at long contexts (the last tier of GEAR_SPLIT_TIERS reached).
    const tiles = Math.floor(pos / GEAR_TILE) + 1;
    const tier = L.splitTiers.findLast((t) => tiles >= t.minTiles);
    const split = tier?.split ?? (tiles <= GEAR_WIDE_MAX_SPLITS ? L.splitWide : undefined) ?? L.split;
    const merge = tier?.merge ?? L.merge;
    const splits = tier ? Math.floor(pos / (GEAR_TILE * tier.tiles)) + 1 : tiles;
    if (batched) {
      emit({ ...split, grid: [split.grid[0], rows, splits] });
      emit({ ...merge, grid: [merge.grid[0], rows, 1] });
      if (batched.some((p) => compressedBefore(p + 1, L.buffer) > compressedBefore(p, L.buffer))) {
        emit({ ...L.compressDecode, grid: [L.compressDecode.grid[0], 2, rows] });
      }
      return;
    }
    if (rows === 1) {
      emit({ ...split, grid: [split.grid[0], 1, splits] });
      emit(merge);
    } else {
      emit({ ...L.attention, grid: [L.attention.grid[0], rows, 1] });
    }
    if (compressedBefore(pos + rows, L.buffer) > compressedBefore(pos, L.buffer)) {
      emit(rows > 1 ? L.compressPrefill : L.compressDecode);
    }
  }
}
