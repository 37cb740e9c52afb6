import assert from "node:assert/strict";
import { describeKvCache, resolveKvCache, sameKvCache } from "./kv_options.ts";

Deno.test("resolveKvCache fills in the GEAR authors' defaults", () => {
  assert.deepEqual(resolveKvCache(undefined, "f16"), {
    mode: "f16",
    bits: 0,
    group: 0,
    rank: 0,
    prefillRank: 0,
    loops: 0,
    outliers: 0,
    buffer: 0,
    seed: 0,
  });
  assert.deepEqual(resolveKvCache({ mode: "gear" }, "f32"), {
    mode: "gear",
    bits: 2,
    group: 64,
    rank: 2,
    prefillRank: 4,
    loops: 3,
    outliers: 0.02,
    buffer: 64,
    seed: 0,
  });
  const q = resolveKvCache({ mode: "quant", bits: 4 }, "f16");
  assert.equal(q.rank + q.prefillRank + q.outliers, 0);
  assert.equal(resolveKvCache({ mode: "gear-l", rank: 6 }, "f16").prefillRank, 6);
  assert.equal(resolveKvCache({ mode: "gear", group: 128 }, "f16").buffer, 128);
  assert.equal(describeKvCache(resolveKvCache({ mode: "gear" }, "f16")), "gear-2 (g64, r4/2, s0.02, buf64)");
  assert.ok(
    sameKvCache(resolveKvCache({ mode: "gear" }, "f16"), resolveKvCache({ mode: "gear", bits: 2 }, "f32")),
  );
  assert.ok(!sameKvCache(resolveKvCache({ mode: "gear" }, "f16"), resolveKvCache({ mode: "gear-l" }, "f16")));
});

Deno.test("resolveKvCache rejects what no kernel can serve, naming the field", () => {
  const bad: [unknown, RegExp][] = [
    [{ mode: "int3" }, /mode must be one of/],
    [{ mode: "gear", bits: 3 }, /bits must be 2, 4 or 8/],
    [{ mode: "quant", group: 48 }, /group must be 32, 64 or 128/],
    [{ mode: "gear", buffer: 96 }, /buffer must be a multiple of 64/],
    [{ mode: "gear", group: 128, buffer: 64 }, /buffer must be a multiple of 64 and of the group/],
    [{ mode: "gear-l", rank: 0 }, /rank must be an integer in \[1, 8\]/],
    [{ mode: "gear", outliers: 0.5 }, /outliers must be a fraction/],
    [{ mode: "gear", outliers: 0.2, group: 128, buffer: 128 }, /more than 16 entries/],
    [{ mode: "gear-l", outliers: 0.02 }, /no meaning for gear-l/],
    [{ mode: "quant", rank: 2 }, /rank has no meaning for quant/],
    [{ mode: "f16", bits: 2 }, /bits has no meaning for the plain f16 cache/],
    [{ mode: "gear", rnak: 2 }, /unknown field "rnak"/],
    ["gear", /expected an object/],
  ];
  for (const [o, re] of bad) {
    assert.throws(() => resolveKvCache(o as never, "f16"), re, JSON.stringify(o));
  }
});
