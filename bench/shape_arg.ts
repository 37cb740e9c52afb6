/**
 * The `--shapes` argument of the GPU benchmarks: mat-vec shapes of the packed kernels to try, as
 * `qgemv=TPOxOUTS,qgateup=TPOxOUTS,qdown=TPOxOUTSxTEAMS` (any subset), each optionally with `/STEP`: chunks
 * per pass of the threads' loops where the weight set has several code paths (`MatvecShape.step`), and
 * `+int8` / `+f32`: int8 activations and integer dot products (`MatvecShape.int8`) or f32 activations. Without
 * dimensions (`qgemv=+int8`,
 * `qgateup=/2`) the default shapes keep theirs.
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
    const [shape, ...flags] = (value ?? "").split("+");
    const [dims, step] = shape.split("/");
    const nums = dims === "" ? [] : dims.split("x").map(Number);
    if (
      !key || value === undefined || nums.length === 1 || nums.length > 3 ||
      nums.some((n) => !Number.isInteger(n)) || (step !== undefined && !/^\d+$/.test(step)) ||
      flags.some((f) => f !== "int8" && f !== "f32")
    ) {
      throw new TypeError(
        `Cannot read --shapes part "${part}": expected qgemv=TxO, qgateup=TxO or qdown=TxO[xS], each with ` +
          `an optional /STEP and +int8 or +f32 (the dimensions may be left out)`,
      );
    }
    const fields: Partial<MatvecShape> = {
      ...(nums.length ? { tpo: nums[0], outs: nums[1] } : {}),
      ...(nums[2] ? { split: nums[2] } : {}),
      ...(step !== undefined ? { step: Number(step) } : {}),
      ...(flags.includes("int8") ? { int8: true } : flags.includes("f32") ? { int8: false } : {}),
    };
    checkMatvecShape(`the ${name} shape`, { tpo: 1, outs: 1, ...fields });
    out[key] = fields;
  }
  return out;
}
