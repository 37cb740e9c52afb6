import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { SKIP_GPU } from "../kernels/test_util.ts";
import { loadModel } from "./model.ts";

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/models/${name}`, import.meta.url));

Deno.test({
  name: "expertActivations counts the tokens routed to each expert, the same on the CPU and on WebGPU",
  ignore: SKIP_GPU,
  fn: async () => {
    const cpu = await loadModel(fixture("qwen3_moe"), { backend: "cpu" });
    const gpu = await loadModel(fixture("qwen3_moe"), { backend: "webgpu", dtype: "f32" });
    const c = cpu.config;
    for (const counts of [cpu.expertActivations(), gpu.expertActivations()]) {
      assert.equal(counts.length, c.numLayers);
      for (const layer of counts) assert.deepEqual(Array.from(layer), new Array(c.numExperts).fill(0));
    }
    const ids = cpu.tokenizer.encode("Glaciers form where more snow falls in winter than melts in summer.");
    const o = { maxTokens: 6, ignoreEos: true };
    assert.deepEqual(await gpu.generate(ids, o), await cpu.generate(ids, o));
    // prompt + 5 decode steps (the 6th token needs no forward), top-k experts each, in every MoE layer.
    const routed = (ids.length + o.maxTokens - 1) * c.topK;
    const a = cpu.expertActivations();
    let b = gpu.expertActivations();
    for (let i = 0; i < 50 && b[0].reduce((x, y) => x + y, 0) === 0; i++) {
      await new Promise((r) => setTimeout(r, 20)); // the GPU counters are read back after the call
      b = gpu.expertActivations();
    }
    for (let l = 0; l < c.numLayers; l++) {
      if (!c.layers[l].moe) continue;
      assert.equal(a[l].reduce((x, y) => x + y, 0), routed, `layer ${l} total`);
      assert.deepEqual(Array.from(b[l]), Array.from(a[l]), `layer ${l}`);
    }
    await cpu.dispose();
    await gpu.dispose();
  },
});
