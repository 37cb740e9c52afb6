/**
 * The `--shapes` argument of the GPU benchmarks: mat-vec shapes of the packed kernels to try, as
 * `qgemv=TPOxOUTS,qgateup=TPOxOUTS,qdown=TPOxOUTSxTEAMS` (any subset), each optionally with `/STEP`: chunks
 * per pass of the threads' loops where the weight set has several code paths (`MatvecShape.step`).
 *
 * @module
 */

import type { GpuDecoderOptions } from "../engine/gpu_decoder.ts";
import { checkMatvecShape, type MatvecShape } from "../kernels/wgsl.ts";

const KEYS = { qgemv: "qgemv", qgateup: "qGateUp", qdown: "qDown" } as const;

/** Parses a `--shapes` value (empty: none) into {@linkcode GpuDecoderOptions.matvecShapes}. */
export function parseShapes(spec: string | undefined): GpuDecoderOptions["matvecShapes"] {
  if (!spec) return undefined;
  const out: NonNullable<GpuDecoderOptions["matvecShapes"]> = {};
  for (const part of spec.split(",")) {
    const [name, value] = part.split("=");
    const key = KEYS[name as keyof typeof KEYS];
    const [dims, step] = (value ?? "").split("/");
    const nums = dims.split("x").map(Number);
    if (
      !key || nums.length < 2 || nums.length > 3 || nums.some((n) => !Number.isInteger(n)) ||
      (step !== undefined && !/^\d+$/.test(step))
    ) {
      throw new TypeError(
        `Cannot read --shapes part "${part}": expected qgemv=TxO, qgateup=TxO or qdown=TxO[xS], each with ` +
          `an optional /STEP`,
      );
    }
    const shape: MatvecShape = {
      tpo: nums[0],
      outs: nums[1],
      ...(nums[2] ? { split: nums[2] } : {}),
      ...(step !== undefined ? { step: Number(step) } : {}),
    };
    checkMatvecShape(`the ${name} shape`, shape);
    out[key] = shape;
  }
  return out;
}
