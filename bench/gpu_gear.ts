/**
 * Decode speed of the WebGPU decoder with the plain f16 cache against compressed KV caches, at long contexts
 * (batch 1). Run on a GPU host, on a checkpoint such as the one `bench/olmoe_torch.py --skip-torch` writes:
 *
 *   deno run -A bench/gpu_gear.ts --model DIR [--contexts 1024,8192,32768] [--modes f16,quant-2,gear-2]
 *     [--decode 289] [--prefill-rows 512]
 *
 * For each mode it loads the model once (context = the largest context + decode), then for each context runs a
 * generation of `decode` tokens after a random prompt of that many tokens, with 32 decode steps per
 * submission, and reports decode tokens/s from the arrival of the second batch of tokens (and of any batch that
 * arrived with it) to the last (steady state, pipelined; the prefill is excluded), plus the KV bytes per token
 * (accounting), the bytes the cache buffers take on the GPU and when each batch arrived. Prints a Markdown table and one JSON line per measurement.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Checkpoint } from "../engine/checkpoint.ts";
import { resolveGenerateOptions, runGeneration } from "../engine/generation.ts";
import { GpuDecoder } from "../engine/gpu_decoder.ts";
import { kvBytesPerToken, plainBytesPerToken } from "../engine/kv/accounting.ts";
import { isCompressed, resolveKvCache } from "../engine/kv/kv_options.ts";
import { kvModeOptions } from "./kv_mode.ts";
import { gearLayout, ringWords } from "../kernels/gear_layout.ts";
import { acquireGpu } from "../kernels/gpu.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    contexts: { type: "string", default: "1024,8192,32768" },
    modes: { type: "string", default: "f16,quant-2,gear-2" },
    decode: { type: "string", default: "289" },
    "prefill-rows": { type: "string", default: "512" },
  },
});
if (!values.model) throw new TypeError("Cannot run the benchmark: --model DIR is required");
const contexts = values.contexts.split(",").map(Number);
const decodeLen = Number(values.decode);
const prefillRows = Number(values["prefill-rows"]);
const PER_SUBMIT = 32;
if (decodeLen < 2 * PER_SUBMIT + 2) {
  throw new RangeError(`Cannot run the benchmark: --decode must be >= ${2 * PER_SUBMIT + 2}`);
}

const ctx = await acquireGpu();
const rows: Record<string, unknown>[] = [];
for (const name of values.modes.split(",")) {
  const kv = resolveKvCache(kvModeOptions(name), "f16");
  const ckpt = await Checkpoint.open(values.model);
  const c = ckpt.config;
  const cap = Math.max(...contexts) + decodeLen + 8;
  const t0 = performance.now();
  const decoder = await GpuDecoder.create(ctx, ckpt, {
    dtype: "f16",
    contextLength: cap,
    prefillRows,
    kvCache: isCompressed(kv.mode) ? kv : undefined,
  });
  ckpt.close();
  const loadS = (performance.now() - t0) / 1000;
  let cacheBytes = plainBytesPerToken(c, "f16") * cap;
  if (isCompressed(kv.mode)) {
    const l = gearLayout({
      batch: 1,
      nKV: c.numKvHeads,
      hd: c.headDim,
      capacity: cap,
      bits: kv.bits,
      group: kv.group,
      buffer: kv.buffer,
      rMax: Math.max(kv.rank, kv.prefillRank),
      outliers: kv.outliers,
      maxRows: Math.min(prefillRows, cap),
    });
    cacheBytes = c.numLayers * (l.words + 2 * ringWords(l, "f16")) * 4;
  }
  let seed = 12345;
  const rand = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % c.vocabSize;
  for (const n of contexts) {
    const prompt = Array.from({ length: n }, rand);
    const opts = resolveGenerateOptions(
      { maxTokens: decodeLen, ignoreEos: true, tokensPerSubmit: PER_SUBMIT },
      n,
      decoder.contextLength,
      { eosTokenIds: [] },
    );
    const start = performance.now();
    const times: number[] = [];
    for await (const _ of runGeneration(decoder, { decode: () => "" }, prompt, opts, () => {})) {
      times.push(performance.now());
    }
    // Batches: 1 token (with the prefill), then PER_SUBMIT each. Deno's readback waits for the whole queue, so
    // batches can arrive together: measure from the last token that arrived with the second batch (tokens
    // computed before that moment must not be counted) to the last token.
    let from = PER_SUBMIT;
    while (from + 1 < times.length - 1 && times[from + 1] - times[PER_SUBMIT] < 1) from++;
    const decodeTokS = (times.length - 1 - from) / ((times[times.length - 1] - times[from]) / 1000);
    const row = {
      mode: name,
      context: n,
      decodeTokS,
      prefillS: (times[0] - start) / 1000,
      // When each batch's tokens arrived, ms after the first token (batches arriving together show the same time).
      arrivalsMs: times.filter((_, i) =>
        i === 0 || (i - 1) % PER_SUBMIT === PER_SUBMIT - 1 || i === times.length - 1
      )
        .map((t) => Math.round(t - times[0])),
      kvBytesPerToken: kvBytesPerToken(c, kv, n, n + decodeLen, Math.min(prefillRows, cap), "f16"),
      kvBytesPerTokenF16: plainBytesPerToken(c, "f16"),
      cacheGiB: cacheBytes / 2 ** 30,
      loadS,
      adapter: decoder.adapterName,
    };
    rows.push(row);
    console.log(JSON.stringify(row));
  }
  decoder.dispose();
}
console.log("| mode | context | decode tok/s | KV bytes/token | vs f16 | cache buffers (GiB) |");
console.log("| --- | --- | --- | --- | --- | --- |");
for (const r of rows) {
  const ratio = (r.kvBytesPerToken as number) / (r.kvBytesPerTokenF16 as number);
  console.log(
    `| ${r.mode} | ${r.context} | ${(r.decodeTokS as number).toFixed(1)} | ${
      (r.kvBytesPerToken as number).toFixed(0)
    } | ${(100 * ratio).toFixed(1)}% | ${(r.cacheGiB as number).toFixed(2)} |`,
  );
}
