import assert from "node:assert/strict";
import { reciprocalRankFusion } from "./fusion.ts";

const id = (s: string) => s;

Deno.test("reciprocalRankFusion: sums 1/(k + rank) over lists and orders by the sum", () => {
  const fused = reciprocalRankFusion([["a", "b", "c"], ["c", "a", "d"]], id);
  const expected: Record<string, number> = {
    a: 1 / 61 + 1 / 62,
    b: 1 / 62,
    c: 1 / 63 + 1 / 61,
    d: 1 / 63,
  };
  assert.deepEqual(fused.map((f) => f.item), ["a", "c", "b", "d"]);
  for (const f of fused) assert.ok(Math.abs(f.score - expected[f.item]) < 1e-15, f.item);
  assert.deepEqual(fused.find((f) => f.item === "c")!.ranks, [3, 1]);
  assert.deepEqual(fused.find((f) => f.item === "d")!.ranks, [undefined, 3]);
});

Deno.test("reciprocalRankFusion: k and weights change the order", () => {
  // x is first in list 0 only; y is second in both lists.
  const lists = [["x", "y"], ["z", "y", "w", "x"]];
  assert.equal(reciprocalRankFusion(lists, id, { k: 60 })[0].item, "y"); // 2/62 > 1/61 + 1/64
  assert.equal(reciprocalRankFusion(lists, id, { k: 0 })[0].item, "x"); // 1 + 1/4 > 1/2 + 1/2
  assert.equal(reciprocalRankFusion(lists, id, { weights: [3, 1] })[0].item, "x");
});

Deno.test("reciprocalRankFusion: keys identify items; the first occurrence in a list counts; ties are stable", () => {
  type Hit = { key: string; from: string };
  const a: Hit[] = [{ key: "p", from: "a" }, { key: "q", from: "a" }, { key: "p", from: "a-dup" }];
  const b: Hit[] = [{ key: "q", from: "b" }, { key: "p", from: "b" }];
  const fused = reciprocalRankFusion([a, b], (h) => h.key);
  assert.equal(fused.length, 2);
  assert.equal(fused[0].score, fused[1].score);
  assert.equal(fused[0].item.from, "a"); // first appearance breaks the tie; the item comes from the first list
  assert.deepEqual(fused[0].ranks, [1, 2]);
  assert.deepEqual(reciprocalRankFusion([], id), []);
  assert.deepEqual(reciprocalRankFusion([[], []], id), []);
});

Deno.test("reciprocalRankFusion: bad options are RangeErrors", () => {
  assert.throws(() => reciprocalRankFusion([["a"]], id, { k: -1 }), RangeError);
  assert.throws(() => reciprocalRankFusion([["a"]], id, { k: NaN }), RangeError);
  assert.throws(() => reciprocalRankFusion([["a"], ["b"]], id, { weights: [1] }), RangeError);
});
