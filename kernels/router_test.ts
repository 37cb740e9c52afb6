import assert from "node:assert/strict";
import type { RouterMode } from "../engine/config.ts";
import { matmulRef } from "./cpu/matmul.ts";
import { routeRef } from "./cpu/router.ts";
import { readBuffer } from "./gpu.ts";
import { routerProgram } from "./router.ts";
import { buf, randomArray, rng, roundF16, runAndRead, SKIP_GPU, testGpu, weightData } from "./test_util.ts";

const cases: {
  E: number;
  H: number;
  k: number;
  mode: RouterMode;
  normalize: boolean;
  shared: boolean;
  rows: number;
}[] = [
  { E: 8, H: 64, k: 2, mode: "softmax_topk", normalize: true, shared: false, rows: 3 },
  { E: 6, H: 32, k: 3, mode: "softmax_topk", normalize: false, shared: true, rows: 2 },
  { E: 64, H: 128, k: 8, mode: "softmax_topk", normalize: false, shared: false, rows: 2 },
  { E: 6, H: 64, k: 2, mode: "topk_softmax", normalize: true, shared: false, rows: 4 },
  { E: 300, H: 16, k: 4, mode: "softmax_topk", normalize: true, shared: true, rows: 1 },
];

for (const dtype of ["f32", "f16"] as const) {
  Deno.test({
    name: `router (${dtype}) matches routeRef: ids, weights and the shared-expert gate`,
    ignore: SKIP_GPU,
    fn: async () => {
      const { device, ring } = await testGpu();
      const r = rng(31);
      for (const c of cases) {
        const x = randomArray(r, c.rows * c.H), w = randomArray(r, c.E * c.H), g = randomArray(r, c.H);
        const prog = await routerProgram(device, ring, {
          experts: c.E,
          hidden: c.H,
          topK: c.k,
          mode: c.mode,
          normalize: c.normalize,
          sharedGate: c.shared,
          dtype,
        });
        const ib = buf(device, "ids", new Uint32Array(c.rows * c.k)),
          wb = buf(device, "w", new Float32Array(c.rows * c.k));
        const sb = buf(device, "sg", new Float32Array(c.rows));
        const group = prog.bind("t", [
          buf(device, "x", x),
          buf(device, "wr", weightData(w, dtype)),
          buf(device, "g", weightData(g, dtype)),
          ib,
          wb,
          sb,
        ]);
        await runAndRead(
          device,
          ring,
          [{ program: prog, group, grid: [c.rows, 1, 1] }],
          { rows: c.rows },
          ib,
          4,
        );
        const ids = new Uint32Array(await readBuffer(device, ib, 0, c.rows * c.k * 4));
        const wts = new Float32Array(await readBuffer(device, wb, 0, c.rows * c.k * 4));
        const round = (a: Float32Array) => (dtype === "f16" ? roundF16(a) : a);
        const logits = matmulRef(x, round(w), c.rows, c.E, c.H);
        const ref = routeRef(logits, c.rows, c.E, c.k, c.mode, c.normalize);
        assert.deepEqual(Array.from(ids), Array.from(ref.ids), JSON.stringify(c));
        for (let i = 0; i < wts.length; i++) {
          assert.ok(Math.abs(wts[i] - ref.weights[i]) < 1e-5, `${JSON.stringify(c)} weight ${i}`);
        }
        if (c.shared) {
          const sg = new Float32Array(await readBuffer(device, sb, 0, c.rows * 4));
          const gl = matmulRef(x, round(g), c.rows, 1, c.H);
          for (let i = 0; i < c.rows; i++) assert.ok(Math.abs(sg[i] - 1 / (1 + Math.exp(-gl[i]))) < 1e-5);
        }
      }
    },
  });
}
