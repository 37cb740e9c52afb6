import assert from "node:assert/strict";
import { Checkpoint } from "./checkpoint.ts";
import { GpuDecoder } from "./gpu_decoder.ts";
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
