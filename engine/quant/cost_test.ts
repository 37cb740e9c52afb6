import assert from "node:assert/strict";
import { SKIP_GPU } from "../../kernels/test_util.ts";
import {
  bytesModelCosts,
  COST_KERNELS,
  costTableCovers,
  lookupCost,
  measureCosts,
  measurePathCosts,
} from "./cost.ts";

Deno.test(
  "measureCosts times every scheme, shape and token count on the adapter",
  { ignore: SKIP_GPU },
  async () => {
    const shapes = [{ rows: 64, cols: 128, schemes: ["w4g128", "w2g64", "w3g128", "f16"] }];
    const t = await measureCosts(shapes);
    assert.equal(t.source, "measured");
    assert.ok(costTableCovers(t, shapes));
    for (const v of Object.values(t.entries)) assert.ok(v > 0 && Number.isFinite(v), String(v));
    // Lookups round the token count up, scale linearly past the last, and cost nothing for no tokens.
    assert.equal(lookupCost(t, "w4g128", 64, 128, 3), lookupCost(t, "w4g128", 64, 128, 4));
    assert.ok(
      Math.abs(lookupCost(t, "w4g128", 64, 128, 128) - 2 * lookupCost(t, "w4g128", 64, 128, 64)) < 1e-9,
    );
    assert.equal(lookupCost(t, "w4g128", 64, 128, 0), 0);
    assert.ok(!costTableCovers(t, [{ rows: 64, cols: 128, schemes: ["w8g128"] }]));
    assert.ok(costTableCovers(bytesModelCosts(shapes), shapes));
  },
);

Deno.test(
  "measureCosts times expert blocks in the grouped gate/up and down kernels, and names the kernels",
  { ignore: SKIP_GPU },
  async () => {
    // An expert of hidden 128, width 64: gate/up [128, 128], down [128, 64].
    const shapes = [
      { rows: 128, cols: 128, schemes: ["w4g128", "w2g64", "f16"], kernel: "gate_up" as const },
      { rows: 128, cols: 64, schemes: ["w4g64", "w8g64", "w3g64"], kernel: "down" as const },
    ];
    const t = await measureCosts(shapes);
    assert.equal(t.kernels, COST_KERNELS);
    assert.ok(costTableCovers(t, shapes));
    for (const v of Object.values(t.entries)) assert.ok(v > 0 && Number.isFinite(v), String(v));
    await assert.rejects(
      measureCosts([{ rows: 63, cols: 128, schemes: ["w4g128"], kernel: "gate_up" }]),
      RangeError,
    );
  },
);

Deno.test("measurePathCosts gives a non-negative fraction per projection", { ignore: SKIP_GPU }, async () => {
  const c = await measurePathCosts({ hidden: 128, inter: 64, topK: 2 }, ["w4g128", "w2g64"], {
    layers: 2,
    reps: 2,
    trials: 1,
  });
  for (const v of [c.gate_up, c.down]) assert.ok(v >= 0 && Number.isFinite(v), String(v));
});
