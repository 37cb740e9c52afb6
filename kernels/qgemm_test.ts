import assert from "node:assert/strict";
import { expertsRef } from "./cpu/experts.ts";
import { matmulRef } from "./cpu/matmul.ts";
import { maxTiles, moeCombineProgram, moeSortProgram, TILE_COLS } from "./moe_grouped.ts";
import { QGEMM_BM, QGEMM_BN, qgemmProgram, qGroupedGemmProgram } from "./qgemm.ts";
import type { Program, StepRing } from "./gpu.ts";
import { buildQuantSet } from "./qmatvec.ts";
import {
  buf,
  makeQuantExperts,
  makeQuantMatrix,
  quantSetBuffers,
  randomArray,
  relError,
  rng,
  runAndRead,
  SKIP_GPU,
  testGpu,
  type TestScheme,
} from "./test_util.ts";

// Tolerance: f32 accumulation in a different order than the reference; 1e-5 relative (RMS) error.
Deno.test({
  name: "qgemm matches matmulRef on dequantized weights (2, 3, 4, 8 bits, f16; bias, add, α; ragged tiles)",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const r = rng(81);
    // One program per shape (the scheme is read from the meta table at run time); rows span one to three row
    // tiles. The second shape's 3-bit groups hold one, two or three 128-value blocks, the last one partial or not.
    const shapes: [number, number, [TestScheme, number][]][] = [
      [72, 96, [[[4, 32], 70], [[2, 16], 5], [[3, 48], 64], [[8, 96], 129], ["f16", 33]]],
      [40, 384, [[[3, 128], 20], [[3, 384], 7], [[3, 192], 66], [[3, 24], 3]]],
    ];
    for (const [n, k, cases] of shapes) {
      const prog = await qgemmProgram(device, ring, { n, k, mode: "add", bias: true, alpha: 0.5 });
      for (const [s, rows] of cases) await checkQgemm(device, ring, prog, r, n, k, s, rows);
    }
  },
});

/** Runs `prog` (qgemm, n × k, mode add, bias, α 0.5) on a random matrix in scheme `s` against matmulRef. */
async function checkQgemm(
  device: GPUDevice,
  ring: StepRing,
  prog: Program,
  r: ReturnType<typeof rng>,
  n: number,
  k: number,
  s: TestScheme,
  rows: number,
): Promise<void> {
  const { m, w } = makeQuantMatrix(r, n, k, s);
  const set = buildQuantSet([m]);
  const x = randomArray(r, rows * k), b = randomArray(r, n), y0 = randomArray(r, rows * n);
  const yb = buf(device, "y", y0);
  const group = prog.bind("t", [
    buf(device, "x", x),
    ...quantSetBuffers(device, "t", set),
    buf(device, "b", b),
    yb,
  ]);
  const grid: [number, number, number] = [Math.ceil(n / QGEMM_BN), Math.ceil(rows / QGEMM_BM), 1];
  const got = new Float32Array(
    await runAndRead(device, ring, [{ program: prog, group, grid }], { rows }, yb, rows * n * 4),
  );
  const ref = matmulRef(x, w, rows, n, k, { bias: b }).map((v, i) => y0[i] + 0.5 * v);
  const err = relError(got, ref);
  assert.ok(err < 1e-5, `${JSON.stringify(s)} [${n}, ${k}] rows ${rows}: ${err}`);
}

Deno.test({
  name: "quantized grouped MoE GEMMs run experts of different schemes in one dispatch and match expertsRef",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const r = rng(82);
    const H = 64, I = 48, k = 2, rows = 45;
    // Per expert: gate/up scheme (rows of H) and down scheme (rows of I); expert 5 gets no tokens.
    const guS: TestScheme[] = [[2, 32], [3, 64], [4, 32], [8, 64], "f16", [4, 64]];
    const dnS: TestScheme[] = [[2, 16], [3, 48], [4, 24], [8, 48], "f16", [4, 48]];
    const E = guS.length;
    const { guSet, dnSet, guRef, dnRef } = makeQuantExperts(r, H, I, guS, dnS);
    const x = randomArray(r, rows * H), x0 = randomArray(r, rows * H), wts = randomArray(r, rows * k, 0, 1);
    // Expert 0 takes every token (two tiles of 32), the others share the second slot.
    const ids = new Int32Array(rows * k);
    for (let t = 0; t < rows; t++) ids[t * k] = 0, ids[t * k + 1] = 1 + (t % 4);
    const pairs = rows * k, tiles = maxTiles(pairs, E);
    const idb = buf(device, "ids", new Uint32Array(ids));
    const perm = buf(device, "perm", new Uint32Array(pairs));
    const tb = buf(device, "tiles", new Uint32Array(tiles * 4));
    const nt = buf(device, "ntiles", new Uint32Array(4));
    const gub = buf(device, "gu", new Float32Array(pairs * 2 * I));
    const yb = buf(device, "y", new Float32Array(pairs * H));
    const xb = buf(device, "x", x0);
    const sort = await moeSortProgram(device, ring, { experts: E, topK: k });
    const g1 = await qGroupedGemmProgram(device, ring, { kind: "gate_up", hidden: H, inter: I, topK: k });
    const g2 = await qGroupedGemmProgram(device, ring, { kind: "down", hidden: H, inter: I, topK: k });
    const comb = await moeCombineProgram(device, ring, { hidden: H, topK: k, alpha: 0.5 });
    const got = new Float32Array(
      await runAndRead(
        device,
        ring,
        [
          { program: sort, group: sort.bind("s", [idb, perm, tb, nt]), grid: [1, 1, 1] },
          {
            program: g1,
            group: g1.bind("g1", [
              buf(device, "xin", x),
              ...quantSetBuffers(device, "gu", guSet),
              perm,
              tb,
              nt,
              gub,
            ]),
            grid: [Math.ceil(2 * I / TILE_COLS), tiles, 1],
          },
          {
            program: g2,
            group: g2.bind("g2", [gub, ...quantSetBuffers(device, "dn", dnSet), perm, tb, nt, yb]),
            grid: [Math.ceil(H / TILE_COLS), tiles, 1],
          },
          { program: comb, group: comb.bind("c", [yb, buf(device, "wts", wts), xb]), grid: [1, rows, 1] },
        ],
        { rows },
        xb,
        rows * H * 4,
      ),
    );
    const out = new Float32Array(rows * H);
    expertsRef(x, rows, ids, wts, k, guRef, dnRef, H, I, out);
    const ref = x0.map((v, i) => v + 0.5 * out[i]);
    const err = relError(got, ref);
    assert.ok(err < 1e-5, `mixed-scheme grouped MoE: ${err}`);
  },
});
