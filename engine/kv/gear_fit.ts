/**
 * Which fit each compressed mode uses, shared by the CPU cache (`gear_cpu.ts`) and the GPU cache
 * (`gear_gpu.ts`) so both decoders write the same store.
 *
 * @module
 */

import { GEAR_FIT_DEFAULT, type GearFitPolicy } from "../../kernels/gear_fit.ts";
import type { KvCacheMode } from "./kv_options.ts";

/**
 * How mode gear fits a segment: least-squares ranges and two rounds of refitting the backbone to X − L
 * ({@linkcode GearFitPolicy}); quant and gear-l keep the KIVI min/max fit. The store format is the same.
 */
export const GEAR_JOINT_FIT: GearFitPolicy = Object.freeze({ fit: "mse", refits: 2 });

/** The fit of the compressed mode `mode`: {@linkcode GEAR_JOINT_FIT} for gear, the min/max default otherwise. */
export function gearFitPolicy(mode: KvCacheMode): GearFitPolicy {
  return mode === "gear" ? GEAR_JOINT_FIT : GEAR_FIT_DEFAULT;
}
