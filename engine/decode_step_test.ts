import assert from "node:assert/strict";
import { Checkpoint } from "./checkpoint.ts";
import { resolveGenerateOptions, runGeneration } from "./generation.ts";
import { GpuDecoder, type ReadbackOverlap } from "./gpu_decoder.ts";
import { SKIP_GPU, testGpu } from "../kernels/test_util.ts";

/** Dispatches of a decode step by program label, from the decoder's per-dispatch profile. */
async function stepCounts(fuseNorms: boolean): Promise<Map<string, number>> {
  const { ctx } = await testGpu();
  const ckpt = await Checkpoint.open("fixtures/models/olmoe");
  const decoder = await GpuDecoder.create(ctx, ckpt, { dtype: "f32", contextLength: 64, fuseNorms });
  ckpt.close();
  try {
    const prof = await decoder.profileDecodeStep(5);
    const ms = await decoder.timeDecodeStep(5, 2);
    assert.ok(Number.isFinite(ms) && ms > 0, `one-pass step time ${ms}`);
    assert.ok(await decoder.timeDecodeStep(5, 2, new Set(["rms-norm"])) > 0);
    await assert.rejects(decoder.timeDecodeStep(5, 0), RangeError);
    return new Map([...prof].map(([k, v]) => [k, v.count]));
  } finally {
    decoder.dispose();
  }
}

Deno.test({
  name:
    "a decode step fuses each layer's two RMSNorms into the mat-vecs that read them (and can be told not to)",
  ignore: SKIP_GPU,
  fn: async () => {
    const layers = 3; // fixtures/models/olmoe
    const fused = await stepCounts(true), plain = await stepCounts(false);
    const total = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
    assert.equal(total(plain) - total(fused), 2 * layers);
    // Only the final norm is left as its own dispatch.
    assert.equal(fused.get("rms-norm"), 1);
    assert.equal(plain.get("rms-norm"), 2 * layers + 1);
  },
});

Deno.test({
  name:
    "readbackOverlap: each way of submitting batches around the readback gives the same tokens, alone and together",
  ignore: SKIP_GPU,
  fn: async () => {
    const { ctx } = await testGpu();
    const ckpt = await Checkpoint.open("fixtures/models/olmoe");
    const V = ckpt.config.vocabSize;
    const run = async (readbackOverlap: ReadbackOverlap) => {
      const decoder = await GpuDecoder.create(ctx, ckpt, {
        dtype: "f32",
        contextLength: 96,
        lanes: 2,
        readbackOverlap,
      });
      try {
        const gen = async (ids: number[], tokensPerSubmit: number, sampled: boolean) => {
          const opts = resolveGenerateOptions(
            {
              maxTokens: 40,
              ignoreEos: true,
              tokensPerSubmit,
              ...(sampled ? { temperature: 0.9, topK: 20, seed: 5 } : {}),
            },
            ids.length,
            decoder.contextLength,
            { eosTokenIds: [] },
          );
          const out: number[] = [];
          for await (const t of runGeneration(decoder, { decode: () => "" }, ids, opts, () => {})) {
            out.push(t);
          }
          return out;
        };
        const a = Array.from({ length: 7 }, (_, j) => (5 * j + 3) % V), b = [9, 10, 11];
        // 40 steps per submission: the prefill and 39 decode steps in chunks of 2, 2, 4, 8, 16 and 7; adaptive:
        // 1, 16 and 23 steps, each batch's first chunk encoded before the readback of the one before.
        const alone = [await gen(a, 40, false), await gen(b, 0, true)];
        const together = await Promise.all([gen(a, 40, false), gen(b, 0, true)]);
        return { alone, together };
      } finally {
        decoder.dispose();
      }
    };
    try {
      const plain = await run("off");
      for (const mode of ["call", "timer"] as const) {
        const other = await run(mode);
        assert.deepEqual(other.alone, plain.alone, mode);
        assert.deepEqual(other.together, plain.together, mode);
      }
      assert.ok(new Set(plain.alone[0]).size > 2, `output too uniform: ${plain.alone[0]}`);
    } finally {
      ckpt.close();
    }
  },
});
