/**
 * GPU time per kind of dispatch in one decode step, from timestamp queries (each dispatch in its own pass), and
 * of the whole step as generation runs it (one pass, 32 steps), and that step without each kind of dispatch.
 *
 *   deno run -A bench/gpu_profile.ts --model DIR [--dtype f16] [--pos 128] [--fuse-norms on|off]
 *     [--shapes qdown=32x8x8,...] [--unify on|off] [--ablate on|off] [--kv f16|quant-2|gear-2|…] [--fill on|off]
 *
 * With a compressed cache (--kv) the step attends over a store of `pos` tokens whatever they hold (the time does
 * not depend on the values); pick a position that completes no block (the step then compresses none), or one
 * that completes one (the step then includes its compression, which decode runs once per block). With `--fill on`
 * a random prompt of `pos − 1` tokens is first run through generation, so the cache holds what decoding would
 * read there (a compressed cache: real codes, outliers and a segment per prefill chunk and per decoded block).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { parseShapes } from "./shape_arg.ts";
import { kvModeOptions } from "./kv_mode.ts";
import { isCompressed, resolveKvCache } from "../engine/kv/kv_options.ts";
import { Checkpoint } from "../engine/checkpoint.ts";
import { GpuDecoder } from "../engine/gpu_decoder.ts";
import { resolveGenerateOptions, runGeneration } from "../engine/generation.ts";
import { acquireGpu } from "../kernels/gpu.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    dtype: { type: "string", default: "f16" },
    pos: { type: "string", default: "128" },
    "fuse-norms": { type: "string", default: "on" },
    unify: { type: "string", default: "on" },
    shapes: { type: "string" },
    ablate: { type: "string", default: "on" },
    kv: { type: "string", default: "f16" },
    fill: { type: "string", default: "off" },
  },
});
if (!values.model) throw new TypeError("Cannot profile: --model DIR is required");
const pos = Number(values.pos);
const ctx = await acquireGpu();
const ckpt = await Checkpoint.open(values.model);
const kv = resolveKvCache(values.kv === "f16" ? {} : kvModeOptions(values.kv), values.dtype as "f16" | "f32");
const decoder = await GpuDecoder.create(ctx, ckpt, {
  kvCache: isCompressed(kv.mode) ? kv : undefined,
  dtype: values.dtype as "f16" | "f32",
  contextLength: pos + 16,
  fuseNorms: values["fuse-norms"] !== "off",
  matvecShapes: parseShapes(values.shapes),
  unifyExpertKernels: values.unify !== "off",
});
ckpt.close();
if (values.fill === "on") {
  let seed = 12345;
  const rand = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % decoder.config.vocabSize;
  const prompt = Array.from({ length: pos - 1 }, rand);
  const opts = resolveGenerateOptions(
    { maxTokens: 1, ignoreEos: true },
    prompt.length,
    decoder.contextLength,
    {
      eosTokenIds: [],
    },
  );
  const t0 = performance.now();
  for await (const _ of runGeneration(decoder, { decode: () => "" }, prompt, opts, () => {})) {
    // the one token
  }
  console.error(`filled ${prompt.length} positions in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
} else if (values.fill !== "off") {
  throw new TypeError(`Cannot profile: --fill takes on or off, not ${values.fill}`);
}
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
await decoder.timeDecodeStep(pos, 4); // warm-up
const oneMs = await decoder.timeDecodeStep(pos, 32);
console.log(`| one pass (32 steps) | ${rows.reduce((a, [, v]) => a + v.count, 0)} | ${oneMs.toFixed(3)} | |`);
// Ablation: the one-pass step without each kind of dispatch (what it costs in a real pass).
if (values.ablate !== "off") {
  console.log("\n| left out | one pass ms per step | saved ms |");
  console.log("| --- | --- | --- |");
}
for (const [k] of values.ablate !== "off" ? rows : []) {
  const ms = await decoder.timeDecodeStep(pos, 32, new Set([k]));
  console.log(`| ${k} | ${ms.toFixed(3)} | ${(oneMs - ms).toFixed(3)} |`);
}
decoder.dispose();
