import assert from "node:assert/strict";
import { parseShapes } from "./shape_arg.ts";

Deno.test("parseShapes: dimensions, teams, a step, +int8 and +f32; fields left out keep the defaults", () => {
  assert.equal(parseShapes(""), undefined);
  assert.deepEqual(parseShapes("qgateup=16x16/2+int8,qdown=32x8x4"), {
    qGateUp: { tpo: 16, outs: 16, step: 2, int8: true },
    qDown: { tpo: 32, outs: 8, split: 4 },
  });
  assert.deepEqual(parseShapes("qgemv=+int8,qdown=/4"), { qgemv: { int8: true }, qDown: { step: 4 } });
  assert.deepEqual(parseShapes("qgateup=+int8,qdown=/2+int8"), {
    qGateUp: { int8: true },
    qDown: { step: 2, int8: true },
  });
  assert.deepEqual(parseShapes("qdown=+f32"), { qDown: { int8: false } });
});

Deno.test("parseShapes refuses unknown kernels, flags and malformed or invalid shapes", () => {
  for (const bad of ["qgemm=32x8", "qgemv", "qgemv=32", "qgemv=32x8+foo", "qgemv=32x8/x", "qgemv=1x2x3x4"]) {
    assert.throws(() => parseShapes(bad), TypeError, bad);
  }
  // Well formed, not a valid shape: teams must be a power of two, threads at most 256.
  for (const bad of ["qdown=16x16x3", "qgemv=32x16"]) assert.throws(() => parseShapes(bad), RangeError, bad);
});
