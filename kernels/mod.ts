/**
 * WGSL kernels with their TypeScript wrappers, and the CPU reference of every op (`kernels/cpu`).
 *
 * @module
 */

export * from "./attention.ts";
export * from "./embed.ts";
export * from "./experts.ts";
export * from "./gpu.ts";
export * from "./keep_awake.ts";
export * from "./linear.ts";
export * from "./qk_rope.ts";
export * from "./rms_norm.ts";
export * from "./router.ts";
export * from "./sample.ts";
export * from "./copy_row.ts";
export * from "./gear_attention.ts";
export * from "./gear_compress.ts";
export * from "./gear_fit.ts";
export * from "./gear_layout.ts";
export * from "./moe_grouped.ts";
export * from "./qgemm.ts";
export * from "./qmatvec.ts";
export * from "./split_merge.ts";
