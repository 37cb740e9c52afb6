/**
 * Prefill and decode throughput of the WebGPU decoder on a checkpoint (batch 1). Run on a GPU host:
 *
 *   deno run -A bench/gpu_decode.ts --model DIR [--dtype f16] [--prompt 512] [--decode 128] [--reps 3]
 *     [--tokens-per-submit N] [--fuse-norms on|off] [--shapes qdown=32x8x8,...] [--unify on|off] [--overlap call|timer|off] [--temperature T --top-k K --top-p P]
 *     [--kv f16|quant-2|gear-2|…] [--decode-prompt N]   # decode at a long context: --decode-prompt 32768
 *
 * Prints one JSON line: load seconds, prefill tokens/s (prompt tokens over the time of a generation of one token)
 * and decode tokens/s (N - 1 over the time of N new tokens minus the time of one), medians over the repetitions.
 * Token ids are random (seeded): the speed of a MoE decoder does not depend on what the ids mean, except
 * through which experts the router picks.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { parseShapes } from "./shape_arg.ts";
import { Checkpoint } from "../engine/checkpoint.ts";
import { resolveGenerateOptions, runGeneration } from "../engine/generation.ts";
import { GpuDecoder, type ReadbackOverlap } from "../engine/gpu_decoder.ts";
import { isCompressed, resolveKvCache } from "../engine/kv/kv_options.ts";
import { acquireGpu } from "../kernels/gpu.ts";
import { kvModeOptions } from "./kv_mode.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    dtype: { type: "string", default: "f16" },
    prompt: { type: "string", default: "512" },
    "decode-prompt": { type: "string", default: "16" },
    decode: { type: "string", default: "128" },
    reps: { type: "string", default: "3" },
    "tokens-per-submit": { type: "string", default: "0" },
    gemm: { type: "string", default: "auto" },
    "fuse-norms": { type: "string", default: "on" },
    unify: { type: "string", default: "on" },
    shapes: { type: "string" },
    overlap: { type: "string", default: "call" },
    kv: { type: "string", default: "f16" },
    temperature: { type: "string", default: "0" },
    "top-k": { type: "string", default: "0" },
    "top-p": { type: "string", default: "1" },
    "grouped-moe": { type: "string", default: "auto" },
  },
});
if (!["call", "timer", "off"].includes(values.overlap)) {
  throw new TypeError(
    `Cannot run the benchmark: --overlap must be call, timer or off, not ${values.overlap}`,
  );
}
if (!values.model) throw new TypeError("Cannot run the benchmark: --model DIR is required");
const promptLen = Number(values.prompt), decodeLen = Number(values.decode), reps = Number(values.reps);
const decodePrompt = Number(values["decode-prompt"]);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

// The KV cache: the plain one in the weights' precision, or a compressed one ("quant-2", "gear-2", …).
const kv = resolveKvCache(values.kv === "f16" ? {} : kvModeOptions(values.kv), values.dtype as "f16" | "f32");
const ctx = await acquireGpu();
const t0 = performance.now();
const ckpt = await Checkpoint.open(values.model);
const decoder = await GpuDecoder.create(ctx, ckpt, {
  dtype: values.dtype as "f16" | "f32",
  contextLength: Math.max(promptLen, decodePrompt + decodeLen) + 8,
  prefillRows: Math.min(512, promptLen),
  gemm: values.gemm === "auto" ? undefined : values.gemm === "on",
  groupedMoe: values["grouped-moe"] === "auto" ? undefined : values["grouped-moe"] === "on",
  fuseNorms: values["fuse-norms"] !== "off",
  matvecShapes: parseShapes(values.shapes),
  unifyExpertKernels: values.unify !== "off",
  readbackOverlap: values.overlap as ReadbackOverlap,
  kvCache: isCompressed(kv.mode) ? kv : undefined,
});
ckpt.close();
const loadS = (performance.now() - t0) / 1000;
const V = ckpt.config.vocabSize;
let seed = 12345;
const rand = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % V;
const noStop = { decode: () => "" };

async function timeGenerate(
  prompt: number[],
  maxTokens: number,
): Promise<{ ttft: number; total: number; n: number }> {
  const opts = resolveGenerateOptions(
    {
      maxTokens,
      ignoreEos: true,
      tokensPerSubmit: Number(values["tokens-per-submit"]),
      temperature: Number(values.temperature),
      topK: Number(values["top-k"]),
      topP: Number(values["top-p"]),
      seed: 7,
    },
    prompt.length,
    decoder.contextLength,
    { eosTokenIds: [] },
  );
  const start = performance.now();
  let first = 0, n = 0;
  for await (const _ of runGeneration(decoder, noStop, prompt, opts, () => {})) {
    if (n === 0) first = performance.now();
    n++;
  }
  return { ttft: first - start, total: performance.now() - start, n };
}

// Warm-up: compiles nothing new (pipelines exist) but faults in buffers and drivers.
await timeGenerate(Array.from({ length: promptLen }, rand), 4);
const prefill: number[] = [], decode: number[] = [];
const enc0 = decoder.encodeStats;
for (let r = 0; r < reps; r++) {
  const p = await timeGenerate(Array.from({ length: promptLen }, rand), 1);
  prefill.push(promptLen / (p.total / 1000));
  // Decode: the time of N new tokens minus the time of 1 on the same prompt, over N - 1. (The time to the first
  // token is no measure of the prefill alone: submissions queued behind it finish before its readback does.)
  const prompt = Array.from({ length: decodePrompt }, rand);
  const one = await timeGenerate(prompt, 1);
  const d = await timeGenerate(prompt, decodeLen);
  decode.push((d.n - 1) / ((d.total - one.total) / 1000));
}
console.log(JSON.stringify({
  system: "edgemix webgpu",
  adapter: decoder.adapterName,
  dtype: values.dtype,
  kv: values.kv,
  sampling: {
    temperature: Number(values.temperature),
    topK: Number(values["top-k"]),
    topP: Number(values["top-p"]),
  },
  weightGiB: decoder.weightBytes / 2 ** 30,
  loadS,
  promptLen,
  decodeLen,
  prefillTokS: median(prefill),
  decodeTokS: median(decode),
  prefillRuns: prefill,
  decodeRuns: decode,
  // CPU time to encode the timed generations (prefills included) per decode step they held.
  encodeMsPerStep: (decoder.encodeStats.ms - enc0.ms) / Math.max(1, decoder.encodeStats.steps - enc0.steps),
  // CPU time in queue.submit per decode step (the GPU idles through it after each readback).
  submitMsPerStep: (decoder.encodeStats.submitMs - enc0.submitMs) /
    Math.max(1, decoder.encodeStats.steps - enc0.steps),
}));
decoder.dispose();
