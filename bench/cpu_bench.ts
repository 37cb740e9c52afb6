/**
 * CPU benchmarks (`deno task bench`): tokenizer throughput and the CPU reference decoder on a fixture model.
 * GPU benchmarks are scripts run on a GPU host: bench/gpu_bench.sh, bench/gpu_decode.ts, bench/gpu_profile.ts.
 *
 * @module
 */

import { loadModel } from "../engine/model.ts";

const model = await loadModel(new URL("../fixtures/models/olmoe", import.meta.url).pathname, {
  backend: "cpu",
  contextLength: 256,
});
const text = await Deno.readTextFile(new URL("../README.md", import.meta.url));
const prompt = model.tokenizer.encode("The router keeps the top k experts and mixes their outputs.");

Deno.bench("tokenizer encode README.md", () => {
  model.tokenizer.encode(text);
});

Deno.bench("cpu decoder: logits of a 14-token prompt (olmoe fixture)", async () => {
  await model.logits(prompt);
});

Deno.bench("cpu decoder: 16 greedy tokens (olmoe fixture)", async () => {
  await model.generate(prompt, { maxTokens: 16, ignoreEos: true });
});
