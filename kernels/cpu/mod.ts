/**
 * CPU reference implementations of every op the decoder runs: the oracle of kernel tests and the `cpu` backend.
 *
 * @module
 */

export * from "./act_quant.ts";
export * from "./attention.ts";
export * from "./experts.ts";
export * from "./matmul.ts";
export * from "./rms_norm.ts";
export * from "./rope.ts";
export * from "./router.ts";
export * from "./sampling.ts";
export * from "./gear.ts";
