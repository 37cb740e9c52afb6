/**
 * The decoder on the CPU: the whole forward pass in TypeScript on float32 weights, built from the reference
 * ops of `kernels/cpu`. It is the oracle the WebGPU backend is tested against and the fallback where no GPU
 * adapter exists. Read it top to bottom: embedding, then per layer attention and the MoE block, then the LM head.
 *
 * @module
 */

import {
  attentionRef,
  expertsRef,
  int8ActivationsRef,
  matmulRef,
  rmsNormRef,
  ropeRef,
  routeRef,
  sampleRef,
} from "../kernels/cpu/mod.ts";
import type { Checkpoint } from "./checkpoint.ts";
import { type ModelConfig, ropeTables } from "./config.ts";
import type { ResolvedGenerateOptions, TokenSource } from "./generation.ts";
import { GearCpuCache } from "./kv/gear_cpu.ts";
import { isCompressed, type ResolvedKvCache } from "./kv/kv_options.ts";
import { planWeights, readWeightF32 } from "./weights.ts";

/** Float32 weights of one layer, by the keys of engine/weights.ts. */
export type CpuLayerWeights = Map<string, Float32Array>;

/** Float32 weights of the model. */
export interface CpuWeights {
  /** [V, H] */
  embed: Float32Array;
  /** [H] */
  finalNorm: Float32Array;
  /** [V, H] */
  lmHead: Float32Array;
  /** Per layer. */
  layers: CpuLayerWeights[];
}

/** Reads every weight of `ckpt` as float32. */
export async function loadCpuWeights(ckpt: Checkpoint): Promise<CpuWeights> {
  const plan = planWeights(ckpt);
  const embed = await readWeightF32(ckpt, plan.global.get("embed")!);
  const lmSpec = plan.global.get("lm_head")!;
  const lmHead = lmSpec.parts[0].tensor === plan.global.get("embed")!.parts[0].tensor
    ? embed
    : await readWeightF32(ckpt, lmSpec);
  const layers: CpuLayerWeights[] = [];
  for (const specs of plan.layers) {
    const m: CpuLayerWeights = new Map();
    for (const [key, spec] of specs) m.set(key, await readWeightF32(ckpt, spec));
    layers.push(m);
  }
  return { embed, finalNorm: await readWeightF32(ckpt, plan.global.get("final_norm")!), lmHead, layers };
}

/** Per-sequence KV cache: per layer K and V, each [nKV, capacity, hd] f32. */
export interface CpuKvCache {
  /** Positions the cache can hold. */
  capacity: number;
  /** Keys per layer. */
  k: Float32Array[];
  /** Values per layer. */
  v: Float32Array[];
  /** Keys and values are rounded to f16 as they are stored (the plain f16 cache). */
  f16?: boolean;
}

/** Options of {@linkcode CpuDecoder} beyond the weights. */
export interface CpuDecoderOptions {
  /** The KV cache generation and `logits` use (default: the plain f32 cache). */
  kvCache?: ResolvedKvCache;
  /** Rows of one prompt chunk with a compressed cache (default 256, as on WebGPU). */
  prefillRows?: number;
  /**
   * Round the inputs of the attention projections, the router and the experts to int8 per block of 32 (what an
   * integer dot-product kernel would compute; the LM head keeps f32), for quality studies (default false).
   */
  int8Activations?: boolean;
}

const PLAIN_F32: ResolvedKvCache = {
  mode: "f32",
  bits: 0,
  group: 0,
  rank: 0,
  prefillRank: 0,
  loops: 0,
  outliers: 0,
  buffer: 0,
  seed: 0,
};

/** Receives the inputs of each layer's linear blocks during a forward pass (calibration). */
export interface ForwardObserver {
  /** Layer `layer`'s attention: `xn` [T, H] is the input of q/k/v, `attn` [T, nH·hd] the input of o. */
  attention?(layer: number, xn: Float32Array, attn: Float32Array): void;
  /**
   * Layer `layer`'s feed-forward block: `x` [T, H] is the normalized input, `ids`/`weights` [T, k] the routing
   * (a dense layer reports expert 0 with weight 1, k = 1).
   */
  feedForward?(layer: number, x: Float32Array, ids: Int32Array, weights: Float32Array, k: number): void;
  /** Layer `layer`'s router logits [T, E] (MoE layers only). */
  router?(layer: number, logits: Float32Array): void;
  /**
   * The residual stream x [T, H] of layer `layer` just before its feed-forward block ("before_ffn") and just
   * after it ("after_ffn"); the array is live: copy what must be kept.
   */
  residual?(layer: number, stage: "before_ffn" | "after_ffn", x: Float32Array): void;
}

/** The CPU decoder of one model. */
export class CpuDecoder implements TokenSource {
  /** The architecture. */
  readonly config: ModelConfig;
  readonly #w: CpuWeights;
  readonly #cos: Float32Array;
  readonly #sin: Float32Array;
  /** Positions the rope tables cover (the model's context). */
  readonly contextLength: number;
  /** The KV cache of `logits` and of generation unless a request names another. */
  readonly kvCache: ResolvedKvCache;
  /** Rows of one prompt chunk with a compressed cache. */
  readonly prefillRows: number;
  /** Tokens routed to each expert of each layer since construction: [numLayers] arrays of E (dense: zeros). */
  readonly expertCounts: Uint32Array[];
  /** Whether linear inputs are rounded to int8 (see {@linkcode CpuDecoderOptions.int8Activations}). */
  readonly int8Activations: boolean;

  /** Makes a decoder over `weights` for up to `contextLength` positions. */
  constructor(
    config: ModelConfig,
    weights: CpuWeights,
    contextLength: number,
    options: CpuDecoderOptions = {},
  ) {
    this.config = config;
    this.#w = weights;
    this.contextLength = contextLength;
    this.kvCache = options.kvCache ?? PLAIN_F32;
    this.prefillRows = Math.max(1, Math.min(options.prefillRows ?? 256, contextLength));
    this.int8Activations = options.int8Activations ?? false;
    this.expertCounts = config.layers.map(() => new Uint32Array(config.numExperts));
    const { cos, sin } = ropeTables(config.rope, config.headDim, contextLength);
    this.#cos = cos;
    this.#sin = sin;
  }

  /** A plain f32 cache for `capacity` positions. */
  newCache(capacity: number): CpuKvCache {
    const c = this.config;
    const size = c.numKvHeads * capacity * c.headDim;
    return {
      capacity,
      k: c.layers.map(() => new Float32Array(size)),
      v: c.layers.map(() => new Float32Array(size)),
    };
  }

  /** A cache of kind `kv` for `capacity` positions (a compressed one takes calls of up to prefillRows rows). */
  newCacheOf(kv: ResolvedKvCache, capacity: number): CpuKvCache | GearCpuCache {
    if (isCompressed(kv.mode)) {
      return new GearCpuCache(this.config, kv, capacity, this.prefillRows);
    }
    return { ...this.newCache(capacity), f16: kv.mode === "f16" };
  }

  /**
   * Runs `ids` from position `pos0` through the model in calls of at most `prefillRows` rows when `cache` is
   * compressed (as the GPU decoder does; one call otherwise). Returns the logits as {@linkcode forward} does.
   */
  forwardChunked(
    ids: readonly number[],
    pos0: number,
    cache: CpuKvCache | GearCpuCache,
    allLogits: boolean,
    observer?: ForwardObserver,
  ): Float32Array {
    if (!(cache instanceof GearCpuCache) || ids.length <= this.prefillRows) {
      return this.forward(ids, pos0, cache, allLogits, observer);
    }
    const V = this.config.vocabSize;
    const out = new Float32Array((allLogits ? ids.length : 1) * V);
    for (let p = 0; p < ids.length; p += this.prefillRows) {
      const part = ids.slice(p, p + this.prefillRows);
      const last = p + part.length === ids.length;
      const logits = this.forward(part, pos0 + p, cache, allLogits, observer);
      if (allLogits) out.set(logits, p * V);
      else if (last) out.set(logits);
    }
    return out;
  }

  /**
   * Runs tokens `ids` at positions pos0.. through the model, appending their keys and values to `cache`.
   * Returns the logits [rows, V] of every position when `allLogits`, else of the last one only ([1, V]).
   */
  forward(
    ids: readonly number[],
    pos0: number,
    cache: CpuKvCache | GearCpuCache,
    allLogits: boolean,
    observer?: ForwardObserver,
  ): Float32Array {
    const c = this.config;
    const T = ids.length, H = c.hiddenSize, hd = c.headDim, nH = c.numHeads, nKV = c.numKvHeads;
    const qDim = nH * hd, kvDim = nKV * hd, qkvDim = qDim + 2 * kvDim;
    const positions = Array.from({ length: T }, (_, i) => pos0 + i);
    const rm = c.residualMultiplier;

    // x [T, H]: token embeddings (Granite scales them).
    const x = new Float32Array(T * H);
    for (let t = 0; t < T; t++) {
      for (let i = 0; i < H; i++) x[t * H + i] = this.#w.embed[ids[t] * H + i] * c.embeddingMultiplier;
    }

    // Inputs of the linear blocks, rounded to int8 per block of 32 when studying integer kernels.
    const q8 = this.int8Activations;
    const act = (a: Float32Array, k: number) => q8 ? int8ActivationsRef(a, k) : a;
    for (let l = 0; l < c.numLayers; l++) {
      const w = this.#w.layers[l];
      // --- attention ---
      const xn = rmsNormRef(x, w.get("attn_norm")!, c.rmsNormEps, T, H);
      const qkv = matmulRef(act(xn, H), w.get("qkv")!, T, qkvDim, H, { bias: w.get("qkv_bias") }); // [T, qkvDim]
      const q = new Float32Array(T * qDim), k = new Float32Array(T * kvDim), v = new Float32Array(T * kvDim);
      for (let t = 0; t < T; t++) {
        q.set(qkv.subarray(t * qkvDim, t * qkvDim + qDim), t * qDim);
        k.set(qkv.subarray(t * qkvDim + qDim, t * qkvDim + qDim + kvDim), t * kvDim);
        v.set(qkv.subarray(t * qkvDim + qDim + kvDim, (t + 1) * qkvDim), t * kvDim);
      }
      if (c.qkNorm === "per_head") {
        rmsNormRef(q, w.get("q_norm")!, c.rmsNormEps, T * nH, hd, q);
        rmsNormRef(k, w.get("k_norm")!, c.rmsNormEps, T * nKV, hd, k);
      } else if (c.qkNorm === "full") {
        rmsNormRef(q, w.get("q_norm")!, c.rmsNormEps, T, qDim, q);
        rmsNormRef(k, w.get("k_norm")!, c.rmsNormEps, T, kvDim, k);
      }
      if (c.clipQkv > 0) {
        for (const a of [q, k, v]) {
          for (let i = 0; i < a.length; i++) a[i] = Math.min(c.clipQkv, Math.max(-c.clipQkv, a[i]));
        }
      }
      ropeRef(q, T, nH, hd, positions, this.#cos, this.#sin);
      ropeRef(k, T, nKV, hd, positions, this.#cos, this.#sin);
      let kc: Float32Array, vc: Float32Array;
      if (cache instanceof GearCpuCache) {
        // Compressed cache: append to its full-precision ring; attention reads what the cache stands for.
        cache.append(l, k, v, pos0, T);
        kc = cache.viewK[l];
        vc = cache.viewV[l];
      } else {
        if (cache.f16) {
          k.set(new Float16Array(k));
          v.set(new Float16Array(v));
        }
        // Append k, v: cache layout [nKV, capacity, hd].
        for (let t = 0; t < T; t++) {
          for (let h = 0; h < nKV; h++) {
            const dst = (h * cache.capacity + positions[t]) * hd;
            cache.k[l].set(k.subarray((t * nKV + h) * hd, (t * nKV + h + 1) * hd), dst);
            cache.v[l].set(v.subarray((t * nKV + h) * hd, (t * nKV + h + 1) * hd), dst);
          }
        }
        kc = cache.k[l];
        vc = cache.v[l];
      }
      const attn = attentionRef(q, kc, vc, T, positions, {
        nH,
        nKV,
        hd,
        capacity: cache.capacity,
        scale: c.attentionScale,
        window: c.layers[l].slidingWindow,
      });
      observer?.attention?.(l, xn, attn);
      const o = matmulRef(act(attn, qDim), w.get("o")!, T, H, qDim, { bias: w.get("o_bias") });
      for (let i = 0; i < T * H; i++) x[i] += rm * o[i];

      // --- feed-forward: MoE block or dense MLP ---
      observer?.residual?.(l, "before_ffn", x);
      const fn = rmsNormRef(x, w.get("ffn_norm")!, c.rmsNormEps, T, H);
      const out = new Float32Array(T * H);
      if (c.layers[l].moe) {
        const E = c.numExperts, K = c.topK, I = c.expertIntermediateSize;
        const logits = matmulRef(act(fn, H), w.get("router")!, T, E, H);
        observer?.router?.(l, logits);
        const { ids: sel, weights } = routeRef(logits, T, E, K, c.routerMode, c.normTopkProb);
        const counts = this.expertCounts[l];
        for (let i = 0; i < sel.length; i++) counts[sel[i]]++;
        observer?.feedForward?.(l, fn, sel, weights, K);
        expertsRef(fn, T, sel, weights, K, w.get("gate_up")!, w.get("down")!, H, I, out, q8);
        if (c.sharedExpertIntermediateSize > 0) {
          const S = c.sharedExpertIntermediateSize;
          const gate = matmulRef(act(fn, H), w.get("shared_gate")!, T, 1, H);
          const shared = new Float32Array(T * H);
          expertsRef(
            fn,
            T,
            new Int32Array(T),
            new Float32Array(T).fill(1),
            1,
            w.get("shared_gate_up")!,
            w.get("shared_down")!,
            H,
            S,
            shared,
            q8,
          );
          for (let t = 0; t < T; t++) {
            const g = 1 / (1 + Math.exp(-gate[t]));
            for (let i = 0; i < H; i++) out[t * H + i] += g * shared[t * H + i];
          }
        }
      } else {
        const D = c.denseIntermediateSize;
        observer?.feedForward?.(l, fn, new Int32Array(T), new Float32Array(T).fill(1), 1);
        expertsRef(
          fn,
          T,
          new Int32Array(T),
          new Float32Array(T).fill(1),
          1,
          w.get("gate_up")!,
          w.get("down")!,
          H,
          D,
          out,
          q8,
        );
      }
      for (let i = 0; i < T * H; i++) x[i] += rm * out[i];
      observer?.residual?.(l, "after_ffn", x);
    }

    if (cache instanceof GearCpuCache) cache.endCall(pos0, T);

    // --- LM head over the requested rows ---
    const first = allLogits ? 0 : T - 1;
    const rows = T - first;
    return this.headLogits(x.subarray(first * H), rows);
  }

  /** Logits [rows, V] of residual-stream rows `x` [rows, H]: the final norm, the LM head, logit scaling. */
  headLogits(x: Float32Array, rows: number): Float32Array {
    const c = this.config, H = c.hiddenSize;
    const xn = rmsNormRef(x.subarray(0, rows * H), this.#w.finalNorm, c.rmsNormEps, rows, H);
    const logits = matmulRef(xn, this.#w.lmHead, rows, c.vocabSize, H);
    if (c.logitsScaling !== 1) { for (let i = 0; i < logits.length; i++) logits[i] /= c.logitsScaling; }
    return logits;
  }

  /** Logits of every position of `ids`, [ids.length, V], with the decoder's KV cache. */
  logits(ids: readonly number[]): Float32Array {
    const cache = this.newCacheOf(this.kvCache, ids.length);
    return this.forwardChunked(ids, 0, cache, true);
  }

  /** Produces new tokens one at a time (the CPU has no round trip to amortize). */
  produce(ids: readonly number[], options: ResolvedGenerateOptions): AsyncGenerator<number[]> {
    return this.produceWith(ids, options, this.kvCache);
  }

  /** {@linkcode produce} with the KV cache `kv`. */
  async *produceWith(
    ids: readonly number[],
    options: ResolvedGenerateOptions,
    kv: ResolvedKvCache,
  ): AsyncGenerator<number[]> {
    const cache = this.newCacheOf(kv, ids.length + options.maxTokens);
    // Layer fused decoding: capture the last row of the residual stream after the fused layer, and add α × its
    // logits (final norm, LM head) to the final logits.
    const lfd = options.lfd;
    const H = this.config.hiddenSize;
    let fusedRow: Float32Array | undefined;
    const observer: ForwardObserver | undefined = lfd
      ? {
        residual(l, stage, x) {
          if (l === lfd.layer && stage === "after_ffn") fusedRow = x.slice(x.length - H);
        },
      }
      : undefined;
    const fuse = (logits: Float32Array) => {
      if (!lfd || !fusedRow) return logits;
      const extra = this.headLogits(fusedRow, 1);
      for (let i = 0; i < logits.length; i++) logits[i] += lfd.alpha * extra[i];
      return logits;
    };
    let logits = fuse(this.forwardChunked(ids, 0, cache, false, observer));
    for (let step = 0; step < options.maxTokens; step++) {
      const token = sampleRef(logits, options.sampling, step);
      yield [token];
      if (step + 1 < options.maxTokens) {
        logits = fuse(this.forward([token], ids.length + step, cache, false, observer));
      }
      // Let other tasks (an HTTP server) run between tokens.
      await new Promise((r) => setTimeout(r, 0));
    }
  }
}
