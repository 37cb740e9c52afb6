import assert from "node:assert/strict";
import { argmaxRef, sampleRef, type SamplingParams } from "./cpu/sampling.ts";
import { readBuffer } from "./gpu.ts";
import { sampleProgram, samplerUniform } from "./sample.ts";
import { buf, randomArray, rng, runAndRead, SKIP_GPU, testGpu } from "./test_util.ts";

async function gpuSample(
  logits: Float32Array,
  V: number,
  row: number,
  p: SamplingParams,
  steps: number[],
): Promise<number[]> {
  const { device, ring } = await testGpu();
  const prog = await sampleProgram(device, ring, V);
  const uni = device.createBuffer({
    label: "sampler",
    size: 16,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(uni, 0, samplerUniform(p));
  const rb = buf(device, "ring", new Uint32Array(Math.max(...steps) + 1).fill(0xffffffff));
  const group = prog.bind("t", [buf(device, "logits", logits), { buffer: uni }, rb]);
  const out: number[] = [];
  for (const step of steps) {
    await runAndRead(
      device,
      ring,
      [{ program: prog, group, grid: [1, 1, 1] }],
      { step, logitsRow: row },
      rb,
      4,
    );
    out.push(new Uint32Array(await readBuffer(device, rb, step * 4, 4))[0]);
  }
  return out;
}

Deno.test({
  name: "sample kernel: greedy equals argmaxRef (lowest id on ties) on the chosen row",
  ignore: SKIP_GPU,
  fn: async () => {
    const r = rng(51);
    for (const V of [10, 300, 5000]) {
      const rows = 3;
      const logits = randomArray(r, rows * V, -5, 5);
      logits[V + 7 % V] = 9;
      logits[V + (V - 1)] = 9; // a tie: id 7 wins
      const [t] = await gpuSample(logits, V, 1, { temperature: 0, topK: 0, topP: 1, seed: 0 }, [0]);
      assert.equal(t, argmaxRef(logits.subarray(V, 2 * V)));
      assert.equal(t, 7 % V);
    }
  },
});

Deno.test({
  name: "sample kernel: temperature/top-k/top-p draws match sampleRef and stay in the kept set",
  ignore: SKIP_GPU,
  fn: async () => {
    const r = rng(52);
    const V = 400;
    const logits = randomArray(r, V, -3, 3);
    const steps = Array.from({ length: 24 }, (_, i) => i);
    for (
      const p of [
        { temperature: 1, topK: 0, topP: 1, seed: 1 },
        { temperature: 0.7, topK: 10, topP: 1, seed: 2 },
        { temperature: 1.3, topK: 0, topP: 0.8, seed: 3 },
        { temperature: 1, topK: 50, topP: 0.5, seed: 4 },
      ]
    ) {
      const got = await gpuSample(logits, V, 0, p, steps);
      const ref = steps.map((s) => sampleRef(logits, p, s));
      // The same rules and random numbers: equal except where float rounding moves an exact boundary.
      const same = got.filter((t, i) => t === ref[i]).length;
      assert.ok(same >= steps.length - 1, `${JSON.stringify(p)}: ${got} vs ${ref}`);
      const sorted = Array.from(logits).sort((a, b) => b - a);
      if (p.topK > 0) {
        for (const t of got) assert.ok(logits[t] >= sorted[p.topK - 1], `top-k ${p.topK} kept ${t}`);
      }
      // Same seed, same tokens.
      assert.deepEqual(await gpuSample(logits, V, 0, p, steps.slice(0, 4)), got.slice(0, 4));
    }
  },
});
