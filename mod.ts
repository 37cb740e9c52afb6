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
  Model,
  ModelTokenizer,
} from "./engine/types.ts";
export type { ModelConfig } from "./engine/config.ts";
export {
  ContextOverflowError,
  GpuError,
  ModelDisposedError,
  ModelLoadError,
  UnsupportedModelError,
} from "./engine/errors.ts";
export { type AppOptions, createApp } from "./routes/mod.ts";
