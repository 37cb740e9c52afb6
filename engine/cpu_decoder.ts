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
  matmulRef,
  rmsNormRef,
  ropeRef,
  routeRef,
  sampleRef,
} from "../kernels/cpu/mod.ts";
import type { Checkpoint } from "./checkpoint.ts";
import { type ModelConfig, ropeTables } from "./config.ts";
import type { ResolvedGenerateOptions, TokenSource } from "./generation.ts";
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
}

/** Receives the inputs of each layer's linear blocks during a forward pass (calibration). */
export interface ForwardObserver {
  /** Layer `layer`'s attention: `xn` [T, H] is the input of q/k/v, `attn` [T, nH·hd] the input of o. */
  attention?(layer: number, xn: Float32Array, attn: Float32Array): void;
  /**
   * Layer `layer`'s feed-forward block: `x` [T, H] is the normalized input, `ids`/`weights` [T, k] the routing
   * (a dense layer reports expert 0 with weight 1, k = 1).
   */
  feedForward?(layer: number, x: Float32Array, ids: Int32Array, weights: Float32Array, k: number): void;
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

  /** Makes a decoder over `weights` for up to `contextLength` positions. */
  constructor(config: ModelConfig, weights: CpuWeights, contextLength: number) {
    this.config = config;
    this.#w = weights;
    this.contextLength = contextLength;
    const { cos, sin } = ropeTables(config.rope, config.headDim, contextLength);
    this.#cos = cos;
    this.#sin = sin;
  }

  /** A cache for `capacity` positions. */
  newCache(capacity: number): CpuKvCache {
    const c = this.config;
    const size = c.numKvHeads * capacity * c.headDim;
    return {
      capacity,
      k: c.layers.map(() => new Float32Array(size)),
      v: c.layers.map(() => new Float32Array(size)),
    };
  }

  /**
   * Runs tokens `ids` at positions pos0.. through the model, appending their keys and values to `cache`.
   * Returns the logits [rows, V] of every position when `allLogits`, else of the last one only ([1, V]).
   */
  forward(
    ids: readonly number[],
    pos0: number,
    cache: CpuKvCache,
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

    for (let l = 0; l < c.numLayers; l++) {
      const w = this.#w.layers[l];
      // --- attention ---
      const xn = rmsNormRef(x, w.get("attn_norm")!, c.rmsNormEps, T, H);
      const qkv = matmulRef(xn, w.get("qkv")!, T, qkvDim, H, { bias: w.get("qkv_bias") }); // [T, qkvDim]
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
      // Append k, v: cache layout [nKV, capacity, hd].
      for (let t = 0; t < T; t++) {
        for (let h = 0; h < nKV; h++) {
          const dst = (h * cache.capacity + positions[t]) * hd;
          cache.k[l].set(k.subarray((t * nKV + h) * hd, (t * nKV + h + 1) * hd), dst);
          cache.v[l].set(v.subarray((t * nKV + h) * hd, (t * nKV + h + 1) * hd), dst);
        }
      }
      const attn = attentionRef(q, cache.k[l], cache.v[l], T, positions, {
        nH,
        nKV,
        hd,
        capacity: cache.capacity,
        scale: c.attentionScale,
        window: c.layers[l].slidingWindow,
      });
      observer?.attention?.(l, xn, attn);
      const o = matmulRef(attn, w.get("o")!, T, H, qDim, { bias: w.get("o_bias") });
      for (let i = 0; i < T * H; i++) x[i] += rm * o[i];

      // --- feed-forward: MoE block or dense MLP ---
      const fn = rmsNormRef(x, w.get("ffn_norm")!, c.rmsNormEps, T, H);
      const out = new Float32Array(T * H);
      if (c.layers[l].moe) {
        const E = c.numExperts, K = c.topK, I = c.expertIntermediateSize;
        const logits = matmulRef(fn, w.get("router")!, T, E, H);
        const { ids: sel, weights } = routeRef(logits, T, E, K, c.routerMode, c.normTopkProb);
        observer?.feedForward?.(l, fn, sel, weights, K);
        expertsRef(fn, T, sel, weights, K, w.get("gate_up")!, w.get("down")!, H, I, out);
        if (c.sharedExpertIntermediateSize > 0) {
          const S = c.sharedExpertIntermediateSize;
          const gate = matmulRef(fn, w.get("shared_gate")!, T, 1, H);
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
        );
      }
      for (let i = 0; i < T * H; i++) x[i] += rm * out[i];
    }

    // --- LM head over the requested rows ---
    const first = allLogits ? 0 : T - 1;
    const rows = T - first;
    const xn = rmsNormRef(x.subarray(first * H), this.#w.finalNorm, c.rmsNormEps, rows, H);
    const logits = matmulRef(xn, this.#w.lmHead, rows, c.vocabSize, H);
    if (c.logitsScaling !== 1) { for (let i = 0; i < logits.length; i++) logits[i] /= c.logitsScaling; }
    return logits;
  }

  /** Logits of every position of `ids`, [ids.length, V]. */
  logits(ids: readonly number[]): Float32Array {
    const cache = this.newCache(ids.length);
    return this.forward(ids, 0, cache, true);
  }

  /** Produces new tokens one at a time (the CPU has no round trip to amortize). */
  async *produce(ids: readonly number[], options: ResolvedGenerateOptions): AsyncGenerator<number[]> {
    const cache = this.newCache(ids.length + options.maxTokens);
    let logits = this.forward(ids, 0, cache, false);
    for (let step = 0; step < options.maxTokens; step++) {
      const token = sampleRef(logits, options.sampling, step);
      yield [token];
      if (step + 1 < options.maxTokens) logits = this.forward([token], ids.length + step, cache, false);
      // Let other tasks (an HTTP server) run between tokens.
      await new Promise((r) => setTimeout(r, 0));
    }
  }
}
