/**
 * KV caches: the `kvCache` option (plain f16/f32, quant, gear-l, gear), the compressed cache of the CPU and
 * WebGPU decoders, and the accounting of KV bytes per token.
 *
 * @module
 */

export * from "./accounting.ts";
export * from "./gear_cpu.ts";
export * from "./gear_fit.ts";
export * from "./gear_gpu.ts";
export * from "./kv_options.ts";
