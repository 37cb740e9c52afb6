import assert from "node:assert/strict";
import { argmaxRef, sampleRef, type SamplingParams } from "./cpu/sampling.ts";
import { readBuffer } from "./gpu.ts";
import { sampleProgram, SAMPLER_UNIFORM_BYTES, samplerUniform } from "./sample.ts";
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
  const params = buf(device, "sampler", new Uint8Array(samplerUniform(p)));
  const rb = buf(device, "ring", new Uint32Array(Math.max(...steps) + 1).fill(0xffffffff));
  const scratch = buf(device, "scratch", new Float32Array(logits.length));
  const group = prog.bind("t", [buf(device, "logits", logits), params, rb, scratch]);
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

/**
 * Draws of `p` at `steps` from the GPU against `sampleRef`'s: the same rules and random numbers, so equal except
 * where float rounding moves an exact boundary (one step at most). Returns the GPU's draws.
 */
async function drawsMatchRef(logits: Float32Array, V: number, p: SamplingParams, steps: number[]) {
  const got = await gpuSample(logits, V, 0, p, steps);
  const ref = steps.map((s) => sampleRef(logits, p, s));
  const same = got.filter((t, i) => t === ref[i]).length;
  assert.ok(same >= steps.length - 1, `V ${V} ${JSON.stringify(p)}: ${got} vs ${ref}`);
  return got;
}

Deno.test({
  name: "sample kernel: greedy equals argmaxRef (lowest id on ties) on the chosen row",
  ignore: SKIP_GPU,
  fn: async () => {
    const r = rng(51);
    // 50304: the OLMoE vocabulary; 10 and 300 end in partial rounds of 8 ids.
    for (const V of [10, 300, 5000, 50304]) {
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
    // 400 ids: 2 per thread's draw chunk; 5000: 20 (rounds of 8 and a tail).
    for (const V of [400, 5000]) {
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
        const got = await drawsMatchRef(logits, V, p, steps);
        const sorted = Array.from(logits).sort((a, b) => b - a);
        if (p.topK > 0) {
          for (const t of got) assert.ok(logits[t] >= sorted[p.topK - 1], `top-k ${p.topK} kept ${t}`);
        }
        // Same seed, same tokens.
        assert.deepEqual(await gpuSample(logits, V, 0, p, steps.slice(0, 4)), got.slice(0, 4));
      }
    }
  },
});

Deno.test({
  name: "sample kernel: a peaked row (500 of 50,304 logits within 30 of the largest) draws as sampleRef",
  ignore: SKIP_GPU,
  fn: async () => {
    const r = rng(54);
    const V = 50304;
    // The rest lie 56 or more below the largest after any temperature here: they weigh e^-56 or less.
    const logits = randomArray(r, V, -200, -60);
    const live = new Set<number>();
    while (live.size < 500) live.add(Math.min(V - 1, Math.floor(r(0, 1) * V)));
    for (const i of live) logits[i] = r(-4, 4);
    const steps = Array.from({ length: 16 }, (_, i) => i);
    for (
      const p of [
        { temperature: 1, topK: 0, topP: 0.9, seed: 11 },
        { temperature: 0.7, topK: 40, topP: 1, seed: 12 },
        // More than the 500 candidates: the kept set is theirs (the rest weigh nothing).
        { temperature: 1, topK: 1000, topP: 1, seed: 13 },
        { temperature: 1.5, topK: 0, topP: 1, seed: 14 },
      ]
    ) {
      const got = await drawsMatchRef(logits, V, p, steps);
      for (const t of got) assert.ok(live.has(t), `${JSON.stringify(p)}: drew ${t}, outside the live ids`);
    }
  },
});

Deno.test({
  name: "sample kernel: a batched step samples each row with its lane's parameters into its lane's ring",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const r = rng(53);
    const V = 300, stride = 40;
    const lanes: SamplingParams[] = [
      { temperature: 0, topK: 0, topP: 1, seed: 0 },
      { temperature: 1, topK: 0, topP: 1, seed: 7 },
      { temperature: 0.8, topK: 20, topP: 0.9, seed: 9 },
    ];
    // Rows name lanes out of order, at different steps.
    const rows = [{ lane: 2, step: 5 }, { lane: 0, step: 11 }, { lane: 1, step: 3 }];
    const logits = randomArray(r, rows.length * V, -3, 3);
    const prog = await sampleProgram(device, ring, V);
    const params = new Uint8Array(lanes.length * SAMPLER_UNIFORM_BYTES);
    lanes.forEach((p, i) => params.set(new Uint8Array(samplerUniform(p)), i * SAMPLER_UNIFORM_BYTES));
    const rb = buf(device, "ring", new Uint32Array(lanes.length * stride).fill(0xffffffff));
    const group = prog.bind("t", [
      buf(device, "logits", logits),
      buf(device, "sampler", params),
      rb,
      buf(device, "scratch", new Float32Array(logits.length)),
    ]);
    const got = new Uint32Array(
      await runAndRead(
        device,
        ring,
        [{ program: prog, group, grid: [rows.length, 1, 1] }],
        {
          rows: rows.length,
          ringStride: stride,
          batch: rows.map((x) => ({ pos: 0, lane: x.lane, ringIn: 0, step: x.step })),
        },
        rb,
        lanes.length * stride * 4,
      ),
    );
    rows.forEach((x, i) => {
      const want = sampleRef(logits.subarray(i * V, (i + 1) * V), lanes[x.lane], x.step);
      assert.equal(got[x.lane * stride + x.step], want, `row ${i} (lane ${x.lane}, step ${x.step})`);
    });
    // Nothing else was written.
    const written = new Set(rows.map((x) => x.lane * stride + x.step));
    got.forEach((t, i) => written.has(i) || assert.equal(t, 0xffffffff, `slot ${i}`));
  },
});
