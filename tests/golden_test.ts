/**
 * The engine against Hugging Face transformers: for each fixture architecture and backend, logits of the prompt
 * plus its greedy continuation match transformers' float32 logits (golden.safetensors), and greedy generation
 * reproduces transformers' 24 tokens. Then the generation contract on one model: generate equals stream, the
 * tokens per submission never change the output, seeds, stops, limits, cancellation and input errors.
 */

import assert from "node:assert/strict";
import { ContextOverflowError, ModelDisposedError } from "../engine/errors.ts";
import { loadModel, type LoadModelOptions } from "../engine/model.ts";
import { SafetensorsFile } from "../engine/safetensors.ts";
import { toFloat32 } from "../engine/dtype.ts";
import type { Model } from "../engine/types.ts";
import { SKIP_GPU } from "../kernels/test_util.ts";

const ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe"];

interface Golden {
  prompt: string;
  prompt_ids: number[];
  generated_ids: number[];
}

async function golden(arch: string): Promise<{ g: Golden; logits: Float32Array }> {
  const dir = `fixtures/models/${arch}`;
  const g = JSON.parse(await Deno.readTextFile(`${dir}/golden.json`)) as Golden;
  const f = await SafetensorsFile.open(`${dir}/golden.safetensors`);
  try {
    return { g, logits: toFloat32(await f.read("logits"), "F32") };
  } finally {
    f.close();
  }
}

function maxRelDiff(got: Float32Array, ref: Float32Array): number {
  assert.equal(got.length, ref.length);
  let d = 0, m = 0;
  for (let i = 0; i < ref.length; i++) {
    if (!Number.isFinite(got[i])) return Infinity;
    d = Math.max(d, Math.abs(got[i] - ref[i]));
    m = Math.max(m, Math.abs(ref[i]));
  }
  return d / m;
}

const configs: { name: string; options: LoadModelOptions; tol: number; gpu: boolean }[] = [
  { name: "cpu", options: { backend: "cpu" }, tol: 1e-4, gpu: false },
  { name: "webgpu f32", options: { backend: "webgpu", dtype: "f32" }, tol: 1e-3, gpu: true },
  // One row per forward: every logit comes from the decode kernels (norms fused into the mat-vecs, split-K
  // attention), which greedy generation alone checks only through its argmax.
  {
    name: "webgpu f32, one row per forward",
    options: { backend: "webgpu", dtype: "f32", prefillRows: 1 },
    tol: 1e-3,
    gpu: true,
  },
  // f16 weights and KV cache round every weight to 11 significant bits: the logits move by ~1e-3 of their range.
  { name: "webgpu f16", options: { backend: "webgpu", dtype: "f16" }, tol: 5e-3, gpu: true },
];

for (const arch of ARCHS) {
  for (const cfg of configs) {
    Deno.test({
      name: `${arch} on ${cfg.name}: logits match transformers and greedy generation reproduces it`,
      ignore: cfg.gpu && SKIP_GPU,
      fn: async () => {
        const { g, logits } = await golden(arch);
        const model = await loadModel(`fixtures/models/${arch}`, { ...cfg.options, contextLength: 128 });
        try {
          assert.deepEqual(model.tokenizer.encode(g.prompt), g.prompt_ids);
          const ids = [...g.prompt_ids, ...g.generated_ids];
          const got = await model.logits(ids);
          const err = maxRelDiff(got, logits);
          assert.ok(err <= cfg.tol, `max|Δ| / max|ref| = ${err} > ${cfg.tol}`);
          const gen = await model.generate(g.prompt_ids, {
            maxTokens: g.generated_ids.length,
            ignoreEos: true,
          });
          assert.deepEqual(gen, g.generated_ids);
          assert.equal(model.lastStats?.finishReason, "length");
          assert.equal(model.lastStats?.completionTokens, g.generated_ids.length);
        } finally {
          await model.dispose();
        }
      },
    });
  }
}

async function collect(it: AsyncIterable<number>): Promise<number[]> {
  const out: number[] = [];
  for await (const t of it) out.push(t);
  return out;
}

for (const cfg of configs.slice(0, 2)) {
  Deno.test({
    name: `generation contract on ${cfg.name}: stream, submissions, seeds, stops, limits, abort, errors`,
    ignore: cfg.gpu && SKIP_GPU,
    fn: async (t) => {
      const { g } = await golden("qwen3_moe");
      const model: Model = await loadModel("fixtures/models/qwen3_moe", {
        ...cfg.options,
        contextLength: 96,
      });
      const p = g.prompt_ids;
      try {
        await t.step("stream yields what generate returns", async () => {
          const a = await model.generate(p, { maxTokens: 20, ignoreEos: true });
          assert.deepEqual(await collect(model.stream(p, { maxTokens: 20, ignoreEos: true })), a);
          assert.deepEqual(a, g.generated_ids.slice(0, 20));
        });
        await t.step("the number of tokens per submission does not change the output", async () => {
          for (const tokensPerSubmit of [1, 2, 5, 64]) {
            const sampled = await model.generate(p, {
              maxTokens: 17,
              temperature: 0.9,
              topP: 0.9,
              seed: 7,
              ignoreEos: true,
              tokensPerSubmit,
            });
            const ref = await model.generate(p, {
              maxTokens: 17,
              temperature: 0.9,
              topP: 0.9,
              seed: 7,
              ignoreEos: true,
            });
            assert.deepEqual(sampled, ref, `tokensPerSubmit ${tokensPerSubmit}`);
          }
        });
        await t.step("a seed fixes the sampled tokens; another seed gives others", async () => {
          const o = { maxTokens: 16, temperature: 1.2, topK: 40, ignoreEos: true };
          const a = await model.generate(p, { ...o, seed: 1 });
          assert.deepEqual(await model.generate(p, { ...o, seed: 1 }), a);
          assert.notDeepEqual(await model.generate(p, { ...o, seed: 2 }), a);
          assert.notDeepEqual(a, g.generated_ids.slice(0, 16));
        });
        await t.step("stop ids end generation before the stop token", async () => {
          const i = g.generated_ids.findIndex((x, j) => j >= 3 && g.generated_ids.indexOf(x) === j);
          const stopId = g.generated_ids[i];
          const out = await model.generate(p, { maxTokens: 24, stop: [stopId] });
          assert.deepEqual(out, g.generated_ids.slice(0, i));
          assert.equal(model.lastStats?.finishReason, "stop");
        });
        await t.step("stop strings end generation at the token that completes them", async () => {
          const full = model.tokenizer.decode(g.generated_ids);
          const prefix = model.tokenizer.decode(g.generated_ids.slice(0, 6));
          const needle = full.slice(prefix.length, prefix.length + 2);
          if (needle.length === 2) {
            const out = await model.generate(p, { maxTokens: 24, stop: [needle], ignoreEos: true });
            assert.ok(model.tokenizer.decode(out).includes(needle));
            assert.ok(!model.tokenizer.decode(out.slice(0, -1)).includes(needle));
            assert.equal(model.lastStats?.finishReason, "stop");
          }
        });
        await t.step("an abort signal ends the stream with the tokens so far", async () => {
          const ac = new AbortController();
          const out: number[] = [];
          for await (const tok of model.stream(p, { maxTokens: 40, signal: ac.signal, ignoreEos: true })) {
            out.push(tok);
            if (out.length === 3) ac.abort();
          }
          assert.equal(out.length, 3);
          assert.equal(model.lastStats?.finishReason, "abort");
        });
        await t.step("breaking out of a stream releases the model for the next call", async () => {
          for await (const _ of model.stream(p, { maxTokens: 40, ignoreEos: true })) break;
          assert.deepEqual(
            await model.generate(p, { maxTokens: 4, ignoreEos: true }),
            g.generated_ids.slice(0, 4),
          );
        });
        await t.step("concurrent generations each get their own correct tokens", async () => {
          const [a, b] = await Promise.all([
            model.generate(p, { maxTokens: 8, ignoreEos: true }),
            model.generate(p.slice(0, 10), { maxTokens: 8, ignoreEos: true }),
          ]);
          assert.deepEqual(a, g.generated_ids.slice(0, 8));
          assert.deepEqual(b, await model.generate(p.slice(0, 10), { maxTokens: 8, ignoreEos: true }));
        });
        await t.step("maxTokens is clamped to the context and bad input is refused", async () => {
          const long = await model.generate(p, { maxTokens: 1000, ignoreEos: true });
          assert.equal(long.length, 96 - p.length);
          await assert.rejects(model.logits([]), RangeError);
          await assert.rejects(model.logits([0, 1e9]), /outside the vocabulary/);
          await assert.rejects(model.logits([0.5]), RangeError);
          assert.throws(() => model.stream(new Array(96).fill(1)), ContextOverflowError);
          assert.throws(() => model.stream(p, { temperature: -1 }), RangeError);
          assert.throws(() => model.stream(p, { topP: 0 }), RangeError);
          assert.throws(() => model.stream(p, { maxTokens: 1.5 }), RangeError);
        });
      } finally {
        await model.dispose();
      }
      await assert.rejects(model.generate(p), ModelDisposedError);
    },
  });
}

Deno.test({
  name: "backend auto picks WebGPU where an adapter exists; f16 on the CPU is refused",
  ignore: SKIP_GPU,
  fn: async () => {
    const model = await loadModel("fixtures/models/olmoe", { contextLength: 32 });
    try {
      assert.equal(model.backend, "webgpu");
    } finally {
      await model.dispose();
    }
    await assert.rejects(loadModel("fixtures/models/olmoe", { backend: "cpu", dtype: "f16" }), /f32 only/);
    await assert.rejects(loadModel("fixtures/models/olmoe", { backend: "tpu" as "cpu" }), TypeError);
  },
});
