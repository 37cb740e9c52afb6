/**
 * GPU time per kind of dispatch in one decode step, from timestamp queries (each dispatch in its own pass).
 *
 *   deno run -A bench/gpu_profile.ts --model DIR [--dtype f16] [--pos 128]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Checkpoint } from "../engine/checkpoint.ts";
import { GpuDecoder } from "../engine/gpu_decoder.ts";
import { acquireGpu } from "../kernels/gpu.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    dtype: { type: "string", default: "f16" },
    pos: { type: "string", default: "128" },
  },
});
if (!values.model) throw new TypeError("Cannot profile: --model DIR is required");
const pos = Number(values.pos);
const ctx = await acquireGpu();
const ckpt = await Checkpoint.open(values.model);
const decoder = await GpuDecoder.create(ctx, ckpt, {
  dtype: values.dtype as "f16" | "f32",
  contextLength: pos + 16,
});
ckpt.close();
await decoder.profileDecodeStep(pos); // warm-up
const prof = await decoder.profileDecodeStep(pos);
let total = 0;
const rows = [...prof].sort((a, b) => b[1].ms - a[1].ms);
for (const [, v] of rows) total += v.ms;
console.log("| kernel | dispatches | ms per step | share |");
console.log("| --- | --- | --- | --- |");
for (const [k, v] of rows) {
  console.log(`| ${k} | ${v.count} | ${v.ms.toFixed(3)} | ${(100 * v.ms / total).toFixed(1)}% |`);
}
console.log(`| total | ${rows.reduce((a, [, v]) => a + v.count, 0)} | ${total.toFixed(3)} | |`);
decoder.dispose();
