/**
 * The engine: load a Mixture-of-Experts checkpoint and run it on WebGPU or the CPU.
 *
 * @module
 */

export * from "./checkpoint.ts";
export * from "./config.ts";
export * from "./errors.ts";
export * from "./generation.ts";
export * from "./hub.ts";
export * from "./model.ts";
export * from "./safetensors.ts";
export * from "./tokenizer.ts";
export * from "./types.ts";
export * from "./inspect.ts";
export * from "./lfd.ts";
export * from "./kv/mod.ts";
export * from "./quant/mod.ts";
