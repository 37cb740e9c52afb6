/**
 * Quality of the compressed KV caches against the f16 cache: mean KL divergence of the next-token distributions
 * (KL(p_f16 ‖ p_compressed), nats) and greedy agreement (how often both argmaxes are the same token), with the
 * KV bytes per token, for quant / gear-l / gear at 2 and 4 bits, on the fixture models at contexts 512 to 4096.
 *
 *   deno run -A bench/gear_quality.ts [--models fixtures/models/olmoe,...] [--contexts 512,1024,2048,4096]
 *     [--modes quant-2,quant-4,gear-l-2,gear-l-4,gear-2,gear-4] [--backend cpu|webgpu] [--prefill-rows 64]
 *     [--seeds 0,1,2]
 *
 * The text is this repository's README repeated to the context length and tokenized by each model's tokenizer;
 * with `--world DIR`, the documents of the world's fresh entities instead (text the reader of
 * fixtures/models/reader never saw in training, in the style it was trained on).
 * On the CPU (default) the first half of the context is read as a prompt (in chunks of `prefill-rows`) and the
 * second half is fed one token at a time, as generation does (teacher forcing); the distributions of that second
 * half are compared. On WebGPU the whole context goes through `model.logits` in chunks of `prefill-rows` rows
 * (use 1 for decode-like steps) and the second half is compared. The fixtures are tiny models with random
 * weights: their numbers show the relative order of the modes, not what a trained model would lose.
 *
 * The low-rank modes start their power iteration from a seeded random matrix, and on a trained model the seed
 * alone moves gear-2's KL by up to a quarter: with `--seeds`, every compressed mode runs once per seed (the
 * kvCache `seed` option) and the table reports the mean KL and agreement over the seeds, and the KL of each.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { readWorldDocuments } from "../tools/world/mod.ts";
import { Checkpoint } from "../engine/checkpoint.ts";
import { CpuDecoder, loadCpuWeights } from "../engine/cpu_decoder.ts";
import { kvBytesPerToken, plainBytesPerToken } from "../engine/kv/accounting.ts";
import { type KvCacheOptions, type ResolvedKvCache, resolveKvCache } from "../engine/kv/kv_options.ts";
import { loadModel } from "../engine/model.ts";
import { loadTokenizer } from "../engine/tokenizer.ts";
import { kvModeOptions } from "./kv_mode.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    models: {
      type: "string",
      default: ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe"].map((m) => `fixtures/models/${m}`)
        .join(","),
    },
    contexts: { type: "string", default: "512,1024,2048,4096" },
    modes: { type: "string", default: "quant-2,quant-4,gear-l-2,gear-l-4,gear-2,gear-4" },
    backend: { type: "string", default: "cpu" },
    "prefill-rows": { type: "string", default: "64" },
    world: { type: "string" },
    seeds: { type: "string", default: "0" },
  },
});
const seeds = values.seeds.split(",").map(Number);
for (const s of seeds) {
  if (!Number.isInteger(s) || s < 0 || s >= 2 ** 32) {
    throw new RangeError(`Cannot run: --seeds takes integers in [0, 2^32), not ${s}`);
  }
}
const contexts = values.contexts.split(",").map(Number);
const prefillRows = Number(values["prefill-rows"]);
const backend = values.backend as "cpu" | "webgpu";
if (backend !== "cpu" && backend !== "webgpu") {
  throw new RangeError("Cannot run: --backend must be cpu or webgpu");
}

function logSoftmax(x: Float32Array): Float64Array {
  let m = -Infinity;
  for (const v of x) m = Math.max(m, v);
  let z = 0;
  for (const v of x) z += Math.exp(v - m);
  const lz = Math.log(z);
  return Float64Array.from(x, (v) => v - m - lz);
}

/**
 * Mean KL(ref ‖ got) and argmax agreement over the rows of two [rows, V] logit matrices, with the median KL of a
 * row and the share of the total KL in the worst 1 % of rows (a mean decided by a few positions shows there).
 */
function compare(
  ref: Float32Array,
  got: Float32Array,
  V: number,
): { kl: number; agree: number; klMedian: number; klTop1: number } {
  let agree = 0;
  const rows = ref.length / V;
  const kls: number[] = [];
  for (let r = 0; r < rows; r++) {
    const a = logSoftmax(ref.subarray(r * V, (r + 1) * V)), b = logSoftmax(got.subarray(r * V, (r + 1) * V));
    let am = 0, bm = 0, kl = 0;
    for (let i = 0; i < V; i++) {
      kl += Math.exp(a[i]) * (a[i] - b[i]);
      if (a[i] > a[am]) am = i;
      if (b[i] > b[bm]) bm = i;
    }
    kls.push(kl);
    if (am === bm) agree++;
  }
  const total = kls.reduce((x, y) => x + y, 0);
  const sorted = [...kls].sort((x, y) => y - x);
  const top = sorted.slice(0, Math.ceil(rows / 100)).reduce((x, y) => x + y, 0);
  return {
    kl: total / rows,
    agree: agree / rows,
    klMedian: sorted[Math.floor(rows / 2)],
    klTop1: total > 0 ? top / total : 0,
  };
}

const text = values.world
  ? (await readWorldDocuments(values.world)).filter((d) => d.metadata.split === "fresh").map((d) => d.text)
    .join("\n")
  : await Deno.readTextFile(new URL("../README.md", import.meta.url));
const progress = Deno.stderr.isTerminal()
  ? (s: string) => Deno.stderr.writeSync(new TextEncoder().encode(s))
  : () => {};
const table: string[] = [];
const maxCtx = Math.max(...contexts);
for (const dir of values.models.split(",")) {
  const name = dir.split("/").pop()!;
  const ckpt = await Checkpoint.open(dir);
  const config = ckpt.config;
  const tokenizer = await loadTokenizer(dir);
  const unit = tokenizer.encode(text, { addSpecialTokens: false });
  const all = Array.from({ length: maxCtx }, (_, i) => unit[i % unit.length]);
  const cpu = backend === "cpu"
    ? new CpuDecoder(config, await loadCpuWeights(ckpt), maxCtx, { prefillRows })
    : undefined;
  ckpt.close();
  /** Logits [n − n/2, V] of the second half of the first n tokens with cache `kv`. */
  const secondHalf = async (
    n: number,
    kv: ResolvedKvCache,
    options: KvCacheOptions,
  ): Promise<Float32Array> => {
    const V = config.vocabSize, half = Math.floor(n / 2);
    const ids = all.slice(0, n);
    if (cpu) {
      const cache = cpu.newCacheOf(kv, n);
      const out = new Float32Array((n - half) * V);
      out.set(cpu.forwardChunked(ids.slice(0, half + 1), 0, cache, false));
      for (let p = half + 1; p < n; p++) out.set(cpu.forward([ids[p]], p, cache, false), (p - half) * V);
      return out;
    }
    const model = await loadModel(dir, { backend, kvCache: options, prefillRows, contextLength: n });
    try {
      return (await model.logits(ids)).subarray(half * V);
    } finally {
      await model.dispose();
    }
  };
  for (const n of contexts) {
    const f16 = resolveKvCache({ mode: "f16" }, "f16");
    const ref = await secondHalf(n, f16, backend === "webgpu" ? {} : { mode: "f16" });
    for (const mode of values.modes.split(",")) {
      const runs: ({ seed: number; kv: ResolvedKvCache } & ReturnType<typeof compare>)[] = [];
      for (const seed of seeds) {
        progress(`\r${name} ${n} ${mode} seed ${seed}        `);
        const options = { ...kvModeOptions(mode), seed };
        const kv = resolveKvCache(options, "f16");
        runs.push({ seed, kv, ...compare(ref, await secondHalf(n, kv, options), config.vocabSize) });
      }
      const mean = (f: (r: (typeof runs)[number]) => number) =>
        runs.reduce((a, r) => a + f(r), 0) / runs.length;
      const kl = mean((r) => r.kl), agree = mean((r) => r.agree);
      const klMedian = mean((r) => r.klMedian), klTop1 = mean((r) => r.klTop1);
      const kv = runs[0].kv;
      const fp = backend === "cpu" ? "f32" : "f16";
      const bytes = kvBytesPerToken(config, kv, Math.floor(n / 2) + 1, n, prefillRows, fp);
      const perSeed = runs.map((r) => r.kl.toExponential(2)).join(" / ");
      const row = `| ${name} | ${n} | ${mode} | ${kl.toExponential(2)} | ${perSeed} | ${
        (100 * agree).toFixed(1)
      }% | ${bytes.toFixed(0)} (${(100 * bytes / plainBytesPerToken(config, "f16")).toFixed(0)}%) |`;
      table.push(row);
      console.log(
        JSON.stringify({
          model: name,
          context: n,
          mode,
          kl,
          agree,
          klMedian,
          klTop1,
          seeds,
          klBySeed: runs.map((r) => r.kl),
          kvBytesPerToken: bytes,
        }),
      );
    }
  }
}
progress("\r");
console.log(
  `\nbackend ${backend}, prefill rows ${prefillRows}, seeds ${
    seeds.join(", ")
  } (means); reference: the f16 cache`,
);
console.log(
  "| model | context | mode | KL vs f16 (nats) | KL by seed | greedy agreement | KV bytes/token (vs f16) |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- |");
for (const r of table) console.log(r);
