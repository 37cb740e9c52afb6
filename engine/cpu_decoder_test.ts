import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { loadModel } from "./model.ts";

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/models/${name}`, import.meta.url));

Deno.test("int8Activations: logits near the f32 ones, not equal; the webgpu backend refuses it, the cpu int8Experts", async () => {
  // qwen2_moe: attention biases, routed and shared experts: every rounded input is exercised.
  const plain = await loadModel(fixture("qwen2_moe"), { backend: "cpu" });
  const int8 = await loadModel(fixture("qwen2_moe"), { backend: "cpu", int8Activations: true });
  const ids = plain.tokenizer.encode("Glaciers form where more snow falls in winter than melts in summer.");
  const [a, b] = [await plain.logits(ids), await int8.logits(ids)];
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) num += (a[i] - b[i]) ** 2, den += a[i] ** 2;
  const rel = Math.sqrt(num / den);
  // int8 levels per block of 32: ~0.2–0.4 % error per input, a few per cent after all layers at most.
  assert.ok(rel > 0 && rel < 0.05, `relative RMS difference ${rel}`);
  await plain.dispose();
  await int8.dispose();
  await assert.rejects(
    loadModel(fixture("qwen2_moe"), { backend: "webgpu", int8Activations: true }),
    RangeError,
  );
  // And int8Experts (a webgpu kernel option) is refused on the cpu backend.
  await assert.rejects(loadModel(fixture("qwen2_moe"), { backend: "cpu", int8Experts: true }), RangeError);
});
