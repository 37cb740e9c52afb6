/**
 * The public shapes of the engine: a loaded model, its tokenizer, and the options of generation.
 *
 * @module
 */

import type { ModelConfig } from "./config.ts";
import type { LfdOptions } from "./lfd.ts";
import type { KvCacheOptions } from "./kv/kv_options.ts";

/** Where the model runs: WebGPU compute shaders, or the TypeScript reference implementation. */
export type Backend = "webgpu" | "cpu";

/** Storage and arithmetic precision of weights, activations and the KV cache on the GPU. */
export type DType = "f32" | "f16";

/** One chat message, as chat templates of Hugging Face tokenizers expect it. */
export interface ChatMessage {
  /** "system", "user", "assistant" or "tool". */
  role: string;
  /** The text of the message. */
  content: string;
  /** Any further fields a template reads (tool calls, names). */
  [key: string]: unknown;
}

/** Options of {@linkcode ModelTokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** Append the prefix that starts the assistant's turn (default true). */
  addGenerationPrompt?: boolean;
  /** Tool definitions passed to the template as `tools`. */
  tools?: unknown[];
  /** Further variables for the template. */
  extra?: Record<string, unknown>;
}

/** A tokenizer loaded from `tokenizer.json` and `tokenizer_config.json` of a checkpoint. */
export interface ModelTokenizer {
  /** Number of ids the tokenizer can produce (model vocabulary plus added tokens). */
  readonly vocabSize: number;
  /** Id of the beginning-of-sequence token, if the tokenizer has one. */
  readonly bosTokenId: number | undefined;
  /** Ids that end generation (from the tokenizer's eos token and the model's generation config). */
  readonly eosTokenIds: readonly number[];
  /** Whether the checkpoint ships a chat template. */
  readonly hasChatTemplate: boolean;
  /** Token ids of `text`; special tokens (BOS) are added as the tokenizer's post-processor says, unless disabled. */
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  /** Text of `ids`; special tokens are kept unless `skipSpecialTokens` is true. */
  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string;
  /** The prompt text the checkpoint's chat template renders for `messages`. */
  applyChatTemplate(messages: readonly ChatMessage[], options?: ChatTemplateOptions): string;
}

/** Options of {@linkcode Model.generate} and {@linkcode Model.stream}. */
export interface GenerateOptions {
  /** Most new tokens to produce (default 128). */
  maxTokens?: number;
  /** Softmax temperature; 0 means greedy (default 0). */
  temperature?: number;
  /** Keep only the k most likely tokens before sampling; 0 disables (default 0). */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p; 1 disables (default 1). */
  topP?: number;
  /** Seed of the sampler's random numbers (default 0). The same seed gives the same tokens. */
  seed?: number;
  /**
   * Where to stop: token ids end generation when produced (the ids are not returned), strings end it when the
   * decoded text contains them (the tokens up to the one that completes the string are returned).
   */
  stop?: readonly (number | string)[];
  /** Keep generating past the model's end-of-sequence tokens (default false). */
  ignoreEos?: boolean;
  /** Decode steps encoded into one GPU submission (default: grows 1, 16, 64). Output never depends on it. */
  tokensPerSubmit?: number;
  /** Cancels generation; the tokens produced so far are kept. */
  signal?: AbortSignal;
  /**
   * The KV cache of this request (default: the model's, from `loadModel`). On the CPU any mode; on WebGPU only
   * the configuration the model was loaded with (its buffers and kernels are made at load).
   */
  kvCache?: KvCacheOptions;
  /**
   * Layer fused decoding (engine/lfd.ts): add α × the logits read from an intermediate layer's residual stream
   * to the final logits at every step; "auto" picks the layer with the lowest internal knowledge score of the
   * prompt. Default off.
   */
  lfd?: LfdOptions;
}

/** Options of {@linkcode Model.inspect}. */
export interface InspectOptions {
  /** Also score the candidate layers of fused decoding over this many last positions (default 0: no). */
  iksPositions?: number;
}

/** What one prefill of a prompt shows: used by the retrieval gate and by layer fused decoding. */
export interface PromptInspection {
  /** Next-token logits of the last position [V], float32. */
  lastLogits: Float32Array;
  /** Per layer [numLayers]: entropy (nats) of the router's softmax, mean over positions; NaN for dense layers. */
  routerEntropy: Float32Array;
  /** Per layer [numLayers]: top-1 minus top-2 router probability, mean over positions; NaN for dense layers. */
  routerMargin: Float32Array;
  /**
   * With `iksPositions`: per layer [numLayers], the internal knowledge score (mean JSD between the next-token
   * distributions read before and after the layer's feed-forward block); NaN outside the candidate layers.
   */
  iks?: Float64Array;
}

/** Why generation ended. */
export type FinishReason = "stop" | "length" | "abort";

/** Counters of the last generation. */
export interface GenerationStats {
  /** Prompt tokens. */
  promptTokens: number;
  /** New tokens returned. */
  completionTokens: number;
  /** Why generation ended. */
  finishReason: FinishReason;
  /** Milliseconds from the call to the first new token being known. */
  timeToFirstTokenMs: number;
  /** Milliseconds of the whole call. */
  totalMs: number;
  /**
   * Bytes of KV cache per token held for the prompt and the new tokens (all layers, K and V; scales, mins,
   * low-rank factors, outliers and the full-precision buffer included). Set by models from `loadModel`.
   */
  kvBytesPerToken?: number;
  /** Bytes per token of a plain f16 cache of the same model, for comparison. */
  kvBytesPerTokenF16?: number;
  /** The layer fused into the logits by layer fused decoding, when it was on. */
  lfdLayer?: number;
}

/** A loaded Mixture-of-Experts language model. */
export interface Model {
  /** The parsed architecture. */
  readonly config: ModelConfig;
  /** The checkpoint's tokenizer. */
  readonly tokenizer: ModelTokenizer;
  /** Where the model runs. */
  readonly backend: Backend;
  /** Precision of weights and cache. */
  readonly dtype: DType;
  /** Stats of the most recent `generate` or `stream`. */
  readonly lastStats: GenerationStats | undefined;
  /** Logits of every position: row-major [ids.length, vocab], float32. */
  logits(ids: readonly number[]): Promise<Float32Array>;
  /** The new token ids that follow `ids`. */
  generate(ids: readonly number[], options?: GenerateOptions): Promise<number[]>;
  /** The new token ids that follow `ids`, as they are produced. */
  stream(ids: readonly number[], options?: GenerateOptions): AsyncIterable<number>;
  /**
   * Tokens the router sent to each expert of each layer since load, [numLayers] arrays of numExperts (dense layers
   * zeros). On WebGPU the counters live on the GPU and this is their value after the last completed call.
   */
  expertActivations(): readonly Uint32Array[];
  /** One prefill of `ids` with the statistics the retrieval gate and layer fused decoding use. */
  inspect(ids: readonly number[], options?: InspectOptions): Promise<PromptInspection>;
  /** Frees GPU buffers; the model cannot be used afterwards. */
  dispose(): Promise<void>;
}
