/**
 * Continuous batching on WebGPU: sequences generating at once share decode passes, and each gets exactly the
 * tokens it gets alone (greedy and seeded sampling), whatever joins or leaves around it.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { SKIP_GPU } from "../kernels/test_util.ts";
import { LanePool } from "./gpu_decoder.ts";
import { loadModel } from "./model.ts";
import type { GenerateOptions } from "./types.ts";

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/models/${name}`, import.meta.url));

Deno.test("LanePool: lanes go to waiters in arrival order; acquireAll waits for every lane and blocks later ones", async () => {
  const pool = new LanePool(2);
  const a = await pool.acquire(), b = await pool.acquire();
  assert.deepEqual([a, b], [0, 1]);
  const order: string[] = [];
  const c = pool.acquire().then((l) => (order.push(`c${l}`), l));
  const all = pool.acquireAll().then((release) => (order.push("all"), release));
  const d = pool.acquire().then((l) => (order.push(`d${l}`), l));
  pool.release(b);
  const lc = await c;
  assert.deepEqual(order, ["c1"]);
  pool.release(a);
  pool.release(lc);
  const releaseAll = await all;
  assert.deepEqual(order, ["c1", "all"]);
  assert.equal(pool.free, 0);
  releaseAll();
  releaseAll(); // idempotent
  assert.equal(await d, 0);
  assert.deepEqual(order, ["c1", "all", "d0"]);
  assert.equal(pool.free, 1);
});

for (const arch of ["olmoe", "qwen2_moe"]) {
  Deno.test({
    name:
      `continuous batching (${arch}, webgpu): concurrent sequences get their tokens alone, greedy and sampled`,
    ignore: SKIP_GPU,
    fn: async () => {
      const model = await loadModel(fixture(arch), {
        backend: "webgpu",
        dtype: "f32",
        contextLength: 96,
        batch: 3,
      });
      try {
        const V = model.config.vocabSize;
        // Five requests for three lanes: two wait and join while others run; lengths and positions differ.
        const requests: { ids: number[]; options: GenerateOptions }[] = Array.from({ length: 5 }, (_, i) => ({
          ids: Array.from({ length: 2 + 5 * i }, (_, j) => (17 * i + 5 * j + 3) % V),
          options: {
            maxTokens: 6 + 7 * ((i * 3) % 5),
            ignoreEos: true,
            ...(i % 2 === 1 ? { temperature: 0.8 + 0.1 * i, topK: 20, seed: 100 + i } : {}),
          },
        }));
        const alone: number[][] = [];
        for (const r of requests) alone.push(await model.generate(r.ids, r.options));
        // Sampled sequences must not all collapse to one token (the comparison would prove little).
        assert.ok(alone.some((t) => new Set(t).size > 2), `outputs too uniform: ${JSON.stringify(alone)}`);
        const together = await Promise.all(requests.map((r) => model.generate(r.ids, r.options)));
        assert.deepEqual(together, alone);
        // Logits computed while sequences generate are those of the prompt alone.
        const want = await model.logits(requests[2].ids);
        const [got] = await Promise.all([
          model.logits(requests[2].ids),
          model.generate(requests[0].ids, requests[0].options),
          model.generate(requests[1].ids, requests[1].options),
        ]);
        assert.deepEqual(got, want);
      } finally {
        await model.dispose();
      }
    },
  });
}

Deno.test({
  name:
    "continuous batching (webgpu): a sequence that stops early frees its lane, and the others are unaffected",
  ignore: SKIP_GPU,
  fn: async () => {
    const model = await loadModel(fixture("olmoe"), {
      backend: "webgpu",
      dtype: "f32",
      contextLength: 96,
      batch: 2,
    });
    try {
      const long = { maxTokens: 60, ignoreEos: true };
      const aloneLong = await model.generate([5, 6, 7], long);
      const aloneShort = await model.generate([9, 10], { maxTokens: 20, ignoreEos: true });
      // The consumer of one sequence stops after 3 tokens, and an aborted one leaves at once: the third
      // request can only run because both lanes came back.
      const early = (async () => {
        const out: number[] = [];
        for await (const t of model.stream([1, 2, 3, 4], long)) {
          out.push(t);
          if (out.length === 3) break;
        }
        return out;
      })();
      const abort = new AbortController();
      const aborted = (async () => {
        const out: number[] = [];
        for await (const t of model.stream([8, 8, 8], { ...long, signal: abort.signal })) {
          out.push(t);
          if (out.length === 2) abort.abort();
        }
        return out;
      })();
      const [e, a, l, s] = await Promise.all([
        early,
        aborted,
        model.generate([5, 6, 7], long),
        model.generate([9, 10], { maxTokens: 20, ignoreEos: true }),
      ]);
      assert.equal(e.length, 3);
      assert.ok(a.length >= 2 && a.length < 60, `aborted sequence produced ${a.length} tokens`);
      assert.deepEqual(l, aloneLong);
      assert.deepEqual(s, aloneShort);
    } finally {
      await model.dispose();
    }
  },
});

Deno.test({
  name:
    "continuous batching: bad lane counts are refused, and a compressed KV cache runs one sequence at a time",
  ignore: SKIP_GPU,
  fn: async () => {
    await assert.rejects(
      loadModel(fixture("olmoe"), { backend: "webgpu", dtype: "f32", contextLength: 32, batch: 0 }),
      RangeError,
    );
    await assert.rejects(
      loadModel(fixture("olmoe"), { backend: "webgpu", dtype: "f32", contextLength: 32, batch: 33 }),
      /lanes must be an integer/,
    );
    const model = await loadModel(fixture("olmoe"), {
      backend: "webgpu",
      dtype: "f32",
      contextLength: 64,
      batch: 4,
      kvCache: { mode: "quant", bits: 4 },
    });
    try {
      const opts = { maxTokens: 8, ignoreEos: true };
      const alone = [await model.generate([1, 2, 3], opts), await model.generate([4, 5], opts)];
      assert.deepEqual(
        await Promise.all([model.generate([1, 2, 3], opts), model.generate([4, 5], opts)]),
        alone,
      );
    } finally {
      await model.dispose();
    }
  },
});

Deno.test({
  name: "continuous batching (webgpu): the first token streams out before the rest are generated",
  ignore: SKIP_GPU,
  fn: async () => {
    const model = await loadModel(fixture("olmoe"), {
      backend: "webgpu",
      dtype: "f32",
      contextLength: 96,
      batch: 2,
    });
    try {
      await model.generate([1, 2], { maxTokens: 2, ignoreEos: true }); // pipelines compiled
      const t0 = performance.now();
      const at: number[] = [];
      for await (const _ of model.stream([1, 2, 3, 4, 5], { maxTokens: 64, ignoreEos: true })) {
        at.push(performance.now() - t0);
      }
      assert.equal(at.length, 64);
      // Submissions of 1, 16, 64 steps: the first token comes back with the first one, while later ones
      // are still being encoded and run (before the fix that yields to consumers, it came with the last).
      assert.ok(at[0] < 0.5 * at[63], `first token at ${at[0].toFixed(0)} ms of ${at[63].toFixed(0)} ms`);
    } finally {
      await model.dispose();
    }
  },
});
