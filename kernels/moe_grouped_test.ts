import assert from "node:assert/strict";
import { expertsRef } from "./cpu/experts.ts";
import { readBuffer } from "./gpu.ts";
import { groupedGemmProgram, maxTiles, moeCombineProgram, moeSortProgram, TILE_COLS } from "./moe_grouped.ts";
import {
  buf,
  randomArray,
  relError,
  rng,
  roundF16,
  runAndRead,
  SKIP_GPU,
  testGpu,
  weightData,
} from "./test_util.ts";

for (const dtype of ["f32", "f16"] as const) {
  Deno.test({
    name: `grouped MoE (sort, gate/up, down, combine; ${dtype}) matches expertsRef`,
    ignore: SKIP_GPU,
    fn: async () => {
      const { device, ring } = await testGpu();
      const r = rng(61);
      // 70 rows × 3 experts each over 5 experts: expert 0 gets > 32 pairs (several tiles), expert 4 none.
      const E = 5, H = 48, I = 40, k = 3, rows = 70;
      const x = randomArray(r, rows * H), x0 = randomArray(r, rows * H);
      const gu = randomArray(r, E * 2 * I * H), dn = randomArray(r, E * H * I);
      const ids = new Int32Array(rows * k);
      for (let t = 0; t < rows; t++) {
        const pick = [0, 1 + (t % 3), [1, 2, 3].filter((e) => e !== 1 + (t % 3))[t % 2]];
        for (let j = 0; j < k; j++) ids[t * k + j] = pick[j];
      }
      const wts = randomArray(r, rows * k, 0, 1);
      const pairs = rows * k, tiles = maxTiles(pairs, E);
      const idb = buf(device, "ids", new Uint32Array(ids));
      const perm = buf(device, "perm", new Uint32Array(pairs));
      const tb = buf(device, "tiles", new Uint32Array(tiles * 4));
      const nt = buf(device, "ntiles", new Uint32Array(4));
      const gub = buf(device, "gu", new Float32Array(pairs * 2 * I));
      const yb = buf(device, "y", new Float32Array(pairs * H));
      const xb = buf(device, "x", x0);
      const sort = await moeSortProgram(device, ring, { experts: E, topK: k });
      const g1 = await groupedGemmProgram(device, ring, {
        kind: "gate_up",
        hidden: H,
        inter: I,
        topK: k,
        dtype,
      });
      const g2 = await groupedGemmProgram(device, ring, {
        kind: "down",
        hidden: H,
        inter: I,
        topK: k,
        dtype,
      });
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
                buf(device, "w1", weightData(gu, dtype)),
                perm,
                tb,
                nt,
                gub,
              ]),
              grid: [Math.ceil(2 * I / TILE_COLS), tiles, 1],
            },
            {
              program: g2,
              group: g2.bind("g2", [gub, buf(device, "w2", weightData(dn, dtype)), perm, tb, nt, yb]),
              grid: [Math.ceil(H / TILE_COLS), tiles, 1],
            },
            { program: comb, group: comb.bind("c", [yb, buf(device, "wts", wts), xb]), grid: [1, rows, 1] },
          ],
          { rows },
          xb,
          rows * H * 4,
        ),
      );
      const n = new Uint32Array(await readBuffer(device, nt, 0, 4))[0];
      const counts = new Array(E).fill(0);
      for (const e of ids) counts[e]++;
      assert.equal(counts[0], 70);
      assert.equal(counts[4], 0);
      assert.equal(n, counts.reduce((a, c) => a + Math.ceil(c / 32), 0));
      const round = (a: Float32Array) => (dtype === "f16" ? roundF16(a) : a);
      const out = new Float32Array(rows * H);
      expertsRef(x, rows, ids, wts, k, round(gu), round(dn), H, I, out);
      const ref = x0.map((v, i) => v + 0.5 * out[i]);
      const err = relError(got, ref);
      assert.ok(err < 1e-5, `${dtype}: ${err}`);
    },
  });
}
