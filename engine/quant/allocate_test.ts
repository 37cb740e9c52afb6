import assert from "node:assert/strict";
import { allocateLayer, allocateModel, type Allocation, type Block } from "./allocate.ts";

function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13, s >>>= 0, s ^= s >>> 17, s ^= s << 5, s >>>= 0;
    return s / 4294967296;
  };
}

function layer(seed: number, n: number): Block[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => {
    const size = i % 2 === 0 ? 128 : 64; // gate+up blocks are twice the down blocks
    const sens = 0.2 + r() * 3;
    return {
      id: `b${i}`,
      size,
      candidates: [
        { scheme: "w8g64", bits: 8.5, loss: sens * 0.01, cost: 1.0 + r() * 0.1 },
        { scheme: "w4g64", bits: 4.5, loss: sens * 0.2, cost: 0.6 + r() * 0.1 },
        { scheme: "w2g64", bits: 2.5, loss: sens * 1.5, cost: 0.45 + r() * 0.1 },
      ],
    };
  });
}

function bruteForce(blocks: Block[], budget: number): number {
  const total = blocks.reduce((a, b) => a + b.size, 0);
  let best = Infinity;
  const rec = (i: number, bits: number, loss: number) => {
    if (bits > budget * total + 1e-9) return;
    if (i === blocks.length) return void (best = Math.min(best, loss));
    for (const c of blocks[i].candidates) rec(i + 1, bits + c.bits * blocks[i].size, loss + c.loss);
  };
  rec(0, 0, 0);
  return best;
}

Deno.test("allocateLayer with r = 1 finds the brute-force optimum under the budget (HiGHS)", async () => {
  for (const [seed, budget] of [[1, 4.5], [2, 3.25], [3, 2.75], [4, 6]] as const) {
    const blocks = layer(seed, 6);
    const a = await allocateLayer(blocks, budget, { r: 1 });
    assert.equal(a.solver, "highs");
    assert.ok(a.averageBits <= budget + 1e-9, `${a.averageBits} > ${budget}`);
    assert.ok(
      Math.abs(a.loss - bruteForce(blocks, budget)) < 1e-9,
      `seed ${seed}: ${a.loss} vs ${bruteForce(blocks, budget)}`,
    );
  }
});

Deno.test("allocateLayer respects the budget for every r and with the greedy solver", async () => {
  const blocks = layer(5, 16);
  for (const r of [0, 0.25, 0.5, 0.75, 1]) {
    for (const solver of ["highs", "greedy"] as const) {
      const a = await allocateLayer(blocks, 3.5, { r, solver });
      assert.ok(a.averageBits <= 3.5 + 1e-9, `r ${r} ${solver}: ${a.averageBits}`);
      assert.equal(a.choice.size, blocks.length);
    }
  }
  // Speed-only prefers the fastest schemes; accuracy-only the most accurate that fit.
  const fast = await allocateLayer(blocks, 8.5, { r: 0 });
  const acc = await allocateLayer(blocks, 8.5, { r: 1 });
  assert.ok(fast.cost <= acc.cost && acc.loss <= fast.loss);
  assert.ok([...acc.choice.values()].every((s) => s === "w8g64"));
  // A greedy solution is never better than the exact one on the accuracy-only objective.
  const g = await allocateLayer(blocks, 3.5, { r: 1, solver: "greedy" });
  const h = await allocateLayer(blocks, 3.5, { r: 1 });
  assert.ok(h.loss <= g.loss + 1e-12);
});

Deno.test("allocateLayer refuses impossible budgets and bad r", async () => {
  await assert.rejects(allocateLayer(layer(6, 4), 2), /smallest schemes need 2\.500/);
  await assert.rejects(allocateLayer(layer(6, 4), 4, { r: 2 }), RangeError);
  await assert.rejects(allocateLayer([], 4), RangeError);
});

/** The layer of `layer` with blocks alternating between two grouped kernels and five candidates each. */
function kernelLayer(seed: number, n: number): Block[] {
  const r = rng(seed);
  return layer(seed, n).map((b, i) => ({
    ...b,
    kernel: i % 2 === 0 ? "gate_up" : "down",
    candidates: [
      ...b.candidates.map((c) => ({ ...c, path: c.scheme.slice(0, 2) })),
      { scheme: "w3g64", bits: 3.5, loss: b.candidates[1].loss * (2 + r() * 2), cost: 0.5, path: "w3" },
      // Same bits as w4g64 and the same code path: a cap on paths does not count it apart.
      { scheme: "w4g32", bits: 5, loss: b.candidates[1].loss * (0.5 + r() * 0.6), cost: 0.7, path: "w4" },
    ],
  }));
}

function bruteForcePaths(blocks: Block[], budget: number, maxPaths: number): number {
  const total = blocks.reduce((a, b) => a + b.size, 0);
  let best = Infinity;
  const pick: number[] = [];
  const rec = (i: number, bits: number, loss: number) => {
    if (bits > budget * total + 1e-9) return;
    if (i === blocks.length) {
      const paths = new Map<string, Set<string>>();
      blocks.forEach((b, k) => {
        const set = paths.get(b.kernel!) ?? new Set();
        set.add(b.candidates[pick[k]].path!);
        paths.set(b.kernel!, set);
      });
      if ([...paths.values()].every((s) => s.size <= maxPaths)) best = Math.min(best, loss);
      return;
    }
    blocks[i].candidates.forEach((c, j) => {
      pick[i] = j;
      rec(i + 1, bits + c.bits * blocks[i].size, loss + c.loss);
    });
  };
  rec(0, 0, 0);
  return best;
}

Deno.test("allocateLayer with maxPaths: at most that many code paths per kernel, exact with HiGHS", async () => {
  let binding = 0;
  for (
    const [seed, budget, maxPaths] of [[11, 4.5, 1], [12, 3.5, 2], [13, 5, 2], [14, 3, 1], [
      16,
      4,
      2,
    ]] as const
  ) {
    const blocks = kernelLayer(seed, 8);
    const free = await allocateLayer(blocks, budget, { r: 1 });
    const a = await allocateLayer(blocks, budget, { r: 1, maxPaths });
    assert.equal(a.solver, "highs");
    assert.ok(a.averageBits <= budget + 1e-9);
    for (const [kernel, paths] of a.paths) {
      assert.ok(paths.length <= maxPaths, `seed ${seed} ${kernel}: ${paths.join(", ")}`);
    }
    const exact = bruteForcePaths(blocks, budget, maxPaths);
    assert.ok(Math.abs(a.loss - exact) < 1e-9, `seed ${seed}: ${a.loss} vs ${exact}`);
    // The cap can only cost accuracy; without it the solver is free to use more paths.
    assert.ok(free.loss <= a.loss + 1e-12);
    if ([...free.paths.values()].some((p) => p.length > maxPaths)) binding++;
    for (const solver of ["greedy"] as const) {
      for (const r of [0.5, 1]) {
        const g = await allocateLayer(blocks, budget, { r, solver, maxPaths });
        assert.ok(g.averageBits <= budget + 1e-9, `greedy r ${r}: ${g.averageBits}`);
        for (const paths of g.paths.values()) assert.ok(paths.length <= maxPaths);
      }
    }
  }
  // In most cases the uncapped allocation mixes more paths than the cap allows (the cap is what limits it).
  assert.ok(binding >= 3, `the cap binds in ${binding} of 5 cases`);
});

Deno.test("allocateLayer refuses a cap on code paths that is not a whole number of at least 1", async () => {
  await assert.rejects(allocateLayer(kernelLayer(15, 4), 4, { maxPaths: 0 }), /maxPaths/);
  await assert.rejects(allocateLayer(kernelLayer(15, 4), 4, { maxPaths: 1.5 }), RangeError);
});

/** Per kernel, the code paths any of `layers` uses. */
function modelPaths(layers: Allocation[]): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const a of layers) {
    for (const [k, ps] of a.paths) for (const p of ps) out.set(k, (out.get(k) ?? new Set()).add(p));
  }
  return out;
}

/** The objective allocateLayer minimises, summed over layers. */
function modelScore(layers: Allocation[], r: number): number {
  return layers.reduce((a, l) => a + r * Math.log(l.loss) + (1 - r) * Math.log(l.cost), 0);
}

Deno.test("allocateModel caps the code paths per kernel across layers and picks the best shared paths", async () => {
  const r = 0.75;
  let binding = 0;
  for (
    const [seeds, budget, maxPaths] of [[[21, 22, 23], 4, 2], [[24, 25], 3.5, 1], [
      [26, 27, 28],
      4.5,
      2,
    ]] as const
  ) {
    const layers = seeds.map((s) => kernelLayer(s, 8));
    const alone = await Promise.all(layers.map((b) => allocateLayer(b, budget, { r, maxPaths })));
    const all = await allocateModel(layers, budget, { r, maxPaths });
    assert.equal(all.length, layers.length);
    for (const a of all) assert.ok(a.averageBits <= budget + 1e-9, `${a.averageBits} > ${budget}`);
    for (const [k, ps] of modelPaths(all)) assert.ok(ps.size <= maxPaths, `${k}: ${[...ps].join(", ")}`);
    const used = modelPaths(alone);
    if ([...used.values()].some((ps) => ps.size > maxPaths)) binding++;
    // No other choice of maxPaths paths per kernel among those the layers use alone does better.
    const kernels = [...used.keys()];
    const choices = (k: string) => {
      const ps = [...used.get(k)!];
      const n = Math.min(maxPaths, ps.length);
      return n === 1 ? ps.map((p) => [p]) : ps.flatMap((p, i) => ps.slice(i + 1).map((q) => [p, q]));
    };
    for (const gu of choices(kernels[0])) {
      for (const dn of choices(kernels[1])) {
        const keep = new Map([[kernels[0], new Set(gu)], [kernels[1], new Set(dn)]]);
        const restricted = layers.map((bs) =>
          bs.map((b) => ({ ...b, candidates: b.candidates.filter((c) => keep.get(b.kernel!)!.has(c.path!)) }))
        );
        if (restricted.some((bs) => bs.some((b) => b.candidates.length === 0))) continue;
        try {
          const other = await Promise.all(restricted.map((bs) => allocateLayer(bs, budget, { r })));
          assert.ok(modelScore(all, r) <= modelScore(other, r) + 1e-9, `${gu} / ${dn} scores better`);
        } catch (e) {
          if (!(e instanceof RangeError)) throw e;
        }
      }
    }
    // Layers that already agree keep their own allocations.
    const same = await allocateModel([layers[0], layers[0]], budget, { r, maxPaths });
    assert.deepEqual([...same[0].choice], [...alone[0].choice]);
  }
  assert.ok(binding >= 2, `the layers alone exceed the cap together in ${binding} of 3 cases`);
  // Without a cap: each layer alone.
  const free = await allocateModel([kernelLayer(29, 6)], 4, { r });
  assert.deepEqual([...free[0].choice], [...(await allocateLayer(kernelLayer(29, 6), 4, { r })).choice]);
});
