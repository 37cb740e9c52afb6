import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { SKIP_GPU } from "../kernels/test_util.ts";
import { inspectCpu, routerRowStats } from "./inspect.ts";
import {
  chooseFusionLayer,
  DEFAULT_LFD_ALPHA,
  fuseLogits,
  fusionCandidates,
  internalKnowledgeScores,
  jensenShannon,
  resolveLfdOptions,
} from "./lfd.ts";
import { loadModel } from "./model.ts";
import { CpuDecoder, loadCpuWeights } from "./cpu_decoder.ts";
import { Checkpoint } from "./checkpoint.ts";

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/models/${name}`, import.meta.url));

Deno.test("jensenShannon: zero for equal rows, symmetric, at most ln 2, and a hand-computed value", () => {
  assert.ok(jensenShannon([1, 2, 3], [1, 2, 3]) < 1e-15);
  assert.ok(Math.abs(jensenShannon([0, 5], [5, 0]) - jensenShannon([5, 0], [0, 5])) < 1e-15);
  assert.ok(jensenShannon([0, 60], [60, 0]) <= Math.LN2 + 1e-12);
  assert.ok(jensenShannon([0, 60], [60, 0]) > Math.LN2 - 1e-9);
  // p = (0.5, 0.5), q = softmax(ln 3, 0) = (0.75, 0.25): JSD = ½KL(p‖m) + ½KL(q‖m), m = (0.625, 0.375).
  const m = [0.625, 0.375];
  const kl = (a: number[]) => a.reduce((s, x, i) => s + x * Math.log(x / m[i]), 0);
  const want = 0.5 * kl([0.5, 0.5]) + 0.5 * kl([0.75, 0.25]);
  assert.ok(Math.abs(jensenShannon([0, 0], [Math.log(3), 0]) - want) < 1e-12);
  assert.throws(() => jensenShannon([1], [1, 2]), RangeError);
});

Deno.test("IKS averages the divergence over positions; the fused layer is the lowest in the latter half", () => {
  const V = 3, P = 2, L = 4;
  const before = new Float32Array(L * P * V), after = new Float32Array(L * P * V);
  after.set([2, 0, 0, 0, 0, 0], 1 * P * V); // layer 1: one position moved
  after.set([0, 3, 0, 0, 3, 0], 2 * P * V); // layer 2: both moved
  const iks = internalKnowledgeScores(before, after, L, P, V);
  assert.equal(iks[0], 0);
  assert.ok(Math.abs(iks[1] - jensenShannon([0, 0, 0], [2, 0, 0]) / 2) < 1e-12);
  assert.ok(iks[2] > iks[1]);
  assert.deepEqual(fusionCandidates(4), [2]);
  assert.deepEqual(fusionCandidates(16), [8, 9, 10, 11, 12, 13, 14]);
  assert.deepEqual(fusionCandidates(1), []);
  assert.equal(chooseFusionLayer([9, 9, 9, 5, 7, 1, 8, 0], 8), 5); // candidates 4..6; layer 7 is the last
  assert.equal(chooseFusionLayer([1], 1), undefined);
  assert.deepEqual(
    fuseLogits(new Float32Array([1, 2]), new Float32Array([4, 8]), 0.5),
    new Float32Array([3, 6]),
  );
  assert.throws(() => resolveLfdOptions({ layer: 3 }, 3), RangeError);
  assert.throws(() => resolveLfdOptions({ layer: "auto", alpha: NaN }, 3), RangeError);
  assert.deepEqual(resolveLfdOptions(undefined, 3), { layer: "off", alpha: DEFAULT_LFD_ALPHA, positions: 4 });
});

Deno.test("routerRowStats: entropy and top-1 margin of a softmax", () => {
  const s = routerRowStats([0, 0, 0, 0]);
  assert.ok(Math.abs(s.entropy - Math.log(4)) < 1e-12);
  assert.equal(s.margin, 0);
  const t = routerRowStats([Math.log(3), 0]);
  assert.ok(Math.abs(t.margin - 0.5) < 1e-12);
});

Deno.test("LFD on the CPU: α = 0 is plain decoding; otherwise the first token is argmax(final + α · layer logits)", async () => {
  const model = await loadModel(fixture("mixtral"), { backend: "cpu" });
  const ids = model.tokenizer.encode("The old lighthouse keeper kept a logbook");
  const o = { maxTokens: 10, ignoreEos: true };
  const plain = await model.generate(ids, o);
  assert.deepEqual(await model.generate(ids, { ...o, lfd: { layer: 1, alpha: 0 } }), plain);
  // Reference of the fused first token, computed from the decoder's own pieces.
  const ckpt = await Checkpoint.open(fixture("mixtral"));
  const dec = new CpuDecoder(ckpt.config, await loadCpuWeights(ckpt), 64);
  ckpt.close();
  let row: Float32Array | undefined;
  const final = dec.forward(ids, 0, dec.newCache(ids.length), false, {
    residual(l, stage, x) {
      if (l === 1 && stage === "after_ffn") row = x.slice(x.length - ckpt.config.hiddenSize);
    },
  });
  const fused = fuseLogits(final, dec.headLogits(row!, 1), 2);
  const argmax = fused.reduce((b, v, i, a) => (v > a[b] ? i : b), 0);
  const got = await model.generate(ids, { ...o, lfd: { layer: 1, alpha: 2 } });
  assert.equal(got[0], argmax);
  assert.equal(model.lastStats?.lfdLayer, 1);
  await model.generate(ids, { ...o, lfd: { layer: "auto" } });
  assert.equal(model.lastStats?.lfdLayer, 1); // the only candidate of a 3-layer model
  await assert.rejects(model.generate(ids, { ...o, lfd: { layer: 2 } }), RangeError);
  await model.dispose();
});

Deno.test({
  name: "inspect and LFD on WebGPU match the CPU: logits, router statistics, IKS, fused tokens",
  ignore: SKIP_GPU,
  fn: async () => {
    for (const name of ["qwen2_moe", "granitemoe"]) {
      const cpu = await loadModel(fixture(name), { backend: "cpu" });
      const gpu = await loadModel(fixture(name), { backend: "webgpu", dtype: "f32", prefillRows: 8 });
      const ids = cpu.tokenizer.encode(
        "Volunteers began clearing the canal in the 1970s and rebuilt the locks.",
      );
      assert.ok(ids.length > 8, "the prompt spans several prefill chunks");
      const a = await cpu.inspect(ids, { iksPositions: 3 }), b = await gpu.inspect(ids, { iksPositions: 3 });
      const close = (x: ArrayLike<number>, y: ArrayLike<number>, tol: number, what: string) => {
        assert.equal(x.length, y.length);
        for (let i = 0; i < x.length; i++) {
          if (Number.isNaN(x[i])) assert.ok(Number.isNaN(y[i]), `${name} ${what}[${i}]`);
          else {assert.ok(
              Math.abs(x[i] - y[i]) <= tol * (1 + Math.abs(x[i])),
              `${name} ${what}[${i}]: ${x[i]} vs ${y[i]}`,
            );}
        }
      };
      close(a.lastLogits, b.lastLogits, 1e-4, "lastLogits");
      close(a.routerEntropy, b.routerEntropy, 1e-4, "routerEntropy");
      close(a.routerMargin, b.routerMargin, 1e-4, "routerMargin");
      close(a.iks!, b.iks!, 1e-3, "iks");
      assert.ok(a.iks![1] > 0);
      // The reference of inspect itself on the CPU: a fresh decoder gives the same numbers.
      const ckpt = await Checkpoint.open(fixture(name));
      const ref = inspectCpu(new CpuDecoder(ckpt.config, await loadCpuWeights(ckpt), 128), ids, {
        iksPositions: 3,
      });
      ckpt.close();
      close(ref.iks!, a.iks!, 1e-12, "iks (fresh decoder)");
      const o = { maxTokens: 12, ignoreEos: true };
      for (const lfd of [{ layer: 1, alpha: 0 }, { layer: 1, alpha: 1.5 }]) {
        assert.deepEqual(
          await gpu.generate(ids, { ...o, lfd }),
          await cpu.generate(ids, { ...o, lfd }),
          `${name} ${lfd.alpha}`,
        );
      }
      assert.deepEqual(
        await gpu.generate(ids, { ...o, lfd: { layer: 1, alpha: 0 } }),
        await gpu.generate(ids, o),
      );
      await cpu.dispose();
      await gpu.dispose();
    }
  },
});
