/**
 * LLMLingua-2 compression throughput of edgemix: `Compressor.compress` on an ONNX token classifier (for the
 * published comparison, the XLM-RoBERTa-large-shaped model that `bench/compress_torch.py` exports), reported in
 * classifier tokens and cl100k tokens of the input per second, with the share of the time spent in the model.
 *
 * ```sh
 * deno run -A bench/compress_bench.ts --model /tmp/lingua-bench --input /tmp/lingua-bench/input.txt
 * deno run -A bench/compress_bench.ts --model /tmp/lingua-bench --backend native --device cuda
 * deno run -A bench/compress_bench.ts --model /tmp/lingua-bench --backend wasm --device webgpu   # on the GPU
 * deno run -A bench/compress_bench.ts --model fixtures/compressor/xlmr --words 50000   # pipeline overhead
 * ```
 *
 * Prints a JSON line per run configuration and a Markdown row.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadCompressor } from "../retrieval/compress.ts";
import type { EncodedChunk } from "../retrieval/lingua_algorithm.ts";
import type { ClassifierBackend, NativeDevice } from "../retrieval/token_classifier.ts";

const SAMPLE =
  "John: So, um, I've been thinking about the project, you know, and I believe we need to make some " +
  "changes. I mean, we want the project to succeed, right? So, like, I think we should consider maybe revising " +
  "the timeline. Sarah: I totally agree, John. I mean, we have to be realistic, you know. The timeline is, like, " +
  "too tight. You know what I mean? We should definitely extend it. Speaker 0: Item 11 is a communication from " +
  "Council on Price recommendation to increase appropriation in the general fund group in the City Manager " +
  "Department by $200 to provide a contribution to the Friends of the Long Beach Public Library.";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    input: { type: "string" },
    words: { type: "string", default: "12000" },
    backend: { type: "string", default: "native" },
    device: { type: "string", default: "cpu" },
    threads: { type: "string" },
    rate: { type: "string", default: "0.33" },
    repeat: { type: "string", default: "3" },
  },
});
if (!values.model) {
  console.error(
    "Usage: deno run -A bench/compress_bench.ts --model DIR [--input FILE | --words N] [--backend " +
      "native|wasm] [--device cpu|cuda|webgpu] [--threads N] [--rate R] [--repeat N]",
  );
  Deno.exit(2);
}

let text: string;
if (values.input) {
  text = await Deno.readTextFile(values.input);
} else {
  const words = SAMPLE.split(" ");
  text = Array.from({ length: Number(values.words) }, (_, i) => words[i % words.length]).join(" ");
}

const compressor = await loadCompressor(values.model, {
  backend: values.backend as ClassifierBackend,
  device: values.device as NativeDevice,
  threads: values.threads === undefined ? undefined : Number(values.threads),
  progress: false,
});
// Time spent in the model, and tokens it saw, measured around the classifier.
const clf = compressor.classifier;
const inner = clf.keepProbabilities.bind(clf);
let modelSeconds = 0;
let classifierTokens = 0;
clf.keepProbabilities = async (chunks: readonly EncodedChunk[]) => {
  const start = performance.now();
  try {
    return await inner(chunks);
  } finally {
    modelSeconds += (performance.now() - start) / 1000;
    for (const c of chunks) classifierTokens += c.ids.length - 2;
  }
};

const options = { rate: Number(values.rate), forceTokens: ["\n", ".", "?", "!"] };
await compressor.compress(SAMPLE, options); // warm-up: session initialisation, kernels, tiktoken ranks
const runs: {
  seconds: number;
  modelSeconds: number;
  classifierTokens: number;
  cl100k: number;
  kept: number;
}[] = [];
for (let i = 0; i < Number(values.repeat); i++) {
  modelSeconds = 0;
  classifierTokens = 0;
  const start = performance.now();
  const out = await compressor.compress([text], options);
  const seconds = (performance.now() - start) / 1000;
  runs.push({ seconds, modelSeconds, classifierTokens, cl100k: out.originTokens, kept: out.ratio });
}
await compressor.dispose();

runs.sort((a, b) => a.seconds - b.seconds);
const median = runs[Math.floor(runs.length / 2)];
const device = clf.device;
const result = {
  system: "edgemix",
  backend: compressor.backend,
  device,
  classifierTokens: median.classifierTokens,
  cl100kTokens: median.cl100k,
  seconds: median.seconds,
  modelShare: median.modelSeconds / median.seconds,
  classifierTokensPerSecond: median.classifierTokens / median.seconds,
  cl100kTokensPerSecond: median.cl100k / median.seconds,
  keptShare: median.kept,
  cores: navigator.hardwareConcurrency,
};
console.log(JSON.stringify(result));
console.log(
  `| edgemix compress | ${compressor.backend}/${device} | fp32 | ${
    result.classifierTokens.toLocaleString("en")
  } | ` +
    `${Math.round(result.classifierTokensPerSecond).toLocaleString("en")} | ` +
    `${Math.round(result.cl100kTokensPerSecond).toLocaleString("en")} cl100k/s, model ${
      (100 * result.modelShare).toFixed(0)
    }% of the time |`,
);
