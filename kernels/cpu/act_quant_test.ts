import assert from "node:assert/strict";
import { int8ActivationsRef } from "./act_quant.ts";

Deno.test("int8ActivationsRef rounds each block to 255 levels of its own scale", () => {
  // Two rows of 40: blocks of 32 and 8 per row; the second row's last block is all zero.
  const x = new Float32Array(80);
  for (let i = 0; i < 40; i++) x[i] = Math.sin(i * 1.7) * (i < 32 ? 3 : 0.01);
  for (let i = 40; i < 72; i++) x[i] = (i - 56) / 7;
  const y = int8ActivationsRef(x, 40);
  for (const [o, end] of [[0, 32], [32, 40], [40, 72], [72, 80]]) {
    const m = Math.max(...x.subarray(o, end).map(Math.abs));
    const scale = m / 127;
    for (let i = o; i < end; i++) {
      assert.ok(Math.abs(y[i] - x[i]) <= scale / 2 + 1e-7, `value ${i}: ${y[i]} vs ${x[i]}`);
      if (m > 0) assert.ok(Number.isInteger(Math.round(y[i] / scale * 1e4) / 1e4), `value ${i} is a level`);
    }
    // The block's largest magnitude is a level exactly (±127 · scale).
    if (m > 0) assert.ok(Math.abs(Math.max(...y.subarray(o, end).map(Math.abs)) - m) <= m * 1e-6);
  }
  assert.deepEqual([...y.subarray(72)], new Array(8).fill(0));
  // A small block keeps its resolution: its scale is its own, not the row's.
  assert.ok(Math.abs(y[35] - x[35]) < 1e-4);
});

Deno.test("int8ActivationsRef refuses partial rows and bad blocks", () => {
  assert.throws(() => int8ActivationsRef(new Float32Array(10), 4), RangeError);
  assert.throws(() => int8ActivationsRef(new Float32Array(8), 4, 0), RangeError);
});
