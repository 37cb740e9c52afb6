/**
 * edgemix: a Mixture-of-Experts language model runtime on WebGPU for Deno.
 *
 * @example
 * ```ts
 * import { loadModel } from "./mod.ts";
 * const model = await loadModel("fixtures/models/olmoe", { backend: "auto" });
 * const ids = model.tokenizer.encode("The router keeps");
 * const text = model.tokenizer.decode(await model.generate(ids, { maxTokens: 16 }));
 * await model.dispose();
 * ```
 *
 * @module
 */

export { loadModel, type LoadModelOptions } from "./engine/model.ts";
export type {
  Backend,
  ChatMessage,
  ChatTemplateOptions,
  DType,
  FinishReason,
  GenerateOptions,
  GenerationStats,
  InspectOptions,
  Model,
  ModelTokenizer,
  PromptInspection,
} from "./engine/types.ts";
export type { ModelConfig } from "./engine/config.ts";
export {
  ContextOverflowError,
  GpuError,
  ModelDisposedError,
  ModelLoadError,
  UnsupportedModelError,
} from "./engine/errors.ts";
export { KV_CACHE_MODES, type KvCacheMode, type KvCacheOptions } from "./engine/kv/kv_options.ts";
export { DEFAULT_LFD_ALPHA, type LfdOptions } from "./engine/lfd.ts";
export { quantizeModel, type QuantizeModelOptions } from "./engine/quant/quantize_model.ts";
export {
  createPipeline,
  type CreatePipelineOptions,
  DeadlineExceededError,
  DocumentStoreError,
  FeatureUnavailableError,
  InvalidRequestError,
  type Pipeline,
  PromptTooLongError,
  QueueFullError,
  SchedulerClosedError,
  TextDeltaDecoder,
} from "./pipeline.ts";
export type {
  AskEvent,
  AskRequest,
  AskResult,
  ChatEvent,
  ChatRequest,
  DocumentInput,
  EventStream,
  Passage,
  PipelineDefaults,
  PipelineObserver,
  PromptCompressor,
  RetrievalMode,
  Retriever,
  RunOptions,
} from "./pipeline.ts";
export { type AppOptions, createApp, type EdgemixApp } from "./routes/mod.ts";
export {
  compress,
  type CompressOptions,
  Compressor,
  CompressorLoadError,
  type CompressResult,
  fitGate,
  type GateDecision,
  type GateModel,
  type KnowledgeStore,
  loadCompressor,
  loadEmbedder,
  openStore,
  type OpenStoreOptions,
  readGate,
  RetrievalGate,
  type SearchHit,
  type SearchMode,
  StoreError,
} from "./retrieval/mod.ts";
