/**
 * `loadModel`: from a checkpoint directory or a Hugging Face repo id to a {@linkcode Model} on WebGPU or the
 * CPU, with the checkpoint's tokenizer and chat template.
 *
 * @module
 */

import { join } from "node:path";
import { acquireGpu, hasWebGpuAdapter } from "../kernels/gpu.ts";
import { Checkpoint, readJson } from "./checkpoint.ts";
import type { ModelConfig } from "./config.ts";
import { CpuDecoder, loadCpuWeights } from "./cpu_decoder.ts";
import { ModelDisposedError } from "./errors.ts";
import { checkTokenIds, resolveGenerateOptions, runGeneration, type TokenSource } from "./generation.ts";
import { GpuDecoder } from "./gpu_decoder.ts";
import { type HubOptions, resolveModelSource } from "./hub.ts";
import { kvBytesPerToken, plainBytesPerToken } from "./kv/accounting.ts";
import {
  describeKvCache,
  isCompressed,
  type KvCacheOptions,
  type ResolvedKvCache,
  resolveKvCache,
  sameKvCache,
} from "./kv/kv_options.ts";
import { loadTokenizer } from "./tokenizer.ts";
import { inspectCpu } from "./inspect.ts";
import { chooseFusionLayer, resolveLfdOptions } from "./lfd.ts";
import type {
  Backend,
  DType,
  GenerateOptions,
  GenerationStats,
  InspectOptions,
  Model,
  ModelTokenizer,
  PromptInspection,
} from "./types.ts";

/** Options of {@linkcode loadModel}. */
export interface LoadModelOptions {
  /** "webgpu", "cpu", or "auto" (default): WebGPU when an adapter exists, else the CPU with a warning. */
  backend?: Backend | "auto";
  /** Weight and KV-cache precision on WebGPU (default: f16 on hardware adapters, f32 on software ones). */
  dtype?: DType;
  /** Positions the KV cache holds (default: the model's max_position_embeddings, at most 4096). */
  contextLength?: number;
  /** Rows of one prefill chunk on WebGPU (default 256). */
  prefillRows?: number;
  /**
   * Sequences the WebGPU decoder generates together (continuous batching; default 1, at most 32): their
   * decode steps share GPU passes, and the KV cache holds this many contexts. More concurrent generations
   * wait for a free one (a compressed KV cache too: one compressed store per lane). The CPU backend runs one
   * sequence at a time.
   */
  batch?: number;
  /** Use the tiled GEMM for prefill on WebGPU (default: on hardware adapters). */
  gemm?: boolean;
  /**
   * The KV cache: `{ mode: "f16" | "f32" }` plain (default: the model's dtype; f16 on the CPU rounds stored
   * keys and values), or `quant`, `gear-l`, `gear` with `bits`, `group`, `rank`, `prefillRank`, `loops`,
   * `outliers`, `buffer`, `seed` (see engine/kv/kv_options.ts and docs/kv_cache.md).
   */
  kvCache?: KvCacheOptions;
  /**
   * CPU backend only: round the inputs of the attention projections, the router and the experts to int8 per
   * block of 32, as an integer dot-product kernel would (quality studies; default false).
   */
  int8Activations?: boolean;
  /**
   * WebGPU backend, packed checkpoints: the experts' mat-vecs round their inputs to int8 per block of 32 and
   * multiply with integer dot products (`MatvecShape.int8`; default true, ~6 % faster decode on an H200 at
   * OLMoE's shape); false reads them in f32, as the cpu backend does. `true` on the cpu backend is refused (see
   * `int8Activations`).
   */
  int8Experts?: boolean;
  /** Where and how to download a repo id (cache directory, revision, token, progress). */
  hub?: HubOptions;
  /** Receives warnings (default: console.warn). */
  onWarning?: (message: string) => void;
}

const DEFAULT_CONTEXT = 4096;

class LoadedModel implements Model {
  readonly config: ModelConfig;
  readonly tokenizer: ModelTokenizer;
  readonly backend: Backend;
  readonly dtype: DType;
  lastStats: GenerationStats | undefined;
  readonly #decoder:
    | (TokenSource & { logits(ids: readonly number[]): Float32Array | Promise<Float32Array> })
    | undefined;
  #gpu: GpuDecoder | undefined;
  readonly #cpu: CpuDecoder | undefined;
  readonly #contextLength: number;
  readonly #kv: ResolvedKvCache;
  readonly #prefillRows: number;
  #disposed = false;
  #gpuCounts: Uint32Array[];
  #countsRead: Promise<void> | undefined;

  constructor(
    config: ModelConfig,
    tokenizer: ModelTokenizer,
    backend: Backend,
    dtype: DType,
    decoder: TokenSource & { logits(ids: readonly number[]): Float32Array | Promise<Float32Array> },
    contextLength: number,
    kv: { cache: ResolvedKvCache; prefillRows: number },
    gpu?: GpuDecoder,
  ) {
    this.config = config;
    this.tokenizer = tokenizer;
    this.backend = backend;
    this.dtype = dtype;
    this.#decoder = decoder;
    this.#gpu = gpu;
    this.#cpu = decoder instanceof CpuDecoder ? decoder : undefined;
    this.#contextLength = contextLength;
    this.#gpuCounts = config.layers.map(() => new Uint32Array(config.numExperts));
    this.#kv = kv.cache;
    this.#prefillRows = kv.prefillRows;
  }

  /** The KV cache a request runs with: the model's, or the request's when this backend can serve it. */
  #requestKv(options: GenerateOptions | undefined): ResolvedKvCache {
    if (options?.kvCache === undefined) return this.#kv;
    const plain = this.backend === "webgpu" ? this.dtype : "f32";
    const kv = resolveKvCache(options.kvCache, plain);
    if (this.backend === "webgpu" && !sameKvCache(kv, this.#kv)) {
      throw new RangeError(
        `Cannot generate with kvCache ${describeKvCache(kv)}: this model runs on webgpu with ${
          describeKvCache(this.#kv)
        }, whose buffers and kernels were made at load (load it with that kvCache instead)`,
      );
    }
    return kv;
  }

  /** Stats with the KV bytes per token of a sequence of `promptTokens + completionTokens` tokens. */
  #withKvBytes(stats: GenerationStats, kv: ResolvedKvCache): GenerationStats {
    const total = stats.promptTokens + stats.completionTokens;
    const fp = this.backend === "webgpu" ? this.dtype : "f32";
    return {
      ...stats,
      kvBytesPerToken: isCompressed(kv.mode)
        ? kvBytesPerToken(this.config, kv, stats.promptTokens, total, this.#prefillRows, fp)
        : plainBytesPerToken(this.config, kv.mode === "f16" ? "f16" : "f32"),
      kvBytesPerTokenF16: plainBytesPerToken(this.config, "f16"),
    };
  }

  #live() {
    if (this.#disposed || !this.#decoder) throw new ModelDisposedError();
    return this.#decoder;
  }

  async logits(ids: readonly number[]): Promise<Float32Array> {
    const d = this.#live();
    checkTokenIds(ids, this.config.vocabSize);
    if (ids.length > this.#contextLength) {
      throw new RangeError(
        `Cannot compute logits: ${ids.length} tokens exceed the context of ${this.#contextLength}`,
      );
    }
    const out = await d.logits(ids);
    this.#refreshCounts();
    return out;
  }

  async generate(ids: readonly number[], options?: GenerateOptions): Promise<number[]> {
    const out: number[] = [];
    for await (const t of this.stream(ids, options)) out.push(t);
    return out;
  }

  stream(ids: readonly number[], options?: GenerateOptions): AsyncIterable<number> {
    const d = this.#live();
    checkTokenIds(ids, this.config.vocabSize);
    const resolved = resolveGenerateOptions(options, ids.length, this.#contextLength, this.tokenizer);
    const kv = this.#requestKv(options);
    const cpu = this.#cpu;
    let source: TokenSource = cpu && kv !== this.#kv ? { produce: (i, o) => cpu.produceWith(i, o, kv) } : d;
    const lfd = resolveLfdOptions(options?.lfd, this.config.numLayers);
    let lfdLayer: number | undefined;
    if (typeof lfd.layer === "number") {
      lfdLayer = lfd.layer;
      resolved.lfd = { layer: lfd.layer, alpha: lfd.alpha };
    } else if (lfd.layer === "auto") {
      // The layer with the lowest internal knowledge score of this prompt, chosen once per request.
      const inner = source;
      const inspect = (i: readonly number[]) => this.inspect(i, { iksPositions: lfd.positions });
      const L = this.config.numLayers;
      source = {
        async *produce(i, o) {
          lfdLayer = chooseFusionLayer((await inspect(i)).iks!, L);
          yield* inner.produce(
            i,
            lfdLayer === undefined ? o : { ...o, lfd: { layer: lfdLayer, alpha: lfd.alpha } },
          );
        },
      };
    }
    return runGeneration(source, this.tokenizer, ids, resolved, (stats) => {
      this.lastStats = { ...this.#withKvBytes(stats, kv), ...(lfdLayer !== undefined ? { lfdLayer } : {}) };
      this.#refreshCounts();
    });
  }

  expertActivations(): readonly Uint32Array[] {
    if (this.#cpu) return this.#cpu.expertCounts.map((a) => a.slice());
    return this.#gpuCounts;
  }

  /** Reads the GPU's expert counters into the snapshot `expertActivations` returns (after each call). */
  #refreshCounts(): void {
    const gpu = this.#gpu;
    if (!gpu || this.#disposed) return;
    // One readback at a time, tracked so that dispose() waits for it.
    this.#countsRead = (this.#countsRead ?? Promise.resolve()).then(async () => {
      if (this.#disposed) return;
      this.#gpuCounts = await gpu.expertActivations();
    }).catch(() => {});
  }

  async inspect(ids: readonly number[], options?: InspectOptions): Promise<PromptInspection> {
    this.#live();
    checkTokenIds(ids, this.config.vocabSize);
    if (ids.length > this.#contextLength) {
      throw new RangeError(
        `Cannot inspect the prompt: ${ids.length} tokens exceed the context of ${this.#contextLength}`,
      );
    }
    if (this.#cpu) return inspectCpu(this.#cpu, ids, options);
    const out = await this.#gpu!.inspect(ids, options);
    this.#refreshCounts();
    return out;
  }

  async dispose(): Promise<void> {
    this.#disposed = true;
    await this.#countsRead;
    this.#gpu?.dispose();
    this.#gpu = undefined;
  }
}

/** Ids that end generation: the config's, plus generation_config.json's when present. */
async function eosIds(dir: string, config: ModelConfig): Promise<number[]> {
  const ids = new Set(config.eosTokenIds);
  try {
    const gen = await readJson(join(dir, "generation_config.json")) as { eos_token_id?: unknown };
    const e = gen.eos_token_id;
    for (const id of Array.isArray(e) ? e : [e]) if (typeof id === "number") ids.add(id);
  } catch {
    // generation_config.json is optional.
  }
  return [...ids];
}

/**
 * Loads a Mixture-of-Experts model from a checkpoint directory or a Hugging Face repo id.
 *
 * @example
 * ```ts
 * const model = await loadModel("fixtures/models/olmoe", { backend: "cpu" });
 * const ids = model.tokenizer.encode("Hello");
 * const next = await model.generate(ids, { maxTokens: 8 });
 * await model.dispose();
 * ```
 */
export async function loadModel(source: string, options: LoadModelOptions = {}): Promise<Model> {
  const warn = options.onWarning ?? ((m: string) => console.warn(m));
  const wanted = options.backend ?? "auto";
  if (!["auto", "webgpu", "cpu"].includes(wanted)) {
    throw new TypeError(
      `Cannot load the model: backend must be "auto", "webgpu" or "cpu", got ${JSON.stringify(wanted)}`,
    );
  }
  if (options.dtype !== undefined && options.dtype !== "f32" && options.dtype !== "f16") {
    throw new TypeError(
      `Cannot load the model: dtype must be "f32" or "f16", got ${JSON.stringify(options.dtype)}`,
    );
  }
  const dir = await resolveModelSource(source, options.hub);
  const ckpt = await Checkpoint.open(dir);
  try {
    const config = ckpt.config;
    const contextLength = options.contextLength ?? Math.min(config.maxPositionEmbeddings, DEFAULT_CONTEXT);
    if (!Number.isInteger(contextLength) || contextLength < 2) {
      throw new RangeError(
        `Cannot load the model: contextLength must be an integer >= 2, got ${contextLength}`,
      );
    }
    const tokenizer = await loadTokenizer(dir, { eosTokenIds: await eosIds(dir, config) });
    const prefillRows = Math.max(1, Math.min(options.prefillRows ?? 256, contextLength));
    let backend: Backend = wanted === "auto" ? "webgpu" : wanted;
    if (wanted === "auto" && !(await hasWebGpuAdapter())) {
      warn("edgemix: no WebGPU adapter was found; running the model on the CPU (slow)");
      backend = "cpu";
    }
    if (backend === "cpu") {
      if (options.int8Experts) {
        throw new RangeError(
          "Cannot load the model: int8Experts is a webgpu kernel option (on the cpu backend, int8Activations rounds the linear inputs)",
        );
      }
      if (options.dtype === "f16") {
        throw new RangeError(
          "Cannot load the model: the cpu backend computes in f32 only (dtype f16 needs webgpu)",
        );
      }
      const cache = resolveKvCache(options.kvCache, "f32");
      const decoder = new CpuDecoder(config, await loadCpuWeights(ckpt), contextLength, {
        kvCache: cache,
        prefillRows,
        int8Activations: options.int8Activations,
      });
      return new LoadedModel(config, tokenizer, "cpu", "f32", decoder, contextLength, { cache, prefillRows });
    }
    if (options.int8Activations) {
      throw new RangeError(
        "Cannot load the model: int8Activations is a study of the cpu backend (on webgpu only the packed experts round their inputs to int8: int8Experts)",
      );
    }
    const ctx = await acquireGpu();
    const dtype = options.dtype ?? (ctx.isFallback ? "f32" : "f16");
    const cache = resolveKvCache(options.kvCache, dtype);
    if (!isCompressed(cache.mode) && cache.mode !== dtype) {
      throw new RangeError(
        `Cannot load the model: the plain KV cache on webgpu has the model's dtype (${dtype}), got kvCache mode ${cache.mode}`,
      );
    }
    const gpu = await GpuDecoder.create(ctx, ckpt, {
      dtype,
      contextLength,
      prefillRows: options.prefillRows,
      gemm: options.gemm,
      kvCache: isCompressed(cache.mode) ? cache : undefined,
      lanes: options.batch,
      ...(options.int8Experts === false
        ? { matvecShapes: { qGateUp: { int8: false }, qDown: { int8: false } } }
        : {}),
    });
    return new LoadedModel(
      config,
      tokenizer,
      "webgpu",
      dtype,
      gpu,
      contextLength,
      { cache, prefillRows },
      gpu,
    );
  } finally {
    ckpt.close();
  }
}
