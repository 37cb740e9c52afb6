import assert from "node:assert/strict";
import { parseModelConfig, ropeInverseFrequencies } from "./config.ts";
import { ModelLoadError, UnsupportedModelError } from "./errors.ts";

async function fixtureConfig(arch: string): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(`fixtures/models/${arch}/config.json`));
}

Deno.test("parseModelConfig normalizes the five architectures' differences", async () => {
  const mixtral = parseModelConfig(await fixtureConfig("mixtral"));
  assert.equal(mixtral.routerMode, "softmax_topk");
  assert.equal(mixtral.normTopkProb, true);
  assert.equal(mixtral.numExperts, 8);
  assert.equal(mixtral.qkNorm, "none");
  assert.equal(mixtral.rope.theta, 1e6);

  const qwen2 = parseModelConfig(await fixtureConfig("qwen2_moe"));
  assert.equal(qwen2.sharedExpertIntermediateSize, 96);
  assert.equal(qwen2.sharedExpertGated, true);
  assert.equal(qwen2.qkvBias, true);
  assert.equal(qwen2.oBias, false);
  assert.equal(qwen2.normTopkProb, false);
  assert.deepEqual(qwen2.layers.map((l) => l.moe), [true, true, false]);
  assert.equal(qwen2.denseIntermediateSize, 80);

  const qwen3 = parseModelConfig(await fixtureConfig("qwen3_moe"));
  assert.equal(qwen3.headDim, 24);
  assert.equal(qwen3.qkNorm, "per_head");
  assert.equal(qwen3.numExperts, 8);
  assert.equal(qwen3.attentionScale, 1 / Math.sqrt(24));

  const olmoe = parseModelConfig(await fixtureConfig("olmoe"));
  assert.equal(olmoe.qkNorm, "full");
  assert.equal(olmoe.clipQkv, 2);
  assert.equal(olmoe.numKvHeads, 2);

  const granite = parseModelConfig(await fixtureConfig("granitemoe"));
  assert.equal(granite.routerMode, "topk_softmax");
  assert.equal(granite.embeddingMultiplier, 0.3);
  assert.equal(granite.residualMultiplier, 1.5);
  assert.equal(granite.attentionScale, 0.09);
  assert.equal(granite.logitsScaling, 2.5);
  assert.equal(granite.tieWordEmbeddings, true);
});

Deno.test("parseModelConfig reads transformers-4 configs (rope_theta, num_experts, sliding windows)", () => {
  const cfg = parseModelConfig({
    model_type: "qwen2_moe",
    vocab_size: 100,
    hidden_size: 64,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    num_key_value_heads: 4,
    num_experts: 4,
    num_experts_per_tok: 2,
    moe_intermediate_size: 32,
    shared_expert_intermediate_size: 0,
    intermediate_size: 64,
    rope_theta: 5000,
    use_sliding_window: true,
    sliding_window: 16,
    max_window_layers: 2,
    decoder_sparse_step: 2,
    eos_token_id: [5, 6],
  });
  assert.equal(cfg.rope.theta, 5000);
  assert.deepEqual(cfg.layers.map((l) => l.moe), [false, true, false, true]);
  assert.deepEqual(cfg.layers.map((l) => l.slidingWindow), [16, 0, 0, 0]);
  assert.deepEqual(cfg.eosTokenIds, [5, 6]);
  assert.equal(cfg.sharedExpertIntermediateSize, 0);
});

Deno.test("parseModelConfig rejects unknown architectures, bad fields and unsupported rope scaling", async () => {
  const base = await fixtureConfig("olmoe");
  assert.throws(() => parseModelConfig({ ...base, model_type: "llama" }, "x/config.json"), (e: unknown) => {
    assert.ok(e instanceof UnsupportedModelError);
    assert.match(e.message, /architecture "llama" is not supported/);
    assert.equal(e.file, "x/config.json");
    return true;
  });
  assert.throws(() => parseModelConfig({ ...base, hidden_size: undefined }), /"hidden_size" is missing/);
  assert.throws(() => parseModelConfig({ ...base, num_key_value_heads: 3 }), ModelLoadError);
  assert.throws(() => parseModelConfig({ ...base, num_experts_per_tok: 99 }), /exceeds the 8 experts/);
  assert.throws(() => parseModelConfig({ ...base, hidden_act: "gelu" }), UnsupportedModelError);
  assert.throws(
    () => parseModelConfig({ ...base, rope_parameters: { rope_type: "yarn", factor: 4, rope_theta: 1e4 } }),
    (e: unknown) => e instanceof UnsupportedModelError && /rope scaling/.test(e.message),
  );
  assert.throws(() => parseModelConfig([1, 2]), /JSON object/);
});

Deno.test("ropeInverseFrequencies applies linear and llama3 scaling as transformers does", () => {
  const base = {
    theta: 500000,
    type: "default" as const,
    factor: 1,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  };
  const d = ropeInverseFrequencies(base, 128);
  assert.equal(d[0], 1);
  assert.ok(Math.abs(d[1] - Math.fround(1 / Math.pow(500000, 2 / 128))) < 1e-9);
  const lin = ropeInverseFrequencies({ ...base, type: "linear", factor: 4 }, 128);
  for (let i = 0; i < 64; i++) assert.ok(Math.abs(lin[i] - d[i] / 4) <= 1e-7 * d[i]);
  const l3 = ropeInverseFrequencies({ ...base, type: "llama3", factor: 8 }, 128);
  // High frequencies (short wavelengths) are kept, the lowest are divided by the factor, the middle blends.
  assert.equal(l3[0], d[0]);
  assert.ok(Math.abs(l3[63] - d[63] / 8) <= 1e-6 * d[63]);
  const mid = l3.findIndex((v, i) => v !== d[i] && Math.abs(v - d[i] / 8) > 1e-6 * d[i]);
  assert.ok(mid > 0, "some frequency is smoothed between the two");
});
