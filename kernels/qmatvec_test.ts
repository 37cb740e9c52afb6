import assert from "node:assert/strict";
import { int8ActivationsRef } from "./cpu/act_quant.ts";
import { expertsRef, gateUpRef } from "./cpu/experts.ts";
import { matmulRef } from "./cpu/matmul.ts";
import { rmsNormRef } from "./cpu/rms_norm.ts";
import { grid2d } from "./gpu.ts";
import {
  buildQuantSet,
  int8Staged,
  QDOWN_SHAPE,
  qDownProgram,
  qDownWgsl,
  QGATEUP_SHAPE,
  qGateUpProgram,
  QGEMV_SHAPE,
  qgemvProgram,
  qNormFusable,
  qStagingPlan,
  schemeSet,
  WIDE_QGEMV_SHAPE,
} from "./qmatvec.ts";
import type { MatvecShape } from "./wgsl.ts";
import {
  buf,
  int8SafeInputs,
  makeQuantExperts,
  makeQuantMatrix,
  quantSetBuffers,
  randomArray,
  relError,
  rng,
  runAndRead,
  runProgram,
  SKIP_GPU,
  testGpu,
  type TestScheme,
} from "./test_util.ts";

Deno.test({
  name: "qgemv matches matmulRef on dequantized weights for 2, 3, 4, 8 bits and f16",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const r = rng(71);
    for (
      const s of [
        [2, 64],
        [2, 24],
        [3, 128],
        [3, 256],
        [3, 64],
        [3, 32],
        [3, 24],
        [4, 128],
        [8, 64],
        [4, 32],
        "f16",
      ] as TestScheme[]
    ) {
      // [rows, n, k], shape, matrix at an unaligned word offset, kernel given the set's schemes.
      type Run = [number[], MatvecShape, boolean, boolean];
      const runs: Run[] = [
        ...[[1, 37, 128], [3, 64, 256], [2, 128, 64], [2, 40, 96]].map((
          c,
        ): Run => [c, QGEMV_SHAPE, false, true]),
        // Other shapes (as a benchmark may pick), sizes at run time, and a matrix at a word offset that is not
        // 16-byte aligned.
        [[2, 40, 128], { tpo: 8, outs: 32 }, false, true],
        [[2, 50, 128], WIDE_QGEMV_SHAPE, false, true],
        // Long rows for a small team: four or more chunks per thread (the dot products' unrolled loads).
        [[2, 24, 1024], { tpo: 4, outs: 16 }, false, true],
        // Int8 activations and integer dot products (f16 and rows read word by word: f32).
        [[3, 64, 256], { ...QGEMV_SHAPE, int8: true }, false, true],
        [[2, 40, 96], { ...QGEMV_SHAPE, int8: true }, false, true],
        [[2, 24, 1024], { tpo: 4, outs: 16, int8: true }, false, true],
        [[2, 21, 128], { ...QGEMV_SHAPE, int8: true }, true, true],
        [[1, 33, 256], { tpo: 32, outs: 2 }, false, false],
        [[3, 24, 64], QGEMV_SHAPE, false, false],
        [[2, 21, 128], QGEMV_SHAPE, true, true],
      ];
      for (const [[rows, n, k], shape, shifted, withSchemes] of runs) {
        if (s !== "f16" && k % s[1] !== 0) continue;
        const { m, w } = makeQuantMatrix(r, n, k, s);
        // Shifted: a 3-word f16 matrix first, and the meta entry of the one under test alone.
        const set = shifted
          ? buildQuantSet([{ rows: 3, cols: 2, f16: new Uint16Array(6) }, m])
          : buildQuantSet([m]);
        if (shifted) set.meta = set.meta.slice(4, 8);
        const x = int8SafeInputs(randomArray(r, rows * k), k),
          b = randomArray(r, n),
          y0 = randomArray(r, rows * n);
        const prog = await qgemvProgram(device, ring, {
          n,
          k,
          mode: "add",
          bias: true,
          alpha: 0.5,
          schemes: withSchemes ? set.schemes : undefined,
        }, shape);
        const yb = buf(device, "y", y0);
        const group = prog.bind("t", [
          buf(device, "x", x),
          ...quantSetBuffers(device, "t", set),
          buf(device, "b", b),
          yb,
        ]);
        const got = new Float32Array(
          await runAndRead(
            device,
            ring,
            [{ program: prog, group, grid: grid2d(Math.ceil(n / shape.outs)) }],
            { rows },
            yb,
            rows * n * 4,
          ),
        );
        const sc = s === "f16" ? { bits: 16, group: k } : { bits: s[0], group: s[1] };
        // (A matrix not 16-byte aligned is read word by word, with f32 activations.)
        const q8 = shape.int8 === true && withSchemes && !shifted && int8Staged(sc, k);
        const xin = q8 ? int8ActivationsRef(x, k) : x;
        const ref = matmulRef(xin, w, rows, n, k, { bias: b }).map((v, i) => y0[i] + 0.5 * v);
        const err = relError(got, ref);
        assert.ok(
          err < 1e-5,
          `${JSON.stringify(s)} [${rows},${n},${k}] ${
            JSON.stringify(shape)
          } ${shifted} ${withSchemes}: ${err}`,
        );
      }
    }
  },
});

/**
 * The values of `h` (one row, blocks of 32) whose int8 level lies within 0.001 of a tie, with their block's
 * scale: [index, scale] pairs.
 */
function nearTies(h: Float32Array): [number, number][] {
  const out: [number, number][] = [];
  for (let b = 0; b < h.length; b += 32) {
    const end = Math.min(b + 32, h.length);
    let m = 0;
    for (let i = b; i < end; i++) m = Math.max(m, Math.abs(h[i]));
    const d = Math.fround(m / 127);
    if (d === 0) continue;
    for (let i = b; i < end; i++) {
      const v = h[i] / d;
      if (Math.abs(v - Math.floor(v) - 0.5) < 1e-3) out.push([i, d]);
    }
  }
  return out;
}

/**
 * Gate/up then down of `rows` tokens routed to k = 3 of the experts, expert e's matrices in `guSchemes[e]` and
 * `dnSchemes[e]`, against expertsRef for each config: [gate/up shape, down shape, kernels given the schemes,
 * staged activations].
 */
async function checkMixedExperts(
  seed: number,
  H: number,
  I: number,
  guSchemes: TestScheme[],
  dnSchemes: TestScheme[],
  configs: [MatvecShape, MatvecShape, boolean, boolean][],
): Promise<void> {
  const { device, ring } = await testGpu();
  const r = rng(seed);
  const k = 3, rows = 4;
  const E = guSchemes.length;
  const { guSet, dnSet, guRef, dnRef } = makeQuantExperts(r, H, I, guSchemes, dnSchemes);
  const x = int8SafeInputs(randomArray(r, rows * H), H), x0 = randomArray(r, rows * H);
  const wts = randomArray(r, rows * k, 0, 1);
  const ids = new Int32Array(rows * k);
  for (let t = 0; t < rows; t++) for (let j = 0; j < k; j++) ids[t * k + j] = (t + 2 * j) % E;
  const idb = buf(device, "ids", new Uint32Array(ids)),
    hb = buf(device, "h", new Float32Array(rows * k * I));
  let xb: GPUBuffer;
  for (const [gs, ds, withSchemes, staged] of configs) {
    xb = buf(device, "x", x0);
    const guP = { hidden: H, inter: I, topK: k, schemes: withSchemes ? guSet.schemes : undefined };
    const dnP = {
      hidden: H,
      inter: I,
      topK: k,
      alpha: 0.7,
      schemes: withSchemes ? dnSet.schemes : undefined,
    };
    const gp = await qGateUpProgram(device, ring, guP, gs, staged);
    const dp = await qDownProgram(device, ring, dnP, ds, staged);
    const got = new Float32Array(
      await runAndRead(
        device,
        ring,
        [
          {
            program: gp,
            group: gp.bind("gu", [
              buf(device, "xin", x),
              ...quantSetBuffers(device, "gu", guSet),
              idb,
              hb,
            ]),
            grid: [Math.ceil(I / gs.outs), rows * k, 1],
          },
          {
            program: dp,
            group: dp.bind("dn", [
              hb,
              ...quantSetBuffers(device, "dn", dnSet),
              idb,
              buf(device, "w", wts),
              xb,
            ]),
            grid: [Math.ceil(H / ds.outs), rows, 1],
          },
        ],
        { rows },
        xb,
        rows * H * 4,
      ),
    );
    const out = new Float32Array(rows * H);
    // Per output: how far a GPU may stray from the reference through down inputs whose int8 level is a near
    // tie (the gate/up's f32 sums differ from the CPU's in the last bits, a GPU's division by 2.5 ULP): the
    // other level's share.
    const slack = new Float64Array(rows * H);
    if (gs.int8 || ds.int8) {
      // Each expert's inputs rounded to int8 where its kernel reads them so.
      const q8 = (sc: TestScheme, kk: number, on: boolean | undefined) =>
        on === true && withSchemes && staged &&
        int8Staged(sc === "f16" ? { bits: 16, group: kk } : { bits: sc[0], group: sc[1] }, kk);
      const xq = int8ActivationsRef(x, H);
      for (let t = 0; t < rows; t++) {
        for (let j = 0; j < k; j++) {
          const e = ids[t * k + j];
          const xin = (q8(guSchemes[e], H, gs.int8) ? xq : x).subarray(t * H, (t + 1) * H);
          const h64 = gateUpRef(xin, 1, [e], 1, guRef, H, I);
          const rounded = q8(dnSchemes[e], I, ds.int8);
          const h = rounded ? int8ActivationsRef(new Float32Array(h64), I) : h64;
          const ties = rounded ? nearTies(new Float32Array(h64)) : [];
          for (let c = 0; c < H; c++) {
            let acc = 0;
            for (let i = 0; i < I; i++) acc += h[i] * dnRef[(e * H + c) * I + i];
            out[t * H + c] += wts[t * k + j] * acc;
            for (const [i, d] of ties) {
              slack[t * H + c] += 0.7 * wts[t * k + j] * Math.abs(dnRef[(e * H + c) * I + i]) * d;
            }
          }
        }
      }
    } else expertsRef(x, rows, ids, wts, k, guRef, dnRef, H, I, out);
    const ref = x0.map((v, i) => v + 0.7 * out[i]);
    // Within each output's slack the result may be either level's.
    const near = got.map((g, i) =>
      Math.abs(g - ref[i]) <= slack[i] ? ref[i] : g - Math.sign(g - ref[i]) * slack[i]
    );
    const err = relError(near, ref);
    assert.ok(
      err < 1e-5,
      `mixed experts ${JSON.stringify([gs, ds, withSchemes, staged])}: ${err}`,
    );
  }
}

Deno.test({
  name: "quantized gate/up and down with a different scheme per expert match expertsRef",
  ignore: SKIP_GPU,
  fn: async () => {
    const schemes: TestScheme[] = [[2, 64], [3, 64], [4, 128], [8, 64], "f16"];
    // With schemes the down projection stages its inputs; its default shape and the fourth sum the experts in
    // two teams, the second in four, the third in eight (a team per expert); the last reads them unstaged.
    const configs: [MatvecShape, MatvecShape, boolean, boolean][] = [
      [QGATEUP_SHAPE, QDOWN_SHAPE, true, true],
      [{ tpo: 16, outs: 16 }, { tpo: 32, outs: 8, split: 4 }, false, true],
      [QGATEUP_SHAPE, { tpo: 16, outs: 16, split: 8 }, true, true],
      [{ tpo: 8, outs: 32 }, { tpo: 4, outs: 16 }, true, true],
      [QGATEUP_SHAPE, { tpo: 8, outs: 8, split: 2 }, true, true],
      [QGATEUP_SHAPE, QDOWN_SHAPE, true, false],
      // Int8 activations: the f16 expert keeps f32 ones, beside the others' int8.
      [{ ...QGATEUP_SHAPE, int8: true }, { ...QDOWN_SHAPE, int8: true }, true, true],
      [{ tpo: 8, outs: 32, int8: true }, { tpo: 4, outs: 16, int8: true }, true, true],
      [{ ...QGATEUP_SHAPE, int8: true }, { ...QDOWN_SHAPE, int8: true }, true, false],
    ];
    await checkMixedExperts(
      72,
      128,
      64,
      schemes,
      schemes.map((s) => s === "f16" ? s : [s[0], Math.min(s[1], 64)]),
      configs,
    );
  },
});

Deno.test({
  name: "experts of several code paths with four or more chunks per thread match expertsRef",
  ignore: SKIP_GPU,
  fn: async () => {
    // Long rows for small teams (gate/up: 8 chunks per thread at 4 bits, 4 at 2; down: 4 at 4 bits, 8 at 8),
    // unrolled whole and (with a step) in loops of 2 or 4 chunks per pass, staged and not.
    const gu: TestScheme[] = [[4, 128], [2, 128], [4, 64]];
    const dn: TestScheme[] = [[4, 64], [2, 64], [8, 128]];
    await checkMixedExperts(76, 1024, 512, gu, dn, [
      [{ tpo: 4, outs: 16 }, { tpo: 8, outs: 8, split: 2 }, true, true],
      [{ tpo: 4, outs: 16, step: 2 }, { tpo: 8, outs: 8, split: 2, step: 2 }, true, true],
      [{ tpo: 4, outs: 16, step: 4 }, { tpo: 8, outs: 8, split: 2, step: 4 }, true, false],
      [{ tpo: 4, outs: 16, int8: true }, { tpo: 8, outs: 8, split: 2, int8: true }, true, true],
      [
        { tpo: 4, outs: 16, step: 2, int8: true },
        { tpo: 8, outs: 8, split: 2, step: 4, int8: true },
        true,
        true,
      ],
    ]);
    for (const step of [-1, 1.5]) {
      const p = { hidden: 64, inter: 64, topK: 2, alpha: 1 };
      assert.throws(() => qDownWgsl(p, { tpo: 8, outs: 8, split: 2, step }), RangeError);
    }
  },
});

Deno.test({
  name: "an MxMoE-like allocation (groups of 96; 2, 3, 4 and 8 bits) matches expertsRef",
  ignore: SKIP_GPU,
  fn: async () => {
    // Schemes like the default reader's MxMoE 3.25 allocation: w2g96 and w3g96 are read word by word, the
    // others in chunks.
    const gu: TestScheme[] = [[2, 128], [4, 128], [4, 64], [3, 128], [2, 64]];
    const dn: TestScheme[] = [[4, 96], [8, 96], [2, 96], [3, 96], [4, 64]];
    await checkMixedExperts(74, 128, 192, gu, dn, [
      [QGATEUP_SHAPE, QDOWN_SHAPE, true, true],
      [QGATEUP_SHAPE, QDOWN_SHAPE, true, false],
      [{ ...QGATEUP_SHAPE, int8: true }, { ...QDOWN_SHAPE, int8: true }, true, true],
    ]);
  },
});

Deno.test({
  name: "3-bit experts read in 128-value chunks (groups of 128, 64 and 32) match expertsRef",
  ignore: SKIP_GPU,
  fn: async () => {
    // Rows of whole 128-value chunks: every 3-bit scheme here is read in chunks of three 16-byte vectors (one
    // block, or two or four groups), staged and not; without the schemes, by the generic path.
    const gu: TestScheme[] = [[3, 128], [3, 64], [3, 32], [4, 128]];
    const dn: TestScheme[] = [[3, 128], [3, 64], [3, 32], [2, 64]];
    await checkMixedExperts(75, 256, 128, gu, dn, [
      [QGATEUP_SHAPE, QDOWN_SHAPE, true, true],
      [{ ...QGATEUP_SHAPE, int8: true }, { ...QDOWN_SHAPE, int8: true }, true, true],
      [{ tpo: 8, outs: 32 }, { tpo: 4, outs: 16 }, true, true],
      [QGATEUP_SHAPE, QDOWN_SHAPE, true, false],
      [QGATEUP_SHAPE, QDOWN_SHAPE, false, true],
    ]);
  },
});

Deno.test({
  name:
    "qgemv and quantized gate/up with the RMSNorm fused in match rmsNormRef then the dequantized products",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const r = rng(73);
    const H = 128, I = 40, k = 2, rows = 3, n = 50;
    // Every scheme read in chunks (the fused kernels' requirement), one per expert.
    const schemes: TestScheme[] = [[2, 64], [4, 128], [8, 64], [3, 64], "f16"];
    const E = schemes.length;
    // Inputs far from unit scale: the norm must really be applied.
    const x = randomArray(r, rows * H, -6, 6), g = randomArray(r, H, 0.5, 1.5);
    const xn = rmsNormRef(x, g, 1e-5, rows, H);
    // x, then a weight set's three buffers.
    const setBuffers = (set: { qw: Uint32Array; qp: Uint32Array; meta: Uint32Array }) => [
      buf(device, "x", x),
      buf(device, "qw", set.qw),
      buf(device, "qp", set.qp),
      buf(device, "meta", set.meta),
    ];
    // Int8 activations: those of the normed input, for every scheme but f16.
    const xq = int8ActivationsRef(xn, H);
    const q8 = (shape: MatvecShape, s: TestScheme) => shape.int8 === true && s !== "f16";
    const shapes: MatvecShape[] = [QGEMV_SHAPE, WIDE_QGEMV_SHAPE, { tpo: 4, outs: 8 }, {
      ...QGEMV_SHAPE,
      int8: true,
    }];
    for (const shape of shapes) {
      // qgemv (w4g128, w3g128 and f16 sets), bias and residual add.
      for (const s of [[4, 128], [3, 128], "f16"] as TestScheme[]) {
        const { m, w } = makeQuantMatrix(r, n, H, s);
        const set = buildQuantSet([m]);
        assert.ok(qNormFusable(device, set, H, shape));
        const b = randomArray(r, n), y0 = randomArray(r, rows * n);
        const prog = await qgemvProgram(device, ring, {
          n,
          k: H,
          mode: "add",
          bias: true,
          alpha: 0.5,
          schemes: set.schemes,
          normEps: 1e-5,
        }, shape);
        const yb = buf(device, "y", y0);
        const got = await runProgram(
          device,
          ring,
          prog,
          [...setBuffers(set), buf(device, "b", b), yb, buf(device, "g", g)],
          grid2d(Math.ceil(n / shape.outs)),
          rows,
          yb,
          rows * n,
        );
        const ref = matmulRef(q8(shape, s) ? xq : xn, w, rows, n, H, { bias: b }).map((v, i) =>
          y0[i] + 0.5 * v
        );
        const err = relError(got, ref);
        assert.ok(err < 1e-5, `fused qgemv ${JSON.stringify(s)} ${JSON.stringify(shape)}: ${err}`);
      }
      // Gate/up with a different scheme per expert.
      const gu = schemes.map((s) => makeQuantMatrix(r, 2 * I, H, s));
      const set = buildQuantSet(gu.map((q) => q.m));
      assert.ok(qNormFusable(device, set, H, shape));
      const ids = new Uint32Array(rows * k).map((_, i) => (i + 1) % E);
      const hb = buf(device, "h", new Float32Array(rows * k * I));
      const prog = await qGateUpProgram(device, ring, {
        hidden: H,
        inter: I,
        topK: k,
        schemes: set.schemes,
        normEps: 1e-5,
      }, shape);
      const got = await runProgram(
        device,
        ring,
        prog,
        [...setBuffers(set), buf(device, "ids", ids), hb, buf(device, "g", g)],
        [Math.ceil(I / shape.outs), rows * k, 1],
        rows,
        hb,
        rows * k * I,
      );
      const guRef = new Float32Array(E * 2 * I * H);
      gu.forEach((q, e) => guRef.set(q.w, e * 2 * I * H));
      const ref = gateUpRef(xn, rows, ids, k, guRef, H, I);
      const refQ = gateUpRef(xq, rows, ids, k, guRef, H, I);
      for (let slot = 0; slot < rows * k; slot++) {
        if (!q8(shape, schemes[ids[slot]])) continue;
        ref.set(refQ.subarray(slot * I, (slot + 1) * I), slot * I);
      }
      const err = relError(got, ref);
      assert.ok(err < 1e-5, `fused quantized gate/up ${JSON.stringify(shape)}: ${err}`);
    }
    // A matrix read word by word (3-bit groups of 32 in rows of 96 values, not whole 128-value chunks) is not
    // staged: no fused kernel for it.
    const three = buildQuantSet([makeQuantMatrix(r, n, 96, [3, 32]).m]);
    assert.equal(qNormFusable(device, three, 96, QGEMV_SHAPE), false);
    await assert.rejects(
      async () =>
        await qgemvProgram(device, ring, {
          n,
          k: 96,
          mode: "store",
          bias: false,
          alpha: 1,
          schemes: three.schemes,
          normEps: 1e-5,
        }),
      RangeError,
    );
  },
});

Deno.test("qStagingPlan: int8 where it fits, else f32 where that fits, else unstaged", () => {
  // The down projection at OLMoE's expert width: 8 rows of 1,024 values, 256 threads (2 KiB of reductions).
  const shape: MatvecShape = { ...QDOWN_SHAPE, int8: true };
  const w4 = { bits: 4, group: 128 }, f16 = { bits: 16, group: 1024 };
  // int8 levels and pairs: 8 · 1.5 KiB; with an f16 expert the f32 copy too (8 · 4 KiB).
  assert.deepEqual(qStagingPlan(16384, shape, 1024, 8, [w4]), { staged: true, shape });
  assert.deepEqual(qStagingPlan(49152, shape, 1024, 8, [w4, f16]), { staged: true, shape });
  assert.deepEqual(qStagingPlan(40960, shape, 1024, 8, [w4, f16]), {
    staged: true,
    shape: { ...shape, int8: false },
  });
  assert.equal(qStagingPlan(32768, shape, 1024, 8, [w4, f16]).staged, false);
  // f32 staging: 8 · 4 KiB.
  assert.equal(qStagingPlan(16384, { ...QDOWN_SHAPE, int8: false }, 1024, 8, [w4]).staged, false);
  assert.equal(qStagingPlan(65536, shape, 1024, 8, undefined).staged, false);
});

Deno.test("schemeSet: distinct schemes sorted by bits, then group, whatever order they come in", () => {
  const a = schemeSet([{ bits: 4, group: 128 }, { bits: 2, group: 64 }, { bits: 4, group: 64 }, {
    bits: 2,
    group: 64,
  }]);
  const b = schemeSet([{ bits: 2, group: 64 }, { bits: 4, group: 64 }, { bits: 4, group: 128 }]);
  assert.deepEqual(a, [{ bits: 2, group: 64 }, { bits: 4, group: 64 }, { bits: 4, group: 128 }]);
  assert.deepEqual(a, b);
  // A weight set lists its schemes the same way.
  const set = buildQuantSet([
    { rows: 1, cols: 4, f16: new Uint16Array(4) },
    {
      rows: 1,
      cols: 4,
      bits: 4,
      group: 4,
      qweight: new Uint32Array(1),
      scales: new Uint16Array(1),
      mins: new Uint16Array(1),
    },
  ]);
  assert.deepEqual(set.schemes, [{ bits: 4, group: 4 }, { bits: 16, group: 4 }]);
});
