/**
 * The decoder on WebGPU. Weights, KV cache, activations, routing and sampling all live on the GPU; the CPU
 * only encodes dispatches and reads generated tokens back in batches:
 *
 * - every pipeline and bind group is made once, here, at load; per-dispatch values (position, rows, step)
 *   come from slots of a uniform ring selected by dynamic offsets;
 * - a decode step is: embedding of the token the previous step sampled (read from the token ring on the GPU),
 *   per layer RMSNorm → qkv → q/k norm + rope + KV append → attention → o-proj (+residual) → RMSNorm →
 *   router → expert gate/up → (shared expert) → expert down (+residual), then final norm → LM head → sampler;
 * - several steps are encoded into one submission, and each one's tokens come back through its own staging
 *   buffer; Deno's readback blocks until the queue is empty and resolves ~10 ms later, so the next submission's
 *   first steps are encoded while the GPU runs the current one and submitted inside that wait, the rest chunk
 *   by chunk while the GPU runs them (see #pump); the caller discards what follows a stop;
 * - continuous batching: the KV cache, the token ring, the prompt ids and the sampler parameters have one lane
 *   per sequence that may generate at once; a decode step has one row per running sequence (its position,
 *   lane and step come from the step slot, see STEP_WGSL), new sequences' prefills go into the next submission
 *   and finished ones drop out of the next, so sequences join and leave while others decode.
 *
 * Buffers (R = rows of the largest prefill chunk, k = experts per token):
 * | name | shape | dtype |
 * | --- | --- | --- |
 * | x, xn | [R, H] | f32 (residual stream, normalized) |
 * | qkv | [R, (nH + 2 nKV) hd] | f32 |
 * | q, attn | [R, nH hd] | f32 |
 * | ids, wts | [R, k] | u32, f32 (router output) |
 * | sg | [R] | f32 (shared-expert gate) |
 * | h | [R·k, max(I, D)] | f32 (expert hidden) |
 * | hs | [R, S] | f32 (shared-expert hidden) |
 * | logits | [L, V] | f32 (L = rows the LM head may produce at once) |
 * | K, V cache per layer | [lanes, nKV, capacity, hd] | f32 or f16 packed in u32 |
 * | tokens (ring) | [lanes, capacity + 1] | u32 (token of each generation step) |
 * | prompt ids | [lanes, capacity] | u32 |
 * | sampler | [lanes] × 16 B | temperature f32, top-k u32, top-p f32, seed u32 |
 *
 * @module
 */

import { attentionCombineProgram, attentionProgram, partialFloats } from "../kernels/attention.ts";
import { mergeGroupsX } from "../kernels/split_merge.ts";
import { embedProgram } from "../kernels/embed.ts";
import {
  DOWN_SHAPE,
  downProgram,
  GATEUP_SHAPE,
  type GateUpParams,
  gateUpProgram,
} from "../kernels/experts.ts";
import {
  type Dispatch,
  encodeDispatch,
  type GpuContext,
  grid2d,
  MAX_BATCH_ROWS,
  readBuffer,
  StepRing,
  type StepValues,
  storageBuffer,
  uploadBuffer,
  writeAligned,
} from "../kernels/gpu.ts";
import { gemmProgram, GEMV_SHAPE, gemvProgram, gemvShape, type LinearParams } from "../kernels/linear.ts";
import {
  groupedGemmProgram,
  maxTiles,
  moeCombineProgram,
  moeSortProgram,
  TILE_COLS,
} from "../kernels/moe_grouped.ts";
import { copyLastRowProgram } from "../kernels/copy_row.ts";
import { qgemmProgram, qGroupedGemmProgram } from "../kernels/qgemm.ts";
import { qkRopeProgram } from "../kernels/qk_rope.ts";
import {
  buildQuantSet,
  QDOWN_SHAPE,
  qDownProgram,
  QGATEUP_SHAPE,
  type QGateUpParams,
  qGateUpProgram,
  qgemvProgram,
  qgemvShape,
  qNormFusable,
  type QuantMatrix,
  type QuantScheme,
  schemeSet,
} from "../kernels/qmatvec.ts";
import { rmsNormProgram } from "../kernels/rms_norm.ts";
import { countsStride, topKProgram } from "../kernels/router.ts";
import { sampleProgram, SAMPLER_UNIFORM_BYTES, samplerUniform } from "../kernels/sample.ts";
import type { Checkpoint } from "./checkpoint.ts";
import { type ModelConfig, ropeTables } from "./config.ts";
import { GpuError } from "./errors.ts";
import type { ResolvedGenerateOptions, TokenSource } from "./generation.ts";
import { GearGpu, type GearGpuLayer } from "./kv/gear_gpu.ts";
import type { ResolvedKvCache } from "./kv/kv_options.ts";
import { iksPositionsOf, routerRowStats } from "./inspect.ts";
import { fusionCandidates, jensenShannon } from "./lfd.ts";
import type { DType, InspectOptions, PromptInspection } from "./types.ts";
import { planWeights, type WeightSpec } from "./weights.ts";
import type { MatvecShape } from "../kernels/wgsl.ts";

/** Options of {@linkcode GpuDecoder.create}. */
export interface GpuDecoderOptions {
  /** Precision of weights and KV cache. */
  dtype: DType;
  /** Positions the KV cache holds. */
  contextLength: number;
  /** Rows of one prefill chunk (default 256). */
  prefillRows?: number;
  /** Use the tiled GEMM for prefill (default: on hardware adapters, off on software ones). */
  gemm?: boolean;
  /**
   * Decode steps fuse each layer's RMSNorms into the mat-vecs that read them (q/k/v; router, gate/up and shared
   * gate/up), so no norm dispatch runs there (default true). Layers whose packed weights cannot take it (a
   * scheme read word by word, no room to stage the activations) keep the norm dispatch.
   */
  fuseNorms?: boolean;
  /**
   * Build every MoE layer's packed expert mat-vec kernel of a projection (gate/up, down) for one set of schemes,
   * the union of the layers': one program per projection for the whole model instead of one per distinct set
   * (default true). Branches a layer never takes cost little; a different program per layer costs more (an
   * H200 at OLMoE's shape decoded a reader MxMoE 3.25 allocation at 858 tok/s so, 846 without).
   */
  unifyExpertKernels?: boolean;
  /**
   * When the next generation batch goes to the GPU relative to the readback of the current one (default
   * "call"). Deno's `mapAsync` waits (blocking) for every submitted command buffer, then sleeps 10 ms before it
   * resolves, the JavaScript thread free meanwhile: "call" submits the next batch's first steps right after the
   * `mapAsync` call returns, "timer" from a zero-delay timer set after it, "off" once the readback resolves (the
   * GPU idles through the sleep). Which of the first two overlaps the sleep depends on whether the runtime polls
   * the operation inside the call (`bench/readback_overlap.ts` tells); either way the tokens are the same.
   */
  readbackOverlap?: ReadbackOverlap;
  /**
   * Shapes of the packed mat-vec kernels, for tuning: fields that replace those of the defaults
   * (`qgemvShape(n)` for linear layers, QGATEUP_SHAPE and QDOWN_SHAPE for experts).
   */
  matvecShapes?: {
    qgemv?: Partial<MatvecShape>;
    qGateUp?: Partial<MatvecShape>;
    qDown?: Partial<MatvecShape>;
  };
  /**
   * Run prefill MoE blocks as grouped GEMMs over the tokens of each expert (default false: on an H100 the
   * per-pair mat-vecs, served from L2, are still faster than the present grouped kernel).
   */
  groupedMoe?: boolean;
  /** A compressed KV cache (quant, gear-l, gear; engine/kv); default: the plain cache in `dtype`. */
  kvCache?: ResolvedKvCache;
  /**
   * Sequences decoded together (continuous batching, default 1, at most MAX_BATCH_ROWS): the KV cache and the
   * token ring hold this many lanes, and the decode steps of the sequences generating at once share GPU
   * passes.
   */
  lanes?: number;
}

/** When a generation batch is submitted relative to the readback before it (GpuDecoderOptions.readbackOverlap). */
export type ReadbackOverlap = "off" | "call" | "timer";

/**
 * Steps of the adaptive submission schedule: the first token alone, then batches long enough that the GPU is
 * still busy with one when the readback before it resolves (~10 ms after the GPU finished the batch before, in
 * Deno) and the head of the next is encoded: 16 steps of the OLMoE shape take ~20 ms on an H200. Each readback
 * costs the GPU ~0.3 ms when the next batch is submitted during its wait (ReadbackOverlap "call"), so past 64
 * steps longer batches gain little and make a stop take effect later.
 */
const ADAPTIVE_BATCHES = [1, 16, 64];
/** Keys per workgroup of decode attention (split-K). */
const ATTENTION_SPLIT = 64;
/**
 * Fewest pending decode steps for which a generation first brings a stale GPU back to its fast state: measured
 * on an H200 a step took 15.2 ms in the slow state and 3.8 ms in the fast one (OLMoE shape), so ~100 steps lose
 * about what the warm-up (WARM_UP_MS of keep_awake.ts, 1 s) costs.
 */
const WARM_UP_MIN_STEPS = 100;
/** Most decode steps in one submission. */
const MAX_BATCH = 256;
/**
 * Most decode rows (steps × sequences) in one batch submission with adaptive sizing: with many sequences a
 * submission has few steps, so a new sequence's prefill waits behind little work already in flight.
 */
const ROWS_PER_SUBMIT = 64;

interface LayerDispatches {
  /** The compressed KV cache's buffers and dispatches (replacing the plain cache and attention). */
  gear: GearGpuLayer | undefined;
  attnNorm: Dispatch;
  qkv: Dispatch;
  qkRope: Dispatch;
  attention: Dispatch;
  /** Decode (one row): split-K attention over key blocks of ATTENTION_SPLIT, then the merge. */
  attentionSplit: Dispatch;
  attentionMerge: Dispatch;
  o: Dispatch;
  ffnNorm: Dispatch;
  /** Decode: the q/k/v mat-vec with the attention norm fused in (it reads x; no attnNorm dispatch). */
  fusedQkv: Dispatch | undefined;
  /** Decode: the FFN's first mat-vecs with the FFN norm fused in (they read x; no ffnNorm dispatch). */
  fusedFfn:
    | { router: Dispatch | undefined; gateUp: Dispatch; sharedGateUp: Dispatch | undefined }
    | undefined;
  /** MoE layers: router logits (and the shared gate logit) [R, E (+1)], then the top-k step. */
  router: { logits: Linear; topK: Dispatch } | undefined;
  gateUp: Dispatch;
  sharedGateUp: Dispatch | undefined;
  down: Dispatch;
  /** Packed layers: the shared expert's down projection as its own dispatch (k = 1, weight = its gate). */
  sharedDown: Dispatch | undefined;
  /** The experts' gate/up workgroup count along x, and rows per token (k) along y. */
  gateUpX: number;
  k: number;
  sharedX: number;
  /** Prefill path of a MoE layer: sort pairs by expert, grouped GEMMs, combine; the shared expert apart. */
  grouped: {
    sort: Dispatch;
    gateUp: Dispatch;
    down: Dispatch;
    combine: Dispatch;
    sharedDown: Dispatch | undefined;
    gateUpX: number;
    downX: number;
  } | undefined;
}

/** A linear layer's programs for both shapes (decode mat-vec, prefill GEMM) bound to its buffers. */
interface Linear {
  gemv: Dispatch;
  /** The mat-vec with its input's RMSNorm fused in (reading the un-normalized x), where one was asked for. */
  fused: Dispatch | undefined;
  gemm: Dispatch;
  n: number;
  /** Packed (quantized) weights: the dequantizing mat-vec serves every row count. */
  packed: boolean;
}

/** A sequence of the batch (continuous batching; see GpuDecoder.produce). */
interface Member {
  /** Its lane of the KV cache, the token ring and the sampler parameters. */
  lane: number;
  ids: readonly number[];
  options: ResolvedGenerateOptions;
  /** Steps to produce. */
  total: number;
  /** First step not yet submitted (0: the prefill is to come). */
  next: number;
  /** Steps read back. */
  delivered: number;
  /** Token batches read back, not yet taken by the consumer. */
  ready: Uint32Array[];
  /** Wakes the consumer waiting for tokens. */
  wake: (() => void) | undefined;
  error: unknown;
  /** The consumer stopped: no more steps are submitted, read-back tokens are dropped. */
  closed: boolean;
}

/** A batch submission in flight: each member's new tokens at `offset` (u32s) of `staging`. */
interface Flight {
  parts: { member: Member; offset: number; count: number }[];
  staging: GPUBuffer;
  bytes: number;
}

/**
 * A batch submission being encoded: its sequences, each one's steps [first, end) (decode steps from `from`,
 * after its prefill), and how far its decode steps are encoded.
 */
interface Building extends Flight {
  running: Member[];
  first: Map<Member, number>;
  from: Map<Member, number>;
  end: Map<Member, number>;
  /** Decode steps of the batch (the longest of its sequences' ranges), and those encoded so far. */
  span: number;
  t: number;
  /** Next step-ring slot. */
  slot: number;
  /** The encoder holding the prefills, until the first chunk takes it. */
  enc: GPUCommandEncoder | undefined;
  /** Slots set since the last chunk (the prefills'). */
  slots: [number, StepValues][];
}

/** Encoded decode steps of a batch: one command buffer and the step-ring slots it reads. */
interface Chunk {
  command: GPUCommandBuffer;
  slots: [number, StepValues][];
  steps: number;
  /** It ends the batch (the token copies are in it). */
  last: boolean;
}

/**
 * The lanes of a decoder: `acquire` takes one (a generation, a logits or inspection call), `acquireAll` takes
 * every lane (runs that need the GPU state to themselves). Waiters are served in arrival order, so a waiting
 * `acquireAll` is not starved by later single requests.
 */
export class LanePool {
  readonly #free: number[];
  readonly #size: number;
  readonly #waiters: { all: boolean; resolve: (lane: number) => void }[] = [];

  /** A pool of lanes 0..size-1, all free. */
  constructor(size: number) {
    this.#size = size;
    this.#free = Array.from({ length: size }, (_, i) => i);
  }

  /** Lanes free now. */
  get free(): number {
    return this.#free.length;
  }

  /** Resolves with a lane once one is free (and every earlier waiter was served). */
  acquire(): Promise<number> {
    return new Promise((resolve) => {
      this.#waiters.push({ all: false, resolve });
      this.#serve();
    });
  }

  /** Resolves once every lane is ours; returns the function that gives them back. */
  async acquireAll(): Promise<() => void> {
    await new Promise<number>((resolve) => {
      this.#waiters.push({ all: true, resolve });
      this.#serve();
    });
    let done = false;
    return () => {
      if (done) return;
      done = true;
      for (let i = 0; i < this.#size; i++) this.#free.push(i);
      this.#serve();
    };
  }

  /** Gives `lane` back. */
  release(lane: number): void {
    this.#free.push(lane);
    this.#serve();
  }

  #serve(): void {
    while (this.#waiters.length > 0) {
      const w = this.#waiters[0];
      if (w.all ? this.#free.length < this.#size : this.#free.length === 0) return;
      this.#waiters.shift();
      if (w.all) {
        this.#free.length = 0;
        w.resolve(-1);
      } else {
        this.#free.sort((a, b) => a - b);
        w.resolve(this.#free.shift()!);
      }
    }
  }
}

/**
 * Encodes a copy of `bytes` of `src` into a new readback buffer at the end of `enc`; after the submission,
 * the returned function maps it and yields the bytes (and frees the buffer).
 */
function copyOut(
  device: GPUDevice,
  enc: GPUCommandEncoder,
  src: GPUBuffer,
  bytes: number,
): () => Promise<ArrayBuffer> {
  const size = Math.ceil(bytes / 4) * 4;
  const staging = device.createBuffer({
    label: "readback",
    size,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  enc.copyBufferToBuffer(src, 0, staging, 0, size);
  return async () => {
    try {
      await staging.mapAsync(GPUMapMode.READ);
      return staging.getMappedRange().slice(0, bytes);
    } finally {
      staging.destroy();
    }
  };
}

/** The WebGPU decoder of one model. */
export class GpuDecoder implements TokenSource {
  /** The architecture. */
  readonly config: ModelConfig;
  /** Weight and cache precision. */
  readonly dtype: DType;
  /** Positions the KV cache holds. */
  readonly contextLength: number;
  /** Bytes of GPU memory held by weights. */
  readonly weightBytes: number;
  readonly #ctx: GpuContext;
  readonly #device: GPUDevice;
  readonly #ring: StepRing;
  readonly #R: number;
  readonly #logitRows: number;
  readonly #useGemm: boolean;
  readonly #overlap: ReadbackOverlap;
  readonly #buffers: GPUBuffer[];
  readonly #b: Record<string, GPUBuffer>;
  readonly #embed: Dispatch;
  readonly #layers: LayerDispatches[];
  readonly #layerLinears: { qkv: Linear; o: Linear }[];
  readonly #finalNorm: Dispatch;
  readonly #lmHead: Linear;
  readonly #lmHeadLast: Dispatch;
  /** What layer fused decoding binds: the LM head weight, the final norm, the copy of the fused row. */
  readonly #fuse: { lmW: GPUBuffer; norm: Dispatch; copy: Dispatch };
  /** Fused-logits dispatches by α (the α is compiled into the mat-vec). */
  readonly #fuseHeads = new Map<number, Dispatch>();
  /** During a generation with layer fused decoding: the layer and the head dispatch of its α. */
  #lfd: { layer: number; head: Dispatch } | undefined;
  readonly #sample: Dispatch;
  /** Sequences decoded together (lanes of the KV cache and the token ring). */
  readonly lanes: number;
  readonly #lanes: LanePool;
  /** The sequences of the batch. */
  readonly #members = new Set<Member>();
  readonly #encodeStats = { ms: 0, steps: 0, submitMs: 0 };
  /** Readback buffers of batch submissions not in flight. */
  readonly #stagingPool: GPUBuffer[] = [];
  #pumping = false;
  /** While a chunk of a batch is encoded: the step-ring slots it sets, written again when it is submitted. */
  #recording: [number, StepValues][] | undefined;
  /** A sequence joined since the last batch submission (the next ones start small again). */
  #joined = false;
  /** Index into ADAPTIVE_BATCHES of the next batch submission's size. */
  #schedule = 0;
  #disposed = false;

  private constructor(init: {
    config: ModelConfig;
    dtype: DType;
    contextLength: number;
    lanes: number;
    ctx: GpuContext;
    ring: StepRing;
    R: number;
    logitRows: number;
    useGemm: boolean;
    buffers: GPUBuffer[];
    b: Record<string, GPUBuffer>;
    embed: Dispatch;
    layers: LayerDispatches[];
    layerLinears: { qkv: Linear; o: Linear }[];
    finalNorm: Dispatch;
    lmHead: Linear;
    lmHeadLast: Dispatch;
    fuse: { lmW: GPUBuffer; norm: Dispatch; copy: Dispatch };
    sample: Dispatch;
    weightBytes: number;
    overlap: ReadbackOverlap;
  }) {
    this.config = init.config;
    this.dtype = init.dtype;
    this.contextLength = init.contextLength;
    this.lanes = init.lanes;
    this.#lanes = new LanePool(init.lanes);
    this.#ctx = init.ctx;
    this.#device = init.ctx.device;
    this.#ring = init.ring;
    this.#R = init.R;
    this.#logitRows = init.logitRows;
    this.#useGemm = init.useGemm;
    this.#buffers = init.buffers;
    this.#b = init.b;
    this.#embed = init.embed;
    this.#layers = init.layers;
    this.#layerLinears = init.layerLinears;
    this.#finalNorm = init.finalNorm;
    this.#lmHead = init.lmHead;
    this.#lmHeadLast = init.lmHeadLast;
    this.#fuse = init.fuse;
    this.#sample = init.sample;
    this.weightBytes = init.weightBytes;
    this.#overlap = init.overlap;
  }

  /** Uploads the weights of `ckpt` and builds every pipeline and bind group. */
  static async create(ctx: GpuContext, ckpt: Checkpoint, options: GpuDecoderOptions): Promise<GpuDecoder> {
    const c = ckpt.config;
    const device = ctx.device;
    const cap = options.contextLength;
    const R = Math.max(1, Math.min(options.prefillRows ?? 256, cap));
    const logitRows = Math.max(
      1,
      Math.min(R, Math.floor(device.limits.maxStorageBufferBindingSize / (c.vocabSize * 4))),
    );
    const useGemm = options.gemm ?? !ctx.isFallback;
    const lanes = options.lanes ?? 1;
    if (!Number.isInteger(lanes) || lanes < 1 || lanes > Math.min(MAX_BATCH_ROWS, R)) {
      throw new RangeError(
        `Cannot load the model: lanes must be an integer in [1, ${
          Math.min(MAX_BATCH_ROWS, R)
        }], got ${lanes}`,
      );
    }
    if (logitRows < lanes) {
      throw new GpuError(
        `Cannot load the model: the logits of ${lanes} lanes exceed the adapter's maxStorageBufferBindingSize`,
      );
    }
    // Slots of one submission: the prefill chunks of every lane, a sampling step each, and the decode steps.
    const ring = new StepRing(device, MAX_BATCH + lanes * (Math.ceil(cap / R) + 1) + 2);
    const buffers: GPUBuffer[] = [];
    const track = (b: GPUBuffer) => (buffers.push(b), b);
    const plan = planWeights(ckpt);
    device.pushErrorScope("out-of-memory");
    device.pushErrorScope("validation");
    try {
      const decoder = await GpuDecoder.#build(ctx, ckpt, options, {
        ring,
        buffers,
        track,
        plan,
        R,
        logitRows,
        useGemm,
      });
      // The load kept the main thread busy: bring the GPU back to its fast state now rather than at the first
      // generation (kernels/keep_awake.ts).
      await ctx.keepAwake?.warmUp();
      return decoder;
    } catch (e) {
      for (const buf of buffers) buf.destroy();
      ring.buffer.destroy();
      throw e;
    } finally {
      const validation = await device.popErrorScope();
      const oom = await device.popErrorScope();
      if (oom || validation) {
        for (const buf of buffers) buf.destroy();
        // deno-lint-ignore no-unsafe-finally
        throw new GpuError(`Cannot load the model on the GPU: ${(oom ?? validation)!.message}`);
      }
    }
  }

  static async #build(
    ctx: GpuContext,
    ckpt: Checkpoint,
    options: GpuDecoderOptions,
    env: {
      ring: StepRing;
      buffers: GPUBuffer[];
      track: (b: GPUBuffer) => GPUBuffer;
      plan: ReturnType<typeof planWeights>;
      R: number;
      logitRows: number;
      useGemm: boolean;
    },
  ): Promise<GpuDecoder> {
    const c = ckpt.config;
    const device = ctx.device;
    const dtype = options.dtype;
    const cap = options.contextLength;
    const { ring, buffers, track, plan, R, logitRows, useGemm } = env;
    const fuseNorms = options.fuseNorms ?? true;
    const qGateUpShape: MatvecShape = { ...QGATEUP_SHAPE, ...options.matvecShapes?.qGateUp };
    const qDownShape: MatvecShape = { ...QDOWN_SHAPE, ...options.matvecShapes?.qDown };
    const H = c.hiddenSize, hd = c.headDim, nH = c.numHeads, nKV = c.numKvHeads, V = c.vocabSize;
    const qDim = nH * hd, kvDim = nKV * hd, qkvDim = qDim + 2 * kvDim;
    const k = c.topK;
    const I = c.expertIntermediateSize, S = c.sharedExpertIntermediateSize, D = c.denseIntermediateSize;
    const maxBinding = device.limits.maxStorageBufferBindingSize;
    let weightBytes = 0;

    /** Uploads a weight in `prec` (norms, biases and routers stay f32). */
    const upload = async (label: string, spec: WeightSpec, prec: DType): Promise<GPUBuffer> => {
      const elements = spec.shape.reduce((a, b) => a * b, 1);
      const bytes = elements * (prec === "f16" ? 2 : 4);
      if (bytes > maxBinding) {
        throw new GpuError(
          `Cannot load weight ${label}: ${bytes} bytes exceed the adapter's maxStorageBufferBindingSize of ${maxBinding}`,
        );
      }
      const buf = track(storageBuffer(device, label, bytes));
      for (const part of spec.parts) {
        const data = prec === "f16" ? await ckpt.readF16Bits(part.tensor) : await ckpt.readF32(part.tensor);
        writeAligned(device, buf, part.offset * (prec === "f16" ? 2 : 4), data);
      }
      weightBytes += bytes;
      return buf;
    };
    const act = (label: string, floats: number) =>
      track(storageBuffer(device, label, Math.max(1, floats) * 4));
    /**
     * A packed weight set of `spec` (undefined when no part is packed): consecutive parts form matrices of
     * `rows` rows each (an expert's gate and up, or all of q/k/v); a matrix is packed, or plain f16.
     */
    const packedSet = async (label: string, spec: WeightSpec, rows: number) => {
      if (!spec.parts.some((p) => ckpt.info(p.tensor).dtype === "PACKED")) return undefined;
      const cols = spec.shape[spec.shape.length - 1];
      const mats: QuantMatrix[] = [];
      let i = 0;
      while (i < spec.parts.length) {
        const parts = [];
        let r = 0;
        while (r < rows && i < spec.parts.length) {
          parts.push(spec.parts[i]);
          r += spec.parts[i++].elements / cols;
        }
        const packed = await Promise.all(
          parts.map((p) => ckpt.info(p.tensor).dtype === "PACKED" ? ckpt.readPacked(p.tensor) : undefined),
        );
        if (packed.every((m) => m === undefined)) {
          const f16 = new Uint16Array(rows * cols);
          let o = 0;
          for (const p of parts) {
            const v = await ckpt.readF16Bits(p.tensor);
            f16.set(v, o);
            o += v.length;
          }
          mats.push({ rows, cols, f16 });
        } else if (
          packed.every((m) => m !== undefined && m.bits === packed[0]!.bits && m.group === packed[0]!.group)
        ) {
          const ms = packed as NonNullable<(typeof packed)[number]>[];
          const cat = <T extends Uint32Array | Uint16Array>(xs: T[], make: (n: number) => T): T => {
            const out = make(xs.reduce((a, x) => a + x.length, 0));
            let o = 0;
            for (const x of xs) out.set(x, o), o += x.length;
            return out;
          };
          mats.push({
            rows,
            cols,
            bits: ms[0].bits,
            group: ms[0].group,
            qweight: cat(ms.map((m) => m.qweight), (n) => new Uint32Array(n)),
            scales: cat(ms.map((m) => m.scales), (n) => new Uint16Array(n)),
            mins: cat(ms.map((m) => m.mins), (n) => new Uint16Array(n)),
          });
        } else {
          throw new GpuError(
            `Cannot load ${label}: the parts of one matrix use different quantization schemes`,
          );
        }
      }
      const set = buildQuantSet(mats);
      // The meta table and schemes only (not the weights) for the fusion check after upload.
      const tables = { meta: set.meta, schemes: set.schemes };
      weightBytes += set.qw.byteLength + set.qp.byteLength;
      return {
        qw: track(uploadBuffer(device, `${label}.qw`, set.qw)),
        qp: track(uploadBuffer(device, `${label}.qp`, set.qp)),
        meta: track(uploadBuffer(device, `${label}.meta`, set.meta)),
        schemes: set.schemes,
        /**
         * Whether mat-vecs of `shape` over this set, built for `schemes` (default: its own), can take their
         * input's RMSNorm fused in.
         */
        normFusable: (shape: MatvecShape, schemes: readonly QuantScheme[] = tables.schemes) =>
          fuseNorms && qNormFusable(device, { meta: tables.meta, schemes }, cols, shape),
      };
    };
    /**
     * The schemes of the routed experts' `key` ("gate_up" or "down", rows of `cols` values) over every MoE layer
     * with packed experts, sorted: every layer's expert kernel of the projection is built for them, one program
     * for the whole model. Undefined with `unifyExpertKernels: false` or where no layer's experts are packed.
     */
    const unifiedExperts = (key: "gate_up" | "down", cols: number): QuantScheme[] | undefined => {
      if (options.unifyExpertKernels === false) return undefined;
      const all: QuantScheme[] = [];
      for (let l = 0; l < c.numLayers; l++) {
        const spec = c.layers[l].moe ? plan.layers[l].get(key) : undefined;
        if (!spec || !spec.parts.some((p) => ckpt.quantized.has(p.tensor))) continue;
        for (const p of spec.parts) {
          // A packed set's plain matrices are f16 "groups" of a whole row (buildQuantSet).
          all.push(ckpt.quantized.get(p.tensor) ?? { bits: 16, group: cols });
        }
      }
      return all.length === 0 ? undefined : schemeSet(all);
    };
    const guUnified = unifiedExperts("gate_up", H);
    const dnUnified = unifiedExperts("down", I);

    // --- activations, cache and small state ---
    const lanes = options.lanes ?? 1;
    // One lane per sequence decoded at once: K and V caches [lanes, nKV, cap, hd] per layer (a compressed cache
    // checks its own store).
    const kvBytes = lanes * nKV * cap * hd * (dtype === "f16" ? 2 : 4);
    if (!options.kvCache && kvBytes > maxBinding) {
      throw new GpuError(
        `Cannot load the model: a layer's KV cache of ${lanes} lanes × ${cap} positions (${kvBytes} bytes) exceeds the adapter's maxStorageBufferBindingSize of ${maxBinding}; lower lanes or contextLength`,
      );
    }
    // Packed experts run prefill as grouped GEMMs unless disabled; plain ones only when asked.
    const groupedAny = options.groupedMoe ?? ckpt.quantization !== undefined;
    const b: Record<string, GPUBuffer> = {
      x: act("x", R * H),
      xn: act("xn", R * H),
      xlast: act("xlast", H),
      xfuse: act("lfd-row", H),
      // Tokens routed to each expert since load: [layers] blocks of countsStride(E) bytes, u32 [E] each.
      expertCounts: track(storageBuffer(device, "expert-counts", c.numLayers * countsStride(c.numExperts))),
      qkv: act("qkv", R * qkvDim),
      q: act("q", R * qDim),
      attn: act("attn", R * qDim),
      routerLogits: act("router-logits", R * (c.numExperts + 1)),
      attnPartials: act(
        "attention-partials",
        lanes * nH * Math.ceil(cap / ATTENTION_SPLIT) * partialFloats(hd),
      ),
      ids: act("router-ids", R * k),
      wts: act("router-weights", R * k),
      sg: act("shared-gate", R),
      zeros: track(uploadBuffer(device, "zero-ids", new Uint32Array(R))),
      ones: track(uploadBuffer(device, "unit-weights", new Float32Array(R).fill(1))),
      h: act("expert-hidden", Math.max(R * k * I, R * D)),
      hs: act("shared-hidden", R * Math.max(S, 1)),
      perm: act("moe-perm", R * k),
      tiles: act("moe-tiles", maxTiles(R * k, c.numExperts) * 4),
      ntiles: act("moe-tile-count", 4),
      gu: act("moe-gate-up", groupedAny ? R * k * 2 * I : 1),
      ysl: act("moe-expert-out", groupedAny ? R * k * H : 1),
      logits: act("logits", logitRows * V),
      // The sampler's scratch rows (its top-k/top-p candidates), [logitRows, V] f32.
      samplerScratch: act("sampler-scratch", logitRows * V),
      inputIds: track(storageBuffer(device, "input-ids", R * 4)),
      // Prompt ids [lanes, cap] u32: each lane's prompt, written before its prefill.
      promptIds: track(storageBuffer(device, "prompt-ids", lanes * cap * 4)),
      // Token ring [lanes, cap + 1] u32: the token of each generation step of each lane's sequence.
      tokens: track(storageBuffer(device, "token-ring", lanes * (cap + 1) * 4)),
      // Sampler parameters [lanes] × SAMPLER_UNIFORM_BYTES.
      sampler: track(storageBuffer(device, "sampler-params", lanes * SAMPLER_UNIFORM_BYTES)),
    };
    const { cos, sin } = ropeTables(c.rope, hd, cap);
    const ropeTable = new Float32Array(cap * hd);
    for (let p = 0; p < cap; p++) {
      ropeTable.set(cos.subarray(p * hd / 2, (p + 1) * hd / 2), p * hd);
      ropeTable.set(sin.subarray(p * hd / 2, (p + 1) * hd / 2), p * hd + hd / 2);
    }
    b.rope = track(uploadBuffer(device, "rope-table", ropeTable));

    // --- global weights and programs ---
    const embedW = await upload("embed", plan.global.get("embed")!, dtype);
    const lmSpec = plan.global.get("lm_head")!;
    const tied = lmSpec.parts[0].tensor === plan.global.get("embed")!.parts[0].tensor;
    const lmW = tied ? embedW : await upload("lm_head", lmSpec, dtype);
    const finalNormW = await upload("final_norm", plan.global.get("final_norm")!, "f32");
    const embedProg = await embedProgram(device, ring, {
      hidden: H,
      vocab: V,
      dtype,
      multiplier: c.embeddingMultiplier,
    });
    const embed: Dispatch = {
      program: embedProg,
      group: embedProg.bind("embed", [embedW, b.inputIds, b.tokens, b.x]),
      grid: [1, 1, 1],
    };
    const normProg = await rmsNormProgram(device, ring, { n: H, eps: c.rmsNormEps });
    const norm = (label: string, w: GPUBuffer, src: GPUBuffer): Dispatch => ({
      program: normProg,
      group: normProg.bind(label, [src, w, b.xn]),
      grid: [1, 1, 1],
    });
    /** An RMSNorm to fuse into a decode mat-vec: the un-normalized input and the norm's weight. */
    type FusedNorm = { x: GPUBuffer; weight: GPUBuffer };
    const packedLinear = async (
      label: string,
      p: Omit<LinearParams, "label" | "dtype">,
      input: GPUBuffer,
      set: {
        qw: GPUBuffer;
        qp: GPUBuffer;
        meta: GPUBuffer;
        schemes: QuantScheme[];
        normFusable: (shape: MatvecShape) => boolean;
      },
      bias: GPUBuffer | undefined,
      out: GPUBuffer,
      norm?: FusedNorm,
    ): Promise<Linear> => {
      const shape: MatvecShape = { ...qgemvShape(p.n), ...options.matvecShapes?.qgemv };
      const qp = { n: p.n, k: p.k, mode: p.mode, bias: p.bias, alpha: p.alpha, schemes: set.schemes };
      const prog = await qgemvProgram(device, ring, qp, shape);
      const bufs = [input, set.qw, set.qp, set.meta, ...(bias ? [bias] : []), out];
      const d: Dispatch = {
        program: prog,
        group: prog.bind(`${label}-qgemv`, bufs),
        grid: grid2d(Math.ceil(p.n / shape.outs)),
      };
      let fused: Dispatch | undefined;
      if (norm && set.normFusable(shape)) {
        const fp = await qgemvProgram(device, ring, { ...qp, normEps: c.rmsNormEps }, shape);
        fused = {
          program: fp,
          group: fp.bind(`${label}-qgemv-normed`, [norm.x, ...bufs.slice(1), norm.weight]),
          grid: d.grid,
        };
      }
      const gemmProg = await qgemmProgram(device, ring, {
        n: p.n,
        k: p.k,
        mode: p.mode,
        bias: p.bias,
        alpha: p.alpha,
      });
      const g: Dispatch = {
        program: gemmProg,
        group: gemmProg.bind(`${label}-qgemm`, bufs),
        grid: [1, 1, 1],
      };
      return { gemv: d, fused, gemm: g, n: p.n, packed: true };
    };
    const linear = async (
      label: string,
      p: Omit<LinearParams, "label" | "dtype">,
      input: GPUBuffer,
      w: GPUBuffer,
      bias: GPUBuffer | undefined,
      out: GPUBuffer,
      prec: DType = dtype,
      norm?: FusedNorm,
    ): Promise<Linear> => {
      const params: LinearParams = { label, dtype: prec, ...p };
      const bufs = bias ? [input, w, bias, out] : [input, w, out];
      const shape = gemvShape(p.n);
      const gv = await gemvProgram(device, ring, params, shape);
      const gm = useGemm ? await gemmProgram(device, ring, params) : gv;
      const grid = grid2d(Math.ceil(p.n / shape.outs));
      let fused: Dispatch | undefined;
      if (norm && fuseNorms) {
        const fp = await gemvProgram(device, ring, { ...params, normEps: c.rmsNormEps }, shape);
        fused = {
          program: fp,
          group: fp.bind(`${label}-gemv-normed`, [norm.x, ...bufs.slice(1), norm.weight]),
          grid,
        };
      }
      return {
        gemv: { program: gv, group: gv.bind(`${label}-gemv`, bufs), grid },
        fused,
        gemm: { program: gm, group: gm.bind(`${label}-gemm`, bufs), grid: [Math.ceil(p.n / 64), 1, 1] },
        n: p.n,
        packed: false,
      };
    };
    const finalNorm = norm("final-norm", finalNormW, b.x);
    const copyProg = await copyLastRowProgram(device, ring, H);
    const lmAlpha = 1 / c.logitsScaling;
    const lmHead = await linear(
      "lm-head",
      { n: V, k: H, bias: false, mode: "store", alpha: lmAlpha },
      b.xn,
      lmW,
      undefined,
      b.logits,
    );
    const lmLast = await linear(
      "lm-head-last",
      { n: V, k: H, bias: false, mode: "store", alpha: lmAlpha },
      b.xlast,
      lmW,
      undefined,
      b.logits,
    );
    const sampleProg = await sampleProgram(device, ring, V);
    const sample: Dispatch = {
      program: sampleProg,
      group: sampleProg.bind("sample", [b.logits, b.sampler, b.tokens, b.samplerScratch]),
      grid: [1, 1, 1],
    };

    // --- layers ---
    const layers: LayerDispatches[] = [];
    const layerLinears: { qkv: Linear; o: Linear }[] = [];
    const qkProg = await qkRopeProgram(device, ring, {
      nH,
      nKV,
      hd,
      capacity: cap,
      qkNorm: c.qkNorm,
      eps: c.rmsNormEps,
      clip: c.clipQkv,
      kvDtype: dtype,
    });
    const gearKv = options.kvCache
      ? await GearGpu.create(
        device,
        ring,
        {
          nH,
          nKV,
          hd,
          capacity: cap,
          lanes,
          maxRows: R,
          scale: c.attentionScale,
          qkNorm: c.qkNorm,
          eps: c.rmsNormEps,
          clip: c.clipQkv,
          dtype,
        },
        options.kvCache,
        track,
      )
      : undefined;
    for (let l = 0; l < c.numLayers; l++) {
      const w = plan.layers[l];
      const up = (key: string, prec: DType) => upload(`L${l}.${key}`, w.get(key)!, prec);
      const attnNormW = await up("attn_norm", "f32");
      const ffnNormW = await up("ffn_norm", "f32");
      const qkvPacked = await packedSet(`L${l}.qkv`, w.get("qkv")!, qkvDim);
      const qkvW = qkvPacked ? undefined : await up("qkv", dtype);
      const qkvB = w.has("qkv_bias") ? await up("qkv_bias", "f32") : undefined;
      let qkNormW = b.ones;
      if (c.qkNorm !== "none") {
        const qn = w.get("q_norm")!, kn = w.get("k_norm")!;
        const qLen = qn.shape[0];
        qkNormW = track(storageBuffer(device, `L${l}.qk_norm`, (qLen + kn.shape[0]) * 4));
        writeAligned(device, qkNormW, 0, await ckpt.readF32(qn.parts[0].tensor));
        writeAligned(device, qkNormW, qLen * 4, await ckpt.readF32(kn.parts[0].tensor));
      }
      const oPacked = await packedSet(`L${l}.o`, w.get("o")!, H);
      const oW = oPacked ? undefined : await up("o", dtype);
      const oB = w.has("o_bias") ? await up("o_bias", "f32") : undefined;
      const gear = await gearKv?.layer(l, c.layers[l].slidingWindow, {
        qkv: b.qkv,
        rope: b.rope,
        qkNorm: qkNormW,
        q: b.q,
        attn: b.attn,
      });
      const kc = gear?.ringK ?? track(storageBuffer(device, `L${l}.k-cache`, kvBytes));
      const vc = gear?.ringV ?? track(storageBuffer(device, `L${l}.v-cache`, kvBytes));

      const qkvP = { n: qkvDim, k: H, bias: !!qkvB, mode: "store" as const, alpha: 1 };
      const attnFuse = { x: b.x, weight: attnNormW };
      const qkv = qkvPacked
        ? await packedLinear(`L${l}.qkv`, qkvP, b.xn, qkvPacked, qkvB, b.qkv, attnFuse)
        : await linear(`L${l}.qkv`, qkvP, b.xn, qkvW!, qkvB, b.qkv, dtype, attnFuse);
      const oP = { n: H, k: qDim, bias: !!oB, mode: "add" as const, alpha: c.residualMultiplier };
      const o = oPacked
        ? await packedLinear(`L${l}.o`, oP, b.attn, oPacked, oB, b.x)
        : await linear(`L${l}.o`, oP, b.attn, oW!, oB, b.x);
      const attParams = {
        nH,
        nKV,
        hd,
        capacity: cap,
        scale: c.attentionScale,
        window: c.layers[l].slidingWindow,
        kvDtype: dtype,
      };
      const attProg = await attentionProgram(device, ring, attParams);
      const splitParams = { ...attParams, split: ATTENTION_SPLIT };
      const splitProg = await attentionProgram(device, ring, splitParams);
      const mergeProg = await attentionCombineProgram(device, ring, splitParams);
      const moe = c.layers[l].moe;
      const width = moe ? I : D;
      const kk = moe ? k : 1;
      const guPacked = await packedSet(`L${l}.gate_up`, w.get("gate_up")!, 2 * width);
      const dnPacked = guPacked ? await packedSet(`L${l}.down`, w.get("down")!, H) : undefined;
      const packedFfn = guPacked !== undefined && dnPacked !== undefined;
      const gateUpW = packedFfn ? b.ones : await up("gate_up", dtype);
      const downW = packedFfn ? b.ones : await up("down", dtype);
      // Shapes of this layer's expert mat-vecs (packed or plain), which their grids follow.
      const guOuts = (packedFfn ? qGateUpShape : GATEUP_SHAPE).outs;
      const dnOuts = (packedFfn ? qDownShape : DOWN_SHAPE).outs;
      const guQParams: QGateUpParams = {
        hidden: H,
        inter: width,
        topK: kk,
        schemes: moe ? guUnified ?? guPacked?.schemes : guPacked?.schemes,
      };
      const guFParams: GateUpParams = { hidden: H, inter: width, topK: kk, dtype };
      const guProg = packedFfn
        ? await qGateUpProgram(device, ring, guQParams, qGateUpShape)
        : await gateUpProgram(device, ring, guFParams);
      // The FFN norm fuses into the decode mat-vecs that read it only if every one of them can take it.
      const ffnFuse = { x: b.x, weight: ffnNormW };
      let ffnFusable = fuseNorms && (!packedFfn || guPacked!.normFusable(qGateUpShape, guQParams.schemes));
      let router: LayerDispatches["router"];
      let sharedGateUp: Dispatch | undefined;
      const shared = moe && S > 0;
      if (moe) {
        // Router weight [E, H] f32, with the shared-expert gate [1, H] appended as row E.
        const rSpec = w.get("router")!;
        const sgSpec = shared ? w.get("shared_gate")! : undefined;
        const ne = c.numExperts + (shared ? 1 : 0);
        const routerW = track(storageBuffer(device, `L${l}.router`, ne * H * 4));
        writeAligned(device, routerW, 0, await ckpt.readF32(rSpec.parts[0].tensor));
        if (sgSpec) {
          writeAligned(device, routerW, c.numExperts * H * 4, await ckpt.readF32(sgSpec.parts[0].tensor));
        }
        weightBytes += ne * H * 4;
        const routerLin = await linear(
          `L${l}.router`,
          { n: ne, k: H, bias: false, mode: "store", alpha: 1 },
          b.xn,
          routerW,
          undefined,
          b.routerLogits,
          "f32",
          ffnFuse,
        );
        const tProg = await topKProgram(device, ring, {
          experts: c.numExperts,
          topK: k,
          mode: c.routerMode,
          normalize: c.normTopkProb,
          sharedGate: shared,
        });
        router = {
          logits: routerLin,
          topK: {
            program: tProg,
            group: tProg.bind(`L${l}.router-topk`, [b.routerLogits, b.ids, b.wts, b.sg, {
              buffer: b.expertCounts,
              offset: l * countsStride(c.numExperts),
              size: c.numExperts * 4,
            }]),
            grid: [1, 1, 1],
          },
        };
      }
      const dProg = packedFfn
        ? await qDownProgram(device, ring, {
          hidden: H,
          inter: width,
          topK: kk,
          alpha: c.residualMultiplier,
          schemes: moe ? dnUnified ?? dnPacked!.schemes : dnPacked!.schemes,
        }, qDownShape)
        : await downProgram(device, ring, {
          hidden: H,
          inter: width,
          topK: kk,
          shared: shared ? S : 0,
          dtype,
          alpha: c.residualMultiplier,
        });
      const idsBuf = moe ? b.ids : b.zeros;
      const wtsBuf = moe ? b.wts : b.ones;
      const downBufs = packedFfn
        ? [b.h, dnPacked!.qw, dnPacked!.qp, dnPacked!.meta, idsBuf, wtsBuf, b.x]
        : [b.h, downW, idsBuf, wtsBuf, b.x];
      const guBufs = packedFfn
        ? [b.xn, guPacked!.qw, guPacked!.qp, guPacked!.meta, idsBuf, b.h]
        : [b.xn, gateUpW, idsBuf, b.h];
      let sharedDown: Dispatch | undefined;
      let fusedSharedGateUp: Dispatch | undefined;
      if (shared && packedFfn) {
        const sgu = await packedSet(`L${l}.shared_gate_up`, w.get("shared_gate_up")!, 2 * S);
        const sdn = await packedSet(`L${l}.shared_down`, w.get("shared_down")!, H);
        if (!sgu || !sdn) {
          throw new GpuError(`Cannot load layer ${l}: its experts are packed but its shared expert is not`);
        }
        const sgParams = { hidden: H, inter: S, topK: 1, schemes: sgu.schemes };
        const sgp = await qGateUpProgram(device, ring, sgParams, qGateUpShape);
        const sgBufs = [b.xn, sgu.qw, sgu.qp, sgu.meta, b.zeros, b.hs];
        sharedGateUp = {
          program: sgp,
          group: sgp.bind(`L${l}.shared-gate-up`, sgBufs),
          grid: [Math.ceil(S / guOuts), 1, 1],
        };
        ffnFusable &&= sgu.normFusable(qGateUpShape);
        if (ffnFusable) {
          const fp = await qGateUpProgram(device, ring, { ...sgParams, normEps: c.rmsNormEps }, qGateUpShape);
          fusedSharedGateUp = {
            program: fp,
            group: fp.bind(`L${l}.shared-gate-up-normed`, [b.x, ...sgBufs.slice(1), ffnNormW]),
            grid: sharedGateUp.grid,
          };
        }
        const sdp = await qDownProgram(device, ring, {
          hidden: H,
          inter: S,
          topK: 1,
          alpha: c.residualMultiplier,
          schemes: sdn.schemes,
        }, { tpo: qDownShape.tpo, outs: qDownShape.outs }); // one expert: no teams
        sharedDown = {
          program: sdp,
          group: sdp.bind(`L${l}.shared-down`, [b.hs, sdn.qw, sdn.qp, sdn.meta, b.zeros, b.sg, b.x]),
          grid: [Math.ceil(H / dnOuts), 1, 1],
        };
      } else if (shared) {
        const sguW = await up("shared_gate_up", dtype);
        const sdW = await up("shared_down", dtype);
        const sParams = { hidden: H, inter: S, topK: 1, dtype };
        const sProg = await gateUpProgram(device, ring, sParams);
        sharedGateUp = {
          program: sProg,
          group: sProg.bind(`L${l}.shared-gate-up`, [b.xn, sguW, b.zeros, b.hs]),
          grid: [Math.ceil(S / guOuts), 1, 1],
        };
        if (ffnFusable) {
          const fp = await gateUpProgram(device, ring, { ...sParams, normEps: c.rmsNormEps });
          fusedSharedGateUp = {
            program: fp,
            group: fp.bind(`L${l}.shared-gate-up-normed`, [b.x, sguW, b.zeros, b.hs, ffnNormW]),
            grid: sharedGateUp.grid,
          };
        }
        downBufs.push(b.hs, sdW, b.sg);
      }
      let grouped: LayerDispatches["grouped"];
      // Prefill of MoE layers as grouped GEMMs: packed experts by default, plain ones when asked.
      if (moe && (packedFfn ? (options.groupedMoe ?? true) : options.groupedMoe)) {
        const sortProg = await moeSortProgram(device, ring, { experts: c.numExperts, topK: k });
        const comb = await moeCombineProgram(device, ring, {
          hidden: H,
          topK: k,
          alpha: c.residualMultiplier,
        });
        const shapes = { hidden: H, inter: I, topK: k };
        let gateUp: Dispatch, down: Dispatch;
        let groupedSharedDown = sharedDown;
        if (packedFfn) {
          const gu = guPacked!, dn = dnPacked!;
          const g1 = await qGroupedGemmProgram(device, ring, { kind: "gate_up", ...shapes });
          const g2 = await qGroupedGemmProgram(device, ring, { kind: "down", ...shapes });
          gateUp = {
            program: g1,
            group: g1.bind(`L${l}.q-moe-gate-up`, [
              b.xn,
              gu.qw,
              gu.qp,
              gu.meta,
              b.perm,
              b.tiles,
              b.ntiles,
              b.gu,
            ]),
            grid: [1, 1, 1],
          };
          down = {
            program: g2,
            group: g2.bind(`L${l}.q-moe-down`, [
              b.gu,
              dn.qw,
              dn.qp,
              dn.meta,
              b.perm,
              b.tiles,
              b.ntiles,
              b.ysl,
            ]),
            grid: [1, 1, 1],
          };
        } else {
          const g1 = await groupedGemmProgram(device, ring, { kind: "gate_up", dtype, ...shapes });
          const g2 = await groupedGemmProgram(device, ring, { kind: "down", dtype, ...shapes });
          gateUp = {
            program: g1,
            group: g1.bind(`L${l}.moe-gate-up`, [b.xn, gateUpW, b.perm, b.tiles, b.ntiles, b.gu]),
            grid: [1, 1, 1],
          };
          down = {
            program: g2,
            group: g2.bind(`L${l}.moe-down`, [b.gu, downW, b.perm, b.tiles, b.ntiles, b.ysl]),
            grid: [1, 1, 1],
          };
          if (shared) {
            // The fused down kernel adds the shared expert; grouped prefill runs it as its own dispatch.
            const sdProg = await downProgram(device, ring, {
              hidden: H,
              inter: S,
              topK: 1,
              shared: 0,
              dtype,
              alpha: c.residualMultiplier,
            });
            groupedSharedDown = {
              program: sdProg,
              group: sdProg.bind(`L${l}.shared-down`, [b.hs, downBufs[6], b.zeros, b.sg, b.x]),
              grid: [Math.ceil(H / dnOuts), 1, 1],
            };
          }
        }
        grouped = {
          sort: {
            program: sortProg,
            group: sortProg.bind(`L${l}.moe-sort`, [b.ids, b.perm, b.tiles, b.ntiles]),
            grid: [1, 1, 1],
          },
          gateUp,
          down,
          combine: {
            program: comb,
            group: comb.bind(`L${l}.moe-combine`, [b.ysl, b.wts, b.x]),
            grid: [1, 1, 1],
          },
          sharedDown: groupedSharedDown,
          gateUpX: Math.ceil(2 * I / TILE_COLS),
          downX: Math.ceil(H / TILE_COLS),
        };
      }
      // The fused gate/up: the same kernel with the FFN norm applied to x as it reads it.
      let fusedFfn: LayerDispatches["fusedFfn"];
      if (ffnFusable && (!router || router.logits.fused)) {
        const fp = packedFfn
          ? await qGateUpProgram(device, ring, { ...guQParams, normEps: c.rmsNormEps }, qGateUpShape)
          : await gateUpProgram(device, ring, { ...guFParams, normEps: c.rmsNormEps });
        fusedFfn = {
          router: router?.logits.fused,
          gateUp: {
            program: fp,
            group: fp.bind(`L${l}.gate-up-normed`, [b.x, ...guBufs.slice(1), ffnNormW]),
            grid: [Math.ceil(width / guOuts), kk, 1],
          },
          sharedGateUp: fusedSharedGateUp,
        };
      }
      layers.push({
        grouped,
        attnNorm: norm(`L${l}.attn-norm`, attnNormW, b.x),
        fusedQkv: qkv.fused,
        fusedFfn,
        qkv: qkv.gemv,
        gear,
        qkRope: gear?.qkRope ?? {
          program: qkProg,
          group: qkProg.bind(`L${l}.qk-rope`, [b.qkv, b.rope, qkNormW, b.q, kc, vc]),
          grid: [nH + nKV, 1, 1],
        },
        attention: {
          program: attProg,
          group: attProg.bind(`L${l}.attention`, [b.q, kc, vc, b.attn]),
          grid: [nH, 1, 1],
        },
        attentionSplit: {
          program: splitProg,
          group: splitProg.bind(`L${l}.attention-split`, [b.q, kc, vc, b.attnPartials]),
          grid: [nH, 1, 1],
        },
        attentionMerge: {
          program: mergeProg,
          group: mergeProg.bind(`L${l}.attention-merge`, [b.attnPartials, b.attn]),
          grid: [mergeGroupsX(nH, hd), 1, 1],
        },
        o: o.gemv,
        ffnNorm: norm(`L${l}.ffn-norm`, ffnNormW, b.x),
        router,
        gateUp: {
          program: guProg,
          group: guProg.bind(`L${l}.gate-up`, guBufs),
          grid: [Math.ceil(width / guOuts), kk, 1],
        },
        sharedGateUp,
        sharedDown,
        down: {
          program: dProg,
          group: dProg.bind(`L${l}.down`, downBufs),
          grid: [Math.ceil(H / dnOuts), 1, 1],
        },
        gateUpX: Math.ceil(width / guOuts),
        k: kk,
        sharedX: Math.ceil(S / guOuts),
      });
      layerLinears.push({ qkv, o });
    }
    return new GpuDecoder({
      config: c,
      dtype,
      contextLength: cap,
      lanes,
      ctx,
      ring,
      R,
      logitRows,
      useGemm,
      buffers,
      b,
      embed,
      layers,
      layerLinears,
      finalNorm,
      lmHead,
      lmHeadLast: lmLast.gemv,
      fuse: {
        lmW,
        norm: {
          program: normProg,
          group: normProg.bind("lfd-norm", [b.xfuse, finalNormW, b.xn]),
          grid: [1, 1, 1],
        },
        copy: {
          program: copyProg,
          group: copyProg.bind("lfd-copy", [b.x, b.xfuse]),
          grid: [Math.ceil(H / 256), 1, 1],
        },
      },
      sample,
      weightBytes,
      overlap: options.readbackOverlap ?? "call",
    });
  }

  /**
   * Encodes the layers for `rows` rows at the step slot `off`; `pos` is the position of row 0, or with `batched`
   * (the positions of the rows: decode steps of several sequences) their largest.
   */
  #encodeLayers(
    pass: GPUComputePassEncoder,
    off: number,
    rows: number,
    pos: number,
    batched?: readonly number[],
  ): void {
    const ring = this.#ring;
    const emit = (d: Dispatch) => encodeDispatch(pass, ring, d, off);
    // Layer fused decoding keeps the fused layer's last row (its logits are added after the LM head).
    const lfd = this.#lfd, copy = this.#fuse.copy;
    const mark = lfd
      ? (layer: number, point: string) => {
        if (layer === lfd.layer && point === "after_ffn") emit(copy);
      }
      : undefined;
    this.#forEachLayerDispatch(rows, pos, emit, mark, batched);
  }

  /**
   * Calls `emit` with every dispatch of the layers for `rows` rows starting at position `pos`, in order. With
   * `batched` (their positions) the rows are decode steps of different sequences (`pos` is the largest):
   * mat-vecs, per-pair expert kernels and split-K attention, as for one row, so every row computes exactly what
   * it would alone.
   */
  #forEachLayerDispatch(
    rows: number,
    pos: number,
    emit: (d: Dispatch) => void,
    mark?: (layer: number, point: "before_ffn" | "router" | "after_ffn") => void,
    batched?: readonly number[],
  ): void {
    const decode = rows === 1 || batched !== undefined;
    const gemm = !decode && this.#useGemm;
    const ry = (d: Dispatch, x = d.grid[0]): Dispatch => ({ ...d, grid: [x, rows, 1] });
    const rx = (d: Dispatch): Dispatch => ({ ...d, grid: [rows, 1, 1] });
    const lin = (l: Linear): Dispatch =>
      gemm ? { ...l.gemm, grid: [Math.ceil(l.n / 64), Math.ceil(rows / 64), 1] } : l.gemv;
    for (let i = 0; i < this.#layers.length; i++) {
      const L = this.#layers[i];
      const LL = this.#layerLinears[i];
      // Decode steps read x in the mat-vecs that fuse the norms in, where the layer has them.
      if (decode && L.fusedQkv) {
        emit(L.fusedQkv);
      } else {
        emit(rx(L.attnNorm));
        emit(lin(LL.qkv));
      }
      emit(ry(L.qkRope));
      if (L.gear) {
        GearGpu.emitAttention(L.gear, rows, pos, emit, batched);
      } else if (decode) {
        emit({
          ...L.attentionSplit,
          grid: [L.attentionSplit.grid[0], rows, Math.floor(pos / ATTENTION_SPLIT) + 1],
        });
        emit(ry(L.attentionMerge));
      } else {
        emit(ry(L.attention));
      }
      emit(lin(LL.o));
      mark?.(i, "before_ffn");
      const ffn = decode ? L.fusedFfn : undefined;
      if (!ffn) emit(rx(L.ffnNorm));
      if (L.router) {
        emit(ffn?.router ?? lin(L.router.logits));
        mark?.(i, "router");
        emit(rx(L.router.topK));
      }
      const G = L.grouped;
      if (G && !decode) {
        const tiles = maxTiles(rows * L.k, this.config.numExperts);
        emit(G.sort);
        emit({ ...G.gateUp, grid: [G.gateUpX, tiles, 1] });
        emit({ ...G.down, grid: [G.downX, tiles, 1] });
        emit({ ...G.combine, grid: [Math.ceil(this.config.hiddenSize / 256), rows, 1] });
        if (L.sharedGateUp && G.sharedDown) {
          emit({ ...L.sharedGateUp, grid: [L.sharedX, rows, 1] });
          emit(ry(G.sharedDown));
        }
      } else {
        emit({ ...(ffn?.gateUp ?? L.gateUp), grid: [L.gateUpX, rows * L.k, 1] });
        const sharedGateUp = ffn ? ffn.sharedGateUp : L.sharedGateUp;
        if (sharedGateUp) emit({ ...sharedGateUp, grid: [L.sharedX, rows, 1] });
        emit(ry(L.down));
        if (L.sharedDown) emit(ry(L.sharedDown));
      }
      mark?.(i, "after_ffn");
    }
  }

  #check(): void {
    if (this.#disposed) throw new GpuError("Cannot run the model: its GPU resources have been disposed");
  }

  /** Step-slot values with this decoder's token-ring stride (`lane` defaults to 0). */
  #slot(i: number, v: StepValues): number {
    const values = { ringStride: this.contextLength + 1, ...v };
    this.#recording?.push([i, values]);
    return this.#ring.set(i, values);
  }

  /** Logits of every position of `ids`, [ids.length, V]. */
  async logits(ids: readonly number[]): Promise<Float32Array> {
    this.#check();
    const V = this.config.vocabSize;
    if (ids.length > this.contextLength) {
      throw new RangeError(
        `Cannot compute logits: ${ids.length} tokens exceed the context of ${this.contextLength}`,
      );
    }
    const lane = await this.#lanes.acquire();
    try {
      this.#check();
      const out = new Float32Array(ids.length * V);
      const chunk = Math.min(this.#R, this.#logitRows);
      for (let p0 = 0; p0 < ids.length; p0 += chunk) {
        const rows = Math.min(chunk, ids.length - p0);
        this.#device.queue.writeBuffer(this.#b.inputIds, 0, new Uint32Array(ids.slice(p0, p0 + rows)));
        const off = this.#slot(0, { pos: p0, rows, step: 0, srcRing: false, ringIn: 0, logitsRow: 0, lane });
        this.#ring.flush(this.#device);
        const enc = this.#device.createCommandEncoder({ label: "logits" });
        const pass = enc.beginComputePass({ label: "logits" });
        encodeDispatch(pass, this.#ring, { ...this.#embed, grid: [rows, 1, 1] }, off);
        this.#encodeLayers(pass, off, rows, p0);
        encodeDispatch(pass, this.#ring, { ...this.#finalNorm, grid: [rows, 1, 1] }, off);
        const lm = rows > 1 && this.#useGemm
          ? {
            ...this.#lmHead.gemm,
            grid: [Math.ceil(V / 64), Math.ceil(rows / 64), 1] as [number, number, number],
          }
          : this.#lmHead.gemv;
        encodeDispatch(pass, this.#ring, lm, off);
        pass.end();
        // Other sequences' submissions may follow on the queue: the logits are copied out in this one.
        const read = copyOut(this.#device, enc, this.#b.logits, rows * V * 4);
        this.#device.queue.submit([enc.finish()]);
        out.set(new Float32Array(await read()), p0 * V);
      }
      return out;
    } finally {
      this.#lanes.release(lane);
    }
  }

  /** Encodes the prompt's prefill (in chunks) in `lane` and the sampling of its step 0. */
  #encodePrefill(enc: GPUCommandEncoder, ids: readonly number[], slot: number, lane: number): number {
    const H = this.config.hiddenSize, cap = this.contextLength;
    let s = slot;
    this.#device.queue.writeBuffer(this.#b.promptIds, lane * cap * 4, new Uint32Array(ids));
    for (let p0 = 0; p0 < ids.length; p0 += this.#R) {
      const rows = Math.min(this.#R, ids.length - p0);
      // The whole prompt was written to prompt-ids before the submission; each chunk copies its slice.
      enc.copyBufferToBuffer(this.#b.promptIds, (lane * cap + p0) * 4, this.#b.inputIds, 0, rows * 4);
      const off = this.#slot(s++, { pos: p0, rows, step: 0, srcRing: false, ringIn: 0, logitsRow: 0, lane });
      const pass = enc.beginComputePass({ label: `prefill-${lane}-${p0}` });
      encodeDispatch(pass, this.#ring, { ...this.#embed, grid: [rows, 1, 1] }, off);
      this.#encodeLayers(pass, off, rows, p0);
      encodeDispatch(pass, this.#ring, { ...this.#finalNorm, grid: [rows, 1, 1] }, off);
      pass.end();
      if (p0 + rows === ids.length) {
        enc.copyBufferToBuffer(this.#b.xn, (rows - 1) * H * 4, this.#b.xlast, 0, H * 4);
      }
    }
    const off = this.#slot(s++, { pos: 0, rows: 1, step: 0, srcRing: false, ringIn: 0, logitsRow: 0, lane });
    const pass = enc.beginComputePass({ label: "prefill-sample" });
    encodeDispatch(pass, this.#ring, this.#lmHeadLast, off);
    this.#encodeFusedHead(pass, off);
    encodeDispatch(pass, this.#ring, this.#sample, off);
    pass.end();
    return s;
  }

  /** With layer fused decoding on: logits row 0 += α · LM head(final norm(the fused layer's last row)). */
  #encodeFusedHead(pass: GPUComputePassEncoder, off: number): void {
    if (!this.#lfd) return;
    encodeDispatch(pass, this.#ring, this.#fuse.norm, off);
    encodeDispatch(pass, this.#ring, this.#lfd.head, off);
  }

  /** The fused-logits mat-vec for α (made once per α). */
  async #fuseHead(alpha: number): Promise<Dispatch> {
    const have = this.#fuseHeads.get(alpha);
    if (have) return have;
    const c = this.config;
    const prog = await gemvProgram(this.#device, this.#ring, {
      label: "lm-fuse",
      dtype: this.dtype,
      n: c.vocabSize,
      k: c.hiddenSize,
      bias: false,
      mode: "add",
      alpha: alpha / c.logitsScaling,
    });
    const d: Dispatch = {
      program: prog,
      group: prog.bind("lm-fuse", [this.#b.xn, this.#fuse.lmW, this.#b.logits]),
      grid: grid2d(Math.ceil(c.vocabSize / GEMV_SHAPE.outs)),
    };
    this.#fuseHeads.set(alpha, d);
    return d;
  }

  /**
   * Produces up to `options.maxTokens` new tokens in batches. A generation joins the batch: it gets a lane (of
   * the plain or the compressed cache), its prefill runs in the next submission, and its decode steps share GPU
   * passes with every other sequence generating (continuous batching). Layer fused decoding runs alone.
   */
  produce(ids: readonly number[], options: ResolvedGenerateOptions): AsyncGenerator<Uint32Array> {
    this.#check();
    if (ids.length + options.maxTokens > this.contextLength + 1) {
      throw new RangeError(
        `Cannot generate ${options.maxTokens} tokens after ${ids.length}: the context holds ${this.contextLength}`,
      );
    }
    return this.#produce(ids, options);
  }

  /**
   * One sequence of the batch (see {@linkcode produce}). Layer fused decoding and a compressed KV cache need
   * the decoder to themselves: such a sequence holds every lane and runs in lane 0 as the batch's only member.
   */
  async *#produce(ids: readonly number[], options: ResolvedGenerateOptions): AsyncGenerator<Uint32Array> {
    const alone = options.lfd !== undefined;
    const head = options.lfd ? await this.#fuseHead(options.lfd.alpha) : undefined;
    const releaseAll = alone ? await this.#lanes.acquireAll() : undefined;
    const lane = alone ? 0 : await this.#lanes.acquire();
    if (options.lfd) this.#lfd = { layer: options.lfd.layer, head: head! };
    const m: Member = {
      lane,
      ids,
      options,
      total: options.maxTokens,
      next: 0,
      delivered: 0,
      ready: [],
      wake: undefined,
      error: undefined,
      closed: false,
    };
    try {
      this.#check();
      this.#members.add(m);
      this.#joined = true;
      this.#pump();
      while (true) {
        if (m.ready.length > 0) {
          yield m.ready.shift()!;
          continue;
        }
        if (m.error !== undefined) throw m.error;
        if (m.delivered >= m.total) return;
        await new Promise<void>((resolve) => m.wake = resolve);
      }
    } finally {
      // Submissions still in flight may write this lane: they run before any later user's prefill.
      m.closed = true;
      this.#members.delete(m);
      if (releaseAll) {
        this.#lfd = undefined;
        releaseAll();
      } else {
        this.#lanes.release(lane);
      }
    }
  }

  /**
   * Runs submissions while any sequence of the batch has steps to go; one loop at a time. Deno's `mapAsync`
   * waits (blocking the thread) until every submitted command buffer has finished, then sleeps ~10 ms before it
   * resolves (`bench/readback_latency.ts`, `bench/readback_overlap.ts`): the next batch's first steps are
   * encoded while the GPU runs the current batch and submitted as soon as the GPU is done (see
   * ReadbackOverlap), the rest of it encoded and submitted chunk by chunk while the GPU runs those, and only
   * then are the read-back tokens delivered.
   */
  #pump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    let cur: Building | undefined;
    let next: Building | undefined;
    let mapping: Promise<void> | undefined;
    const loop = async () => {
      try {
        // A GPU left idle or starved by a busy main thread runs 3–4× slower until saturated for a second
        // (kernels/keep_awake.ts); worth it only for a batch long enough to lose more than that.
        let steps = 0;
        for (const m of this.#members) steps += m.total - m.next;
        if (steps >= WARM_UP_MIN_STEPS) await this.#ctx.keepAwake?.warmUp();
        // Nothing of this loop is in flight: the chunks go to the GPU as they are encoded, from 2 steps.
        cur = this.#beginBatch();
        if (cur && !this.#submitRest(cur, this.#encodeChunk(cur, 2))) cur = undefined;
        while (cur) {
          // The next batch's first steps, encoded while the GPU runs `cur` (at most about half its steps, so
          // the encoding ends before the GPU does), submitted once the GPU is done with `cur`.
          next = this.#beginBatch();
          const head = next ? this.#encodeChunk(next, Math.max(2, Math.floor(cur.span / 2))) : undefined;
          const go = () => {
            if (next && !this.#submitRest(next, head!)) next = undefined;
          };
          const since = performance.now();
          mapping = cur.staging.mapAsync(GPUMapMode.READ, 0, cur.bytes);
          // Handled below; a rejection while the next batch is submitted must not go unhandled meanwhile.
          mapping.catch(() => {});
          if (this.#overlap === "call") go();
          else if (this.#overlap === "timer") {
            // An error of the submission rejects here (a throw inside the timer callback would go uncaught).
            await new Promise<void>((resolve, reject) =>
              setTimeout(() => {
                try {
                  go();
                  resolve();
                } catch (e) {
                  reject(e);
                }
              }, 0)
            );
          }
          await mapping;
          mapping = undefined;
          // The thread was blocked while the GPU worked: not idle time for the keep-awake.
          this.#ctx.keepAwake?.noteBusy(since);
          const tokens = new Uint32Array(cur.staging.getMappedRange(0, cur.bytes).slice(0));
          cur.staging.unmap();
          this.#stagingPool.push(cur.staging);
          const done = cur;
          cur = undefined;
          if (this.#overlap === "off") go();
          cur = next;
          next = undefined;
          for (const part of done.parts) {
            const m = part.member;
            if (m.closed) continue;
            m.ready.push(tokens.slice(part.offset, part.offset + part.count));
            m.delivered += part.count;
            m.wake?.();
          }
          // Let the consumers take their tokens (stream them to clients, close on a stop) before the next
          // batch is encoded.
          await new Promise((resolve) => setTimeout(resolve, 0));
        }
      } catch (e) {
        for (const m of this.#members) {
          m.error = e instanceof GpuError
            ? e
            : new GpuError(`Cannot generate: ${(e as Error)?.message ?? e}`);
          m.wake?.();
        }
      } finally {
        if (mapping) {
          await mapping.catch(() => {});
          if (cur?.staging.mapState === "mapped") cur.staging.unmap();
        }
        for (const b of [cur, next]) if (b) this.#stagingPool.push(b.staging);
        this.#pumping = false;
        // A sequence that joined while the loop was ending.
        if ([...this.#members].some((m) => !m.closed && m.next < m.total && m.error === undefined)) {
          this.#pump();
        }
      }
    };
    loop();
  }

  /**
   * Starts the next submission of the batch: picks its size, encodes the prefill of every sequence that joined
   * since the last one (into the encoder of its first chunk) and assigns each running sequence its steps.
   * Undefined when no sequence has steps to go or the decoder is disposed.
   */
  #beginBatch(): Building | undefined {
    if (this.#disposed) return undefined;
    const running = [...this.#members].filter((m) => !m.closed && m.next < m.total);
    if (running.length === 0) return undefined;
    const t0 = performance.now();
    const device = this.#device;
    if (this.#joined) this.#schedule = 0;
    this.#joined = false;
    const fixed = running.map((m) => m.options.tokensPerSubmit).filter((n) => n > 0);
    const size = Math.min(
      MAX_BATCH,
      fixed.length === running.length ? Math.min(...fixed) : Math.min(
        ADAPTIVE_BATCHES[Math.min(this.#schedule++, ADAPTIVE_BATCHES.length - 1)],
        Math.max(1, Math.floor(ROWS_PER_SUBMIT / running.length)),
      ),
    );
    const slots: [number, StepValues][] = [];
    this.#recording = slots;
    const enc = device.createCommandEncoder({ label: "generate-batch" });
    let slot = 0;
    // This submission takes steps [first, end) of each sequence: step 0 is its prefill's, and decode step t
    // holds a row for every sequence with step from + t before its end.
    const first = new Map<Member, number>();
    for (const m of running) {
      first.set(m, m.next);
      if (m.next > 0) continue;
      // Sampler parameters are written before the submission that reads them.
      device.queue.writeBuffer(
        this.#b.sampler,
        m.lane * SAMPLER_UNIFORM_BYTES,
        samplerUniform(m.options.sampling),
      );
      slot = this.#encodePrefill(enc, m.ids, slot, m.lane);
      m.next = 1;
    }
    this.#recording = undefined;
    const from = new Map(running.map((m) => [m, m.next]));
    const end = new Map(running.map((m) => [m, Math.min(m.total, first.get(m)! + size)]));
    // Each sequence's new tokens [first, end) go to the staging buffer, one after the other.
    const parts: Flight["parts"] = [];
    let offset = 0;
    for (const m of running) {
      const count = end.get(m)! - first.get(m)!;
      parts.push({ member: m, offset, count });
      offset += count;
      m.next = end.get(m)!;
    }
    const bytes = offset * 4;
    const span = Math.max(...running.map((m) => end.get(m)! - from.get(m)!));
    this.#encodeStats.ms += performance.now() - t0;
    return {
      running,
      first,
      from,
      end,
      span,
      t: 0,
      slot,
      enc,
      slots,
      parts,
      staging: this.#takeStaging(bytes),
      bytes,
    };
  }

  /**
   * Encodes the next `count` decode steps of `b` (with its prefills if this is its first chunk, and the copies
   * of the new tokens to its staging buffer if it ends the batch) as one command buffer; the step-ring slots it
   * sets go with it. Sequences closed since `b` began get no more rows (their lanes may be reused).
   */
  #encodeChunk(b: Building, count: number): Chunk {
    const device = this.#device;
    const t0 = performance.now();
    const slots = b.slots;
    b.slots = [];
    this.#recording = slots;
    try {
      const enc = b.enc ?? device.createCommandEncoder({ label: "generate-batch" });
      b.enc = undefined;
      const pass = enc.beginComputePass({ label: "decode-batch" });
      const stop = Math.min(b.span, b.t + count);
      const steps = stop - b.t;
      for (; b.t < stop; b.t++) {
        const t = b.t;
        const rows = b.running.filter((m) => !m.closed && b.from.get(m)! + t < b.end.get(m)!);
        if (rows.length === 0) continue;
        const batch = rows.map((m) => {
          const step = b.from.get(m)! + t;
          return { pos: m.ids.length + step - 1, lane: m.lane, ringIn: step - 1, step };
        });
        const maxPos = Math.max(...batch.map((r) => r.pos));
        // One row is a plain step (the compressed cache's kernels read its position from the slot header).
        const one = batch.length === 1 ? batch[0] : undefined;
        const off = this.#slot(
          b.slot++,
          one
            ? {
              pos: one.pos,
              rows: 1,
              step: one.step,
              srcRing: true,
              ringIn: one.ringIn,
              logitsRow: 0,
              lane: one.lane,
            }
            : { pos: 0, rows: rows.length, step: 0, srcRing: true, ringIn: 0, logitsRow: 0, batch },
        );
        const n: [number, number, number] = [rows.length, 1, 1];
        encodeDispatch(pass, this.#ring, { ...this.#embed, grid: n }, off);
        this.#encodeLayers(pass, off, rows.length, maxPos, one ? undefined : batch.map((r) => r.pos));
        encodeDispatch(pass, this.#ring, { ...this.#finalNorm, grid: n }, off);
        encodeDispatch(pass, this.#ring, this.#lmHead.gemv, off);
        // Layer fused decoding runs only alone, so its one row is row 0.
        this.#encodeFusedHead(pass, off);
        encodeDispatch(pass, this.#ring, { ...this.#sample, grid: n }, off);
      }
      pass.end();
      const last = b.t >= b.span;
      if (last) {
        const stride = this.contextLength + 1;
        for (const part of b.parts) {
          if (part.count === 0) continue;
          enc.copyBufferToBuffer(
            this.#b.tokens,
            (part.member.lane * stride + b.first.get(part.member)!) * 4,
            b.staging,
            part.offset * 4,
            part.count * 4,
          );
        }
      }
      this.#encodeStats.steps += steps;
      return { command: enc.finish(), slots, steps, last };
    } finally {
      this.#recording = undefined;
      this.#encodeStats.ms += performance.now() - t0;
    }
  }

  /**
   * Submits `chunk` of `b`, then encodes and submits the rest of `b` chunk by chunk, each as large as the work
   * already submitted (so its encoding ends while the GPU still runs the earlier ones). False, and the rest
   * left, once the decoder is disposed.
   */
  #submitRest(b: Building, chunk: Chunk): boolean {
    let inFlight = 0;
    for (let c: Chunk | undefined = chunk; c; c = c.last ? undefined : this.#encodeChunk(b, inFlight)) {
      if (this.#disposed) return false;
      // Other calls (logits, inspect) may have used the slots since they were set.
      for (const [i, v] of c.slots) this.#ring.set(i, v);
      this.#ring.flush(this.#device);
      const t0 = performance.now();
      this.#device.queue.submit([c.command]);
      this.#encodeStats.submitMs += performance.now() - t0;
      inFlight += c.steps;
    }
    return true;
  }

  /**
   * CPU time spent encoding generation batches since load (prefills included, milliseconds), the decode steps
   * they held (the encode cost per step, which bounds decode speed when the GPU is faster), and the time spent
   * in `queue.submit` for them (`submitMs`).
   */
  get encodeStats(): { ms: number; steps: number; submitMs: number } {
    return { ...this.#encodeStats };
  }

  /** A staging buffer of at least `bytes` for token readback (reused across submissions). */
  #takeStaging(bytes: number): GPUBuffer {
    const i = this.#stagingPool.findIndex((b) => b.size >= bytes);
    if (i >= 0) return this.#stagingPool.splice(i, 1)[0];
    return this.#device.createBuffer({
      label: "batch-token-staging",
      size: Math.max(bytes, this.lanes * (MAX_BATCH + 1) * 4),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  /**
   * One prefill of `ids` with what the retrieval gate and layer fused decoding read (see engine/inspect.ts for
   * the CPU reference): the last position's logits, the router statistics of every MoE layer (from its router
   * logits, copied out between passes), and with `iksPositions` the internal knowledge score of the candidate
   * layers (their residual streams before and after the feed-forward block are copied out, then run through the
   * final norm and the LM head on the GPU; the divergences are computed here).
   */
  async inspect(ids: readonly number[], options?: InspectOptions): Promise<PromptInspection> {
    this.#check();
    const c = this.config,
      H = c.hiddenSize,
      V = c.vocabSize,
      L = c.numLayers,
      T = ids.length,
      E = c.numExperts;
    if (T === 0) throw new RangeError("Cannot inspect an empty prompt");
    if (T > this.contextLength) {
      throw new RangeError(
        `Cannot inspect the prompt: ${T} tokens exceed the context of ${this.contextLength}`,
      );
    }
    const P = iksPositionsOf(options, T);
    const candidates = P > 0 ? fusionCandidates(L) : [];
    const slotOf = new Map(candidates.map((l, i) => [l, i]));
    const ne = E + (c.sharedExpertIntermediateSize > 0 ? 1 : 0);
    const lane = await this.#lanes.acquire();
    const device = this.#device, ring = this.#ring, b = this.#b;
    const temp: GPUBuffer[] = [];
    const scratch = (label: string, bytes: number) => {
      const buf = device.createBuffer({
        label,
        size: Math.max(16, Math.ceil(bytes / 4) * 4),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
      });
      temp.push(buf);
      return buf;
    };
    try {
      this.#check();
      // router [L, T, ne] f32; snapshots [candidates, 2 (before, after), P, H] f32.
      const router = scratch("inspect-router", L * T * ne * 4);
      const snap = scratch("inspect-residuals", candidates.length * 2 * P * H * 4);
      const cap = this.contextLength;
      device.queue.writeBuffer(b.promptIds, lane * cap * 4, new Uint32Array(ids));
      const enc = device.createCommandEncoder({ label: "inspect" });
      let s = 0;
      for (let p0 = 0; p0 < T; p0 += this.#R) {
        const rows = Math.min(this.#R, T - p0);
        enc.copyBufferToBuffer(b.promptIds, (lane * cap + p0) * 4, b.inputIds, 0, rows * 4);
        const off = this.#slot(s++, {
          pos: p0,
          rows,
          step: 0,
          srcRing: false,
          ringIn: 0,
          logitsRow: 0,
          lane,
        });
        let pass = enc.beginComputePass({ label: `inspect-${p0}` });
        encodeDispatch(pass, ring, { ...this.#embed, grid: [rows, 1, 1] }, off);
        const copy = (src: GPUBuffer, from: number, dst: GPUBuffer, to: number, bytes: number) => {
          pass.end();
          enc.copyBufferToBuffer(src, from, dst, to, bytes);
          pass = enc.beginComputePass({ label: `inspect-${p0}` });
        };
        this.#forEachLayerDispatch(rows, p0, (d) => encodeDispatch(pass, ring, d, off), (l, point) => {
          if (point === "router") {
            copy(b.routerLogits, 0, router, (l * T + p0) * ne * 4, rows * ne * 4);
            return;
          }
          const slot = slotOf.get(l);
          const first = Math.max(p0, T - P), end = p0 + rows;
          if (slot === undefined || first >= end) return;
          const k = 2 * slot + (point === "after_ffn" ? 1 : 0);
          copy(b.x, (first - p0) * H * 4, snap, (k * P + first - (T - P)) * H * 4, (end - first) * H * 4);
        });
        encodeDispatch(pass, ring, { ...this.#finalNorm, grid: [rows, 1, 1] }, off);
        pass.end();
        if (p0 + rows === T) enc.copyBufferToBuffer(b.xn, (rows - 1) * H * 4, b.xlast, 0, H * 4);
      }
      const off = this.#slot(s++, {
        pos: 0,
        rows: 1,
        step: 0,
        srcRing: false,
        ringIn: 0,
        logitsRow: 0,
        lane,
      });
      const pass = enc.beginComputePass({ label: "inspect-head" });
      encodeDispatch(pass, ring, this.#lmHeadLast, off);
      pass.end();
      // Other sequences' submissions may follow on the queue: shared buffers are copied out in this one.
      const readLast = copyOut(device, enc, b.logits, V * 4);
      ring.flush(device);
      device.queue.submit([enc.finish()]);
      const lastLogits = new Float32Array(await readLast());
      const routerLogits = new Float32Array(await readBuffer(device, router, 0, Math.max(1, L * T * ne) * 4));
      const routerEntropy = new Float32Array(L).fill(NaN), routerMargin = new Float32Array(L).fill(NaN);
      for (let l = 0; l < L; l++) {
        if (!c.layers[l].moe) continue;
        let h = 0, m = 0;
        for (let t = 0; t < T; t++) {
          const st = routerRowStats(routerLogits.subarray((l * T + t) * ne, (l * T + t) * ne + E));
          h += st.entropy;
          m += st.margin;
        }
        routerEntropy[l] = h / T;
        routerMargin[l] = m / T;
      }
      const out: PromptInspection = { lastLogits, routerEntropy, routerMargin };
      if (P > 0) {
        // Logits of every snapshot row: copy rows into x, final norm, LM head, read back; in chunks.
        const n = candidates.length * 2 * P;
        const logits = new Float32Array(n * V);
        const chunk = Math.min(this.#R, this.#logitRows);
        for (let r0 = 0; r0 < n; r0 += chunk) {
          const rows = Math.min(chunk, n - r0);
          const e2 = device.createCommandEncoder({ label: "inspect-iks" });
          e2.copyBufferToBuffer(snap, r0 * H * 4, b.x, 0, rows * H * 4);
          const o2 = ring.set(0, { pos: 0, rows, step: 0, srcRing: false, ringIn: 0, logitsRow: 0 });
          ring.flush(device);
          const p2 = e2.beginComputePass({ label: "inspect-iks" });
          encodeDispatch(p2, ring, { ...this.#finalNorm, grid: [rows, 1, 1] }, o2);
          const lm = rows > 1 && this.#useGemm
            ? {
              ...this.#lmHead.gemm,
              grid: [Math.ceil(V / 64), Math.ceil(rows / 64), 1] as [number, number, number],
            }
            : this.#lmHead.gemv;
          encodeDispatch(p2, ring, lm, o2);
          p2.end();
          const read = copyOut(device, e2, b.logits, rows * V * 4);
          device.queue.submit([e2.finish()]);
          logits.set(new Float32Array(await read()), r0 * V);
        }
        const iks = new Float64Array(L).fill(NaN);
        candidates.forEach((l, i) => {
          let sum = 0;
          for (let p = 0; p < P; p++) {
            const a = ((2 * i) * P + p) * V, z = ((2 * i + 1) * P + p) * V;
            sum += jensenShannon(logits.subarray(a, a + V), logits.subarray(z, z + V));
          }
          iks[l] = sum / P;
        });
        out.iks = iks;
      }
      return out;
    } finally {
      for (const t of temp) t.destroy();
      this.#lanes.release(lane);
    }
  }

  /** Tokens routed to each expert of each layer since load: [numLayers] u32 arrays of E (dense layers: zeros). */
  async expertActivations(): Promise<Uint32Array[]> {
    this.#check();
    const E = this.config.numExperts, stride = countsStride(E);
    const all = new Uint32Array(
      await readBuffer(this.#device, this.#b.expertCounts, 0, this.config.numLayers * stride),
    );
    return this.config.layers.map((_, l) => all.slice(l * stride / 4, l * stride / 4 + E));
  }

  /** The dispatches of one single-row decode step at position `pos`, in order (embedding to sampler). */
  #decodeStepDispatches(pos: number): Dispatch[] {
    const list: Dispatch[] = [this.#embed];
    this.#forEachLayerDispatch(1, pos, (d) => list.push(d));
    list.push(this.#finalNorm, this.#lmHead.gemv, this.#sample);
    return list;
  }

  /**
   * GPU time of each kind of dispatch in one decode step (at position `pos`), from timestamp queries: every
   * dispatch runs in its own compute pass, so the sum is an upper bound of a real step. Needs `timestamp-query`.
   */
  async profileDecodeStep(pos: number): Promise<Map<string, { ms: number; count: number }>> {
    this.#check();
    if (!this.#ctx.hasTimestamps) {
      throw new GpuError("Cannot profile: the adapter has no timestamp-query feature");
    }
    const release = await this.#lanes.acquireAll();
    try {
      this.#check();
      const device = this.#device;
      const list = this.#decodeStepDispatches(pos);
      const qs = device.createQuerySet({ label: "profile", type: "timestamp", count: 2 * list.length });
      const resolve = device.createBuffer({
        label: "profile-resolve",
        size: 16 * list.length,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
      const off = this.#slot(0, { pos, rows: 1, step: 1, srcRing: true, ringIn: 0, logitsRow: 0 });
      this.#ring.flush(device);
      const enc = device.createCommandEncoder({ label: "profile" });
      list.forEach((d, i) => {
        const pass = enc.beginComputePass({
          label: d.program.label,
          timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
        });
        encodeDispatch(pass, this.#ring, d, off);
        pass.end();
      });
      enc.resolveQuerySet(qs, 0, 2 * list.length, resolve, 0);
      device.queue.submit([enc.finish()]);
      const t = new BigUint64Array(await readBuffer(device, resolve, 0, 16 * list.length));
      const out = new Map<string, { ms: number; count: number }>();
      list.forEach((d, i) => {
        const e = out.get(d.program.label) ?? { ms: 0, count: 0 };
        e.ms += Number(t[2 * i + 1] - t[2 * i]) / 1e6;
        e.count++;
        out.set(d.program.label, e);
      });
      qs.destroy();
      resolve.destroy();
      return out;
    } finally {
      release();
    }
  }

  /**
   * GPU time of one decode step at position `pos` as the generation loop runs it (every dispatch in one compute
   * pass): `steps` copies of the step in a pass between two timestamps, in milliseconds per step. With
   * {@linkcode profileDecodeStep}'s sum it tells the cost of a pass per dispatch from the kernels' own time.
   * Dispatches whose program label is in `skip` are left out (an ablation: what they cost in a real pass; the
   * results are then wrong). Needs `timestamp-query`.
   */
  async timeDecodeStep(pos: number, steps = 16, skip: ReadonlySet<string> = new Set()): Promise<number> {
    this.#check();
    if (!this.#ctx.hasTimestamps) {
      throw new GpuError("Cannot time a decode step: the adapter has no timestamp-query feature");
    }
    if (!Number.isInteger(steps) || steps < 1) {
      throw new RangeError(`Cannot time a decode step: steps must be a positive integer, got ${steps}`);
    }
    const release = await this.#lanes.acquireAll();
    try {
      this.#check();
      const device = this.#device;
      const list = this.#decodeStepDispatches(pos);
      // qs: 2 timestamps; resolve: [2] u64.
      const qs = device.createQuerySet({ label: "step-time", type: "timestamp", count: 2 });
      const resolve = device.createBuffer({
        label: "step-time-resolve",
        size: 16,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
      const off = this.#slot(0, { pos, rows: 1, step: 1, srcRing: true, ringIn: 0, logitsRow: 0 });
      this.#ring.flush(device);
      const enc = device.createCommandEncoder({ label: "step-time" });
      const pass = enc.beginComputePass({
        label: "step-time",
        timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
      });
      const kept = list.filter((d) => !skip.has(d.program.label));
      for (let s = 0; s < steps; s++) for (const d of kept) encodeDispatch(pass, this.#ring, d, off);
      pass.end();
      enc.resolveQuerySet(qs, 0, 2, resolve, 0);
      device.queue.submit([enc.finish()]);
      const t = new BigUint64Array(await readBuffer(device, resolve, 0, 16));
      qs.destroy();
      resolve.destroy();
      return Number(t[1] - t[0]) / 1e6 / steps;
    } finally {
      release();
    }
  }

  /** Frees every GPU buffer of the model. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const m of this.#members) {
      m.error = new GpuError("Cannot generate: the model's GPU resources were disposed");
      m.wake?.();
    }
    for (const b of this.#buffers) b.destroy();
    for (const s of this.#stagingPool) s.destroy();
    this.#ring.buffer.destroy();
  }

  /** Adapter the model runs on. */
  get adapterName(): string {
    return this.#ctx.adapterName;
  }
}
