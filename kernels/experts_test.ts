import assert from "node:assert/strict";
import { expertsRef, gateUpRef } from "./cpu/experts.ts";
import { rmsNormRef } from "./cpu/rms_norm.ts";
import { DOWN_SHAPE, downProgram, GATEUP_SHAPE, gateUpProgram } from "./experts.ts";
import type { MatvecShape } from "./wgsl.ts";
import {
  buf,
  randomArray,
  relError,
  rng,
  roundF16,
  runAndRead,
  runProgram,
  SKIP_GPU,
  testGpu,
  weightData,
} from "./test_util.ts";

const cases = [
  { E: 4, H: 32, I: 48, k: 2, rows: 1, S: 0 },
  { E: 8, H: 64, I: 40, k: 3, rows: 3, S: 24 },
  { E: 1, H: 16, I: 200, k: 1, rows: 5, S: 0 },
];

// The default shapes and one other (as a benchmark may pick), with the first case.
const SHAPES: [MatvecShape, MatvecShape][] = [[GATEUP_SHAPE, DOWN_SHAPE], [{ tpo: 16, outs: 8 }, {
  tpo: 8,
  outs: 16,
  split: 2,
}]];

for (const dtype of ["f32", "f16"] as const) {
  Deno.test({
    name: `gateUp + down (${dtype}) match expertsRef with shared expert and residual add`,
    ignore: SKIP_GPU,
    fn: async () => {
      const { device, ring } = await testGpu();
      const r = rng(41);
      for (const [ci, c] of cases.entries()) {
        for (const [si, [gs, ds]] of SHAPES.entries()) {
          if (si > 0 && ci > 0) continue;
          const { E, H, I, k, rows, S } = c;
          const x = randomArray(r, rows * H), x0 = randomArray(r, rows * H);
          const gu = randomArray(r, E * 2 * I * H), dn = randomArray(r, E * H * I);
          const ids = new Int32Array(rows * k);
          for (let t = 0; t < rows; t++) {
            const perm = Array.from({ length: E }, (_, i) => i).sort(() => r() - 0.0);
            for (let j = 0; j < k; j++) ids[t * k + j] = perm[j];
          }
          const wts = randomArray(r, rows * k, 0, 1);
          const sgu = randomArray(r, 2 * S * H), sdn = randomArray(r, H * S), sg = randomArray(r, rows, 0, 1);
          const hb = buf(device, "h", new Float32Array(rows * k * I));
          const xb = buf(device, "x", x0);
          const idb = buf(device, "ids", new Uint32Array(ids));
          const xin = buf(device, "xin", x);
          const gp = await gateUpProgram(device, ring, { hidden: H, inter: I, topK: k, dtype }, gs);
          const dispatches = [{
            program: gp,
            group: gp.bind("gu", [xin, buf(device, "gu", weightData(gu, dtype)), idb, hb]),
            grid: [Math.ceil(I / gs.outs), rows * k, 1] as [number, number, number],
          }];
          const dp = await downProgram(device, ring, {
            hidden: H,
            inter: I,
            topK: k,
            shared: S,
            dtype,
            alpha: 0.7,
          }, ds);
          const dBufs = [hb, buf(device, "dn", weightData(dn, dtype)), idb, buf(device, "wts", wts), xb];
          if (S > 0) {
            const shb = buf(device, "sh", new Float32Array(rows * S));
            const sp = await gateUpProgram(device, ring, { hidden: H, inter: S, topK: 1, dtype }, gs);
            dispatches.push({
              program: sp,
              group: sp.bind("sgu", [
                xin,
                buf(device, "sgu", weightData(sgu, dtype)),
                buf(device, "zeros", new Uint32Array(rows)),
                shb,
              ]),
              grid: [Math.ceil(S / gs.outs), rows, 1],
            });
            dBufs.push(shb, buf(device, "sdn", weightData(sdn, dtype)), buf(device, "sg", sg));
          }
          dispatches.push({
            program: dp,
            group: dp.bind("dn", dBufs),
            grid: [Math.ceil(H / ds.outs), rows, 1],
          });
          const got = new Float32Array(
            await runAndRead(device, ring, dispatches, { rows }, xb, rows * H * 4),
          );
          const round = (a: Float32Array) => (dtype === "f16" ? roundF16(a) : a);
          const out = new Float32Array(rows * H);
          expertsRef(x, rows, ids, wts, k, round(gu), round(dn), H, I, out);
          if (S > 0) {
            const sh = new Float32Array(rows * H);
            expertsRef(
              x,
              rows,
              new Int32Array(rows),
              new Float32Array(rows).fill(1),
              1,
              round(sgu),
              round(sdn),
              H,
              S,
              sh,
            );
            for (let t = 0; t < rows; t++) {
              for (let i = 0; i < H; i++) out[t * H + i] += sg[t] * sh[t * H + i];
            }
          }
          const ref = x0.map((v, i) => v + 0.7 * out[i]);
          const err = relError(got, ref);
          assert.ok(err < 1e-5, `${dtype} ${JSON.stringify(c)}: ${err}`);
        }
      }
    },
  });
}

for (const dtype of ["f32", "f16"] as const) {
  Deno.test({
    name: `gateUp (${dtype}) with the RMSNorm fused in matches rmsNormRef then gateUpRef`,
    ignore: SKIP_GPU,
    fn: async () => {
      const { device, ring } = await testGpu();
      const r = rng(dtype === "f32" ? 43 : 44);
      for (
        const [c, shape] of [
          [{ E: 4, H: 64, I: 40, k: 2, rows: 3 }, GATEUP_SHAPE],
          [{ E: 1, H: 256, I: 24, k: 1, rows: 1 }, { tpo: 4, outs: 8 }],
        ] as const
      ) {
        const { E, H, I, k, rows } = c;
        // Inputs far from unit scale: the norm must really be applied.
        const x = randomArray(r, rows * H, -6, 6), g = randomArray(r, H, 0.5, 1.5);
        const gu = randomArray(r, E * 2 * I * H);
        const ids = new Uint32Array(rows * k).map((_, i) => (i * 3 + 1) % E);
        const hb = buf(device, "h", new Float32Array(rows * k * I));
        const gp = await gateUpProgram(
          device,
          ring,
          { hidden: H, inter: I, topK: k, dtype, normEps: 1e-5 },
          shape,
        );
        const got = await runProgram(
          device,
          ring,
          gp,
          [
            buf(device, "x", x),
            buf(device, "gu", weightData(gu, dtype)),
            buf(device, "ids", ids),
            hb,
            buf(device, "g", g),
          ],
          [Math.ceil(I / shape.outs), rows * k, 1],
          rows,
          hb,
          rows * k * I,
        );
        const w = dtype === "f16" ? roundF16(gu) : gu;
        const ref = gateUpRef(rmsNormRef(x, g, 1e-5, rows, H), rows, ids, k, w, H, I);
        const err = relError(got, ref);
        assert.ok(err < 1e-5, `fused gate-up ${dtype} ${JSON.stringify(c)}: relative error ${err}`);
      }
    },
  });
}
