/**
 * Parses a Hugging Face `config.json` of a supported Mixture-of-Experts architecture into one normalized
 * {@linkcode ModelConfig} that the CPU and WebGPU decoders both read. The differences between the families
 * (router semantics, shared experts, q/k norms, multipliers) become explicit fields here, so the forward pass
 * never branches on the architecture name.
 *
 * @module
 */

import { ModelLoadError, UnsupportedModelError } from "./errors.ts";

/** Architectures the engine implements, by their `model_type`. */
export const ARCHITECTURES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe"] as const;

/** One of {@linkcode ARCHITECTURES}. */
export type Architecture = typeof ARCHITECTURES[number];

/**
 * How router logits become expert weights.
 * - `softmax_topk`: softmax over all experts, keep the top k, renormalize to sum 1 iff `normTopkProb`.
 * - `topk_softmax`: keep the k largest logits, softmax over those k (Granite).
 */
export type RouterMode = "softmax_topk" | "topk_softmax";

/**
 * Where q/k RMSNorm applies.
 * - `none`: no q/k norm.
 * - `per_head`: over each head's `headDim` values (Qwen3-MoE).
 * - `full`: over the whole q projection and the whole k projection (OLMoE).
 */
export type QkNorm = "none" | "per_head" | "full";

/** Rotary position embedding: the frequencies come from `theta` and an optional scaling rule. */
export interface RopeConfig {
  /** Base of the frequencies (`rope_theta`). */
  theta: number;
  /** Scaling rule: "default" (none), "linear", or "llama3". */
  type: "default" | "linear" | "llama3";
  /** Scaling factor for "linear" and "llama3". */
  factor: number;
  /** "llama3": low-frequency factor. */
  lowFreqFactor: number;
  /** "llama3": high-frequency factor. */
  highFreqFactor: number;
  /** "llama3": the context length the model was trained with. */
  originalMaxPositionEmbeddings: number;
}

/** One decoder layer's kind. */
export interface LayerSpec {
  /** True for a Mixture-of-Experts block, false for a dense MLP (Qwen2-MoE `mlp_only_layers`). */
  moe: boolean;
  /** Attention sees at most this many most recent positions (the current one included); 0 means unlimited. */
  slidingWindow: number;
}

/** A normalized model description shared by every backend. */
export interface ModelConfig {
  /** The `model_type`. */
  architecture: Architecture;
  /** Token vocabulary of the embedding and LM head. */
  vocabSize: number;
  /** Width of the residual stream. */
  hiddenSize: number;
  /** Decoder layers. */
  numLayers: number;
  /** Query heads. */
  numHeads: number;
  /** Key/value heads (GQA when fewer than `numHeads`). */
  numKvHeads: number;
  /** Width of one head. */
  headDim: number;
  /** Experts per MoE layer. */
  numExperts: number;
  /** Experts chosen per token. */
  topK: number;
  /** Router semantics. */
  routerMode: RouterMode;
  /** Renormalize the kept softmax weights to sum 1 (`softmax_topk` only). */
  normTopkProb: boolean;
  /** Hidden width of one routed expert. */
  expertIntermediateSize: number;
  /** Hidden width of the shared expert, 0 when there is none. */
  sharedExpertIntermediateSize: number;
  /** The shared expert's output is scaled by sigmoid(gate · x) (Qwen2-MoE). */
  sharedExpertGated: boolean;
  /** Hidden width of dense MLP layers, 0 when there are none. */
  denseIntermediateSize: number;
  /** Per-layer kind. */
  layers: LayerSpec[];
  /** RMSNorm epsilon. */
  rmsNormEps: number;
  /** Rotary embedding. */
  rope: RopeConfig;
  /** Positions the model was trained for. */
  maxPositionEmbeddings: number;
  /** Where q/k norms apply. */
  qkNorm: QkNorm;
  /** Clamp q, k and v to [-clipQkv, clipQkv] after their norms; 0 disables (OLMoE). */
  clipQkv: number;
  /** q, k, v projections have biases. */
  qkvBias: boolean;
  /** The output projection has a bias. */
  oBias: boolean;
  /** Input embeddings are multiplied by this (Granite `embedding_multiplier`). */
  embeddingMultiplier: number;
  /** Attention and MoE outputs are multiplied by this before each residual add (Granite). */
  residualMultiplier: number;
  /** Attention score scale: 1/sqrt(headDim), or Granite's `attention_multiplier`. */
  attentionScale: number;
  /** Logits are divided by this (Granite `logits_scaling`). */
  logitsScaling: number;
  /** The LM head reuses the embedding matrix. */
  tieWordEmbeddings: boolean;
  /** Beginning-of-sequence id from the config, if any. */
  bosTokenId: number | undefined;
  /** End-of-sequence ids from the config. */
  eosTokenIds: number[];
}

type Json = Record<string, unknown>;

function num(cfg: Json, key: string, file: string, fallback?: number): number {
  const v = cfg[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new ModelLoadError(`Cannot read ${file}: the field "${key}" is missing`, { file });
  }
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new ModelLoadError(
      `Cannot read ${file}: the field "${key}" must be a number, got ${JSON.stringify(v)}`,
      {
        file,
      },
    );
  }
  return v;
}

function positiveInt(cfg: Json, key: string, file: string, fallback?: number): number {
  const v = num(cfg, key, file, fallback);
  if (!Number.isInteger(v) || v <= 0) {
    throw new ModelLoadError(`Cannot read ${file}: the field "${key}" must be a positive integer, got ${v}`, {
      file,
    });
  }
  return v;
}

function bool(cfg: Json, key: string, fallback: boolean): boolean {
  const v = cfg[key];
  return typeof v === "boolean" ? v : fallback;
}

function ids(v: unknown): number[] {
  if (typeof v === "number") return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === "number");
  return [];
}

function parseRope(cfg: Json, file: string, headDim: number): RopeConfig {
  // transformers >= 5 writes `rope_parameters`; older configs have `rope_theta` and `rope_scaling`.
  const params = (cfg.rope_parameters ?? cfg.rope_scaling ?? null) as Json | null;
  const theta = typeof params?.rope_theta === "number"
    ? params.rope_theta
    : num(cfg, "rope_theta", file, 10000);
  const rawType = params ? (params.rope_type ?? params.type ?? "default") : "default";
  const rope: RopeConfig = {
    theta,
    type: "default",
    factor: 1,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  };
  if (rawType === "default") return rope;
  const factor = typeof params?.factor === "number" ? params.factor : NaN;
  if (rawType === "linear" && factor > 0) return { ...rope, type: "linear", factor };
  if (rawType === "llama3" && factor > 0) {
    return {
      ...rope,
      type: "llama3",
      factor,
      lowFreqFactor: Number(params?.low_freq_factor ?? 1),
      highFreqFactor: Number(params?.high_freq_factor ?? 4),
      originalMaxPositionEmbeddings: Number(params?.original_max_position_embeddings ?? 8192),
    };
  }
  throw new UnsupportedModelError(
    `Cannot load ${file}: rope scaling ${
      JSON.stringify(params)
    } is not supported (supported: default, linear and ` +
      `llama3 with a positive factor; head_dim ${headDim})`,
    { file },
  );
}

/**
 * Parses the JSON object of a `config.json`; `file` names it in error messages.
 *
 * @example
 * ```ts
 * const cfg = parseModelConfig(JSON.parse(await Deno.readTextFile("m/config.json")), "m/config.json");
 * cfg.numExperts; // 64
 * ```
 */
export function parseModelConfig(raw: unknown, file = "config.json"): ModelConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ModelLoadError(`Cannot read ${file}: it must hold a JSON object`, { file });
  }
  const cfg = raw as Json;
  const type = cfg.model_type;
  if (typeof type !== "string" || !(ARCHITECTURES as readonly string[]).includes(type)) {
    throw new UnsupportedModelError(
      `Cannot load ${file}: architecture ${JSON.stringify(type)} is not supported (supported: ${
        ARCHITECTURES.join(", ")
      })`,
      { file },
    );
  }
  const arch = type as Architecture;
  const act = cfg.hidden_act ?? "silu";
  if (act !== "silu") {
    throw new UnsupportedModelError(
      `Cannot load ${file}: hidden_act ${JSON.stringify(act)} is not supported`,
      {
        file,
      },
    );
  }

  const hiddenSize = positiveInt(cfg, "hidden_size", file);
  const numLayers = positiveInt(cfg, "num_hidden_layers", file);
  const numHeads = positiveInt(cfg, "num_attention_heads", file);
  const numKvHeads = positiveInt(cfg, "num_key_value_heads", file, numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ModelLoadError(
      `Cannot load ${file}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`,
      { file },
    );
  }
  const headDim = arch === "qwen3_moe" || typeof cfg.head_dim === "number"
    ? positiveInt(cfg, "head_dim", file, hiddenSize / numHeads)
    : hiddenSize / numHeads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new ModelLoadError(`Cannot load ${file}: head dimension ${headDim} must be an even integer`, {
      file,
    });
  }

  // Mixtral and Granite call it num_local_experts, the others num_experts (transformers 5 writes either).
  const expertsKey = typeof cfg.num_experts === "number" ? "num_experts" : "num_local_experts";
  const numExperts = positiveInt(cfg, expertsKey, file);
  const topK = positiveInt(cfg, "num_experts_per_tok", file);
  if (topK > numExperts) {
    throw new ModelLoadError(
      `Cannot load ${file}: num_experts_per_tok ${topK} exceeds the ${numExperts} experts`,
      {
        file,
      },
    );
  }
  const usesMoeSize = arch === "qwen2_moe" || arch === "qwen3_moe";
  const expertIntermediateSize = positiveInt(
    cfg,
    usesMoeSize ? "moe_intermediate_size" : "intermediate_size",
    file,
  );
  const sharedExpertIntermediateSize = arch === "qwen2_moe"
    ? num(cfg, "shared_expert_intermediate_size", file, 0)
    : 0;

  // Which layers are sparse (Qwen2/3-MoE: decoder_sparse_step and mlp_only_layers).
  const sparseStep = usesMoeSize ? positiveInt(cfg, "decoder_sparse_step", file, 1) : 1;
  const mlpOnly = new Set(usesMoeSize ? ids(cfg.mlp_only_layers) : []);
  // Sliding-window attention: Mixtral's `sliding_window`; Qwen's `use_sliding_window` with per-layer types.
  const window = typeof cfg.sliding_window === "number" ? cfg.sliding_window : 0;
  const layerTypes = Array.isArray(cfg.layer_types) ? cfg.layer_types as unknown[] : undefined;
  const layers: LayerSpec[] = [];
  for (let i = 0; i < numLayers; i++) {
    const moe = !mlpOnly.has(i) && (i + 1) % sparseStep === 0;
    let slidingWindow = 0;
    if (arch === "mixtral") slidingWindow = window;
    else if (usesMoeSize && bool(cfg, "use_sliding_window", false)) {
      if (layerTypes) slidingWindow = layerTypes[i] === "sliding_attention" ? window : 0;
      else if (arch === "qwen3_moe") slidingWindow = window;
      else {slidingWindow = i < num(cfg, "max_window_layers", file, numLayers) && (i + 1) % 2 === 1
          ? window
          : 0;}
    }
    layers.push({ moe, slidingWindow: Math.max(0, slidingWindow) });
  }
  const denseIntermediateSize = layers.some((l) => !l.moe) ? positiveInt(cfg, "intermediate_size", file) : 0;

  const granite = arch === "granitemoe";
  const attentionBias = bool(cfg, "attention_bias", false);
  return {
    architecture: arch,
    vocabSize: positiveInt(cfg, "vocab_size", file),
    hiddenSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    numExperts,
    topK,
    routerMode: granite ? "topk_softmax" : "softmax_topk",
    normTopkProb: arch === "mixtral" ? true : granite ? true : bool(cfg, "norm_topk_prob", false),
    expertIntermediateSize,
    sharedExpertIntermediateSize,
    sharedExpertGated: sharedExpertIntermediateSize > 0,
    denseIntermediateSize,
    layers,
    rmsNormEps: num(cfg, "rms_norm_eps", file, 1e-6),
    rope: parseRope(cfg, file, headDim),
    maxPositionEmbeddings: positiveInt(cfg, "max_position_embeddings", file, 4096),
    qkNorm: arch === "qwen3_moe" ? "per_head" : arch === "olmoe" ? "full" : "none",
    clipQkv: arch === "olmoe" ? num(cfg, "clip_qkv", file, 0) : 0,
    qkvBias: arch === "qwen2_moe" ? bool(cfg, "qkv_bias", true) : attentionBias,
    oBias: arch === "qwen2_moe" || arch === "mixtral" ? false : attentionBias,
    embeddingMultiplier: granite ? num(cfg, "embedding_multiplier", file, 1) : 1,
    residualMultiplier: granite ? num(cfg, "residual_multiplier", file, 1) : 1,
    attentionScale: granite ? num(cfg, "attention_multiplier", file, 1) : 1 / Math.sqrt(headDim),
    logitsScaling: granite ? num(cfg, "logits_scaling", file, 1) : 1,
    tieWordEmbeddings: bool(cfg, "tie_word_embeddings", false),
    bosTokenId: typeof cfg.bos_token_id === "number" ? cfg.bos_token_id : undefined,
    eosTokenIds: ids(cfg.eos_token_id),
  };
}

/**
 * Inverse frequencies of the rotary embedding, [headDim / 2], computed as transformers does (float32).
 */
export function ropeInverseFrequencies(rope: RopeConfig, headDim: number): Float32Array {
  const half = headDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    inv[i] = Math.fround(1 / Math.fround(Math.pow(rope.theta, Math.fround((2 * i) / headDim))));
  }
  if (rope.type === "linear") {
    for (let i = 0; i < half; i++) inv[i] = Math.fround(inv[i] / rope.factor);
  } else if (rope.type === "llama3") {
    const old = rope.originalMaxPositionEmbeddings;
    const lowWavelen = old / rope.lowFreqFactor;
    const highWavelen = old / rope.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const f = inv[i];
      const wavelen = (2 * Math.PI) / f;
      const scaled = wavelen > lowWavelen ? f / rope.factor : f;
      if (wavelen < highWavelen || wavelen > lowWavelen) {
        inv[i] = Math.fround(scaled);
      } else {
        const smooth = (old / wavelen - rope.lowFreqFactor) / (rope.highFreqFactor - rope.lowFreqFactor);
        inv[i] = Math.fround((1 - smooth) * scaled / rope.factor + smooth * scaled);
      }
    }
  }
  return inv;
}

/**
 * Cos and sin tables of the rotary embedding for positions [0, positions): each [positions, headDim / 2] f32,
 * row-major. The angle is computed in float32 like transformers (inv_freq · position).
 */
export function ropeTables(
  rope: RopeConfig,
  headDim: number,
  positions: number,
): { cos: Float32Array; sin: Float32Array } {
  const inv = ropeInverseFrequencies(rope, headDim);
  const half = headDim / 2;
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(inv[i] * p);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
