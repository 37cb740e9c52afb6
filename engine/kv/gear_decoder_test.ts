import assert from "node:assert/strict";
import { loadModel } from "../model.ts";
import { SKIP_GPU } from "../../kernels/test_util.ts";
import { kvBytesPerToken } from "./accounting.ts";
import { resolveKvCache } from "./kv_options.ts";

const ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe"];

/** Mean KL(p_ref ‖ p) over rows `from`.. of two logit matrices [rows, V], and how often the argmaxes agree. */
function compare(
  ref: Float32Array,
  got: Float32Array,
  V: number,
  from: number,
): { kl: number; agree: number } {
  let kl = 0, agree = 0, n = 0;
  const logSoftmax = (x: Float32Array) => {
    let m = -Infinity;
    for (const v of x) m = Math.max(m, v);
    let z = 0;
    for (const v of x) z += Math.exp(v - m);
    return Array.from(x, (v) => v - m - Math.log(z));
  };
  for (let r = from; r < ref.length / V; r++) {
    const a = logSoftmax(ref.subarray(r * V, (r + 1) * V)), b = logSoftmax(got.subarray(r * V, (r + 1) * V));
    for (let i = 0; i < V; i++) kl += Math.exp(a[i]) * (a[i] - b[i]);
    if (a.indexOf(Math.max(...a)) === b.indexOf(Math.max(...b))) agree++;
    n++;
  }
  return { kl: kl / n, agree: agree / n };
}

const ids = (n: number, V: number) => Array.from({ length: n }, (_, i) => (i * 37 + 11) % V);

Deno.test("CPU decoder, every architecture: compressed caches approach the f32 cache as bits and rank grow", async () => {
  for (const arch of ARCHS) {
    const dir = `fixtures/models/${arch}`;
    const opts = { backend: "cpu" as const, contextLength: 640, prefillRows: 64 };
    const base = await loadModel(dir, opts);
    const V = base.config.vocabSize;
    const seq = ids(200, V);
    const ref = await base.logits(seq);
    const kl: Record<string, number> = {};
    for (
      const [name, kvCache] of [
        ["f16", { mode: "f16" }],
        ["quant-2", { mode: "quant", bits: 2 }],
        ["gear-2", { mode: "gear", bits: 2 }],
        ["gear-8", { mode: "gear", bits: 8, rank: 8, prefillRank: 8 }],
      ] as const
    ) {
      const m = await loadModel(dir, { ...opts, kvCache });
      kl[name] = compare(ref, await m.logits(seq), V, 64).kl;
      await m.dispose();
    }
    // 8 bits with rank 8 is as close to the f32 cache as the f16 cache is; 2 bits is far coarser.
    assert.ok(kl["f16"] < 1e-3 && kl["gear-8"] < 2 * kl["f16"] + 1e-4, `${arch}: ${JSON.stringify(kl)}`);
    assert.ok(kl["quant-2"] > 10 * kl["gear-8"], `${arch}: ${JSON.stringify(kl)}`);
    await base.dispose();
  }
});

Deno.test("CPU model: a request may choose its own KV cache; stats carry its bytes per token", async () => {
  const model = await loadModel("fixtures/models/olmoe", {
    backend: "cpu",
    contextLength: 512,
    prefillRows: 64,
  });
  const prompt = ids(150, model.config.vocabSize);
  const plain = await model.generate(prompt, { maxTokens: 6, ignoreEos: true });
  assert.equal(model.lastStats?.kvBytesPerToken, 3 * 2 * 2 * 16 * 4);
  assert.equal(model.lastStats?.kvBytesPerTokenF16, 3 * 2 * 2 * 16 * 2);
  const gear = await model.generate(prompt, {
    maxTokens: 6,
    ignoreEos: true,
    kvCache: { mode: "gear", bits: 4 },
  });
  assert.equal(gear.length, plain.length);
  const kv = resolveKvCache({ mode: "gear", bits: 4 }, "f32");
  assert.equal(model.lastStats?.kvBytesPerToken, kvBytesPerToken(model.config, kv, 150, 156, 64, "f32"));
  assert.throws(() => model.stream(prompt, { kvCache: { mode: "gear", bits: 5 } }), /bits must be 2, 4 or 8/);
  await model.dispose();
  await assert.rejects(
    () => loadModel("fixtures/models/olmoe", { backend: "cpu", kvCache: { mode: "gear", group: 7 } }),
    /group must be 32, 64 or 128/,
  );
});

Deno.test({
  name: "WebGPU decoder with a GEAR cache matches the CPU decoder with the same cache (GQA, q/k norm)",
  ignore: SKIP_GPU,
  fn: async () => {
    const dir = "fixtures/models/qwen3_moe";
    const kvCache = { mode: "gear", bits: 2, outliers: 0.05 } as const;
    const opts = { contextLength: 320, prefillRows: 64, kvCache, dtype: "f32" as const };
    const gpu = await loadModel(dir, { ...opts, backend: "webgpu" });
    const cpu = await loadModel(dir, { ...opts, backend: "cpu" });
    const V = gpu.config.vocabSize;
    const seq = ids(150, V);
    const g = await gpu.logits(seq), c = await cpu.logits(seq);
    const { kl, agree } = compare(c, g, V, 0);
    // Mode gear's joint fit refits the quantized part to X − L, and L (rank r of a residual close to noise) is
    // ill-conditioned: the two decoders' keys and values, equal but for float rounding, give stores that differ
    // in a few codes and ranges (here KL ~1e-5, one argmax of 150; a GPU cache fitted by min/max instead gives
    // KL ~1e-2 and agreement ~0.7).
    assert.ok(
      kl < 5e-5 && agree >= 0.98,
      `GPU vs CPU with ${JSON.stringify(kvCache)}: KL ${kl}, agreement ${agree}`,
    );
    // Generation crosses block boundaries during decoding (positions 150 → 200: one block compressed at 192).
    const prompt = seq.slice(0, 150);
    const a = await gpu.generate(prompt, { maxTokens: 50, ignoreEos: true });
    const b = await cpu.generate(prompt, { maxTokens: 50, ignoreEos: true });
    assert.deepEqual(a, b);
    assert.equal(gpu.lastStats?.kvBytesPerToken, cpu.lastStats?.kvBytesPerToken);
    // The GPU decoder's cache is made at load: another configuration per request is refused clearly.
    assert.throws(
      () => gpu.stream(prompt, { kvCache: { mode: "quant", bits: 2 } }),
      /Cannot generate with kvCache quant-2 .* this model runs on webgpu with gear-2/,
    );
    await gpu.dispose();
    await cpu.dispose();
    await assert.rejects(
      () => loadModel(dir, { backend: "webgpu", dtype: "f32", kvCache: { mode: "f16" } }),
      /the plain KV cache on webgpu has the model's dtype \(f32\)/,
    );
  },
});

Deno.test({
  name: "WebGPU decoder with a GEAR cache, batch 3: concurrent sequences get the tokens they get alone",
  ignore: SKIP_GPU,
  fn: async () => {
    const dir = "fixtures/models/qwen3_moe";
    const kvCache = { mode: "gear", bits: 2, outliers: 0.05 } as const;
    const model = await loadModel(dir, {
      backend: "webgpu",
      dtype: "f32",
      contextLength: 320,
      prefillRows: 64,
      kvCache,
      batch: 3,
    });
    const V = model.config.vocabSize;
    // Prompts of 150, 100 and 60 tokens: the sequences complete blocks (every 64 positions) at different steps,
    // so batched steps compress one lane's block while the others decode on.
    const prompts = [150, 100, 60].map((n, i) => ids(n + i, V).slice(i));
    const opts = { maxTokens: 70, ignoreEos: true };
    const alone = [];
    for (const p of prompts) alone.push(await model.generate(p, opts));
    const together = await Promise.all(prompts.map((p) => model.generate(p, opts)));
    assert.deepEqual(together, alone);
    await model.dispose();
  },
});
