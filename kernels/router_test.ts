import assert from "node:assert/strict";
import type { RouterMode } from "../engine/config.ts";
import { matmulRef } from "./cpu/matmul.ts";
import { routeRef } from "./cpu/router.ts";
import { grid2d, readBuffer } from "./gpu.ts";
import { GEMV_SHAPE, gemvProgram } from "./linear.ts";
import { topKProgram } from "./router.ts";
import { buf, randomArray, rng, runAndRead, SKIP_GPU, testGpu } from "./test_util.ts";

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

Deno.test({
  name: "router (logits mat-vec + topK kernel) matches routeRef: ids, weights and the shared-expert gate",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const r = rng(31);
    for (const c of cases) {
      const ne = c.E + (c.shared ? 1 : 0);
      const x = randomArray(r, c.rows * c.H), w = randomArray(r, ne * c.H);
      const lin = await gemvProgram(device, ring, {
        label: "router",
        n: ne,
        k: c.H,
        dtype: "f32",
        bias: false,
        mode: "store",
        alpha: 1,
      });
      const top = await topKProgram(device, ring, {
        experts: c.E,
        topK: c.k,
        mode: c.mode,
        normalize: c.normalize,
        sharedGate: c.shared,
      });
      const lb = buf(device, "logits", new Float32Array(c.rows * ne));
      const ib = buf(device, "ids", new Uint32Array(c.rows * c.k)),
        wb = buf(device, "w", new Float32Array(c.rows * c.k));
      const sb = buf(device, "sg", new Float32Array(c.rows));
      const cb = buf(device, "counts", new Uint32Array(c.E).fill(5));
      await runAndRead(
        device,
        ring,
        [
          {
            program: lin,
            group: lin.bind("lin", [buf(device, "x", x), buf(device, "wr", w), lb]),
            grid: grid2d(Math.ceil(ne / GEMV_SHAPE.outs)),
          },
          { program: top, group: top.bind("top", [lb, ib, wb, sb, cb]), grid: [c.rows, 1, 1] },
        ],
        { rows: c.rows },
        ib,
        4,
      );
      const ids = new Uint32Array(await readBuffer(device, ib, 0, c.rows * c.k * 4));
      const wts = new Float32Array(await readBuffer(device, wb, 0, c.rows * c.k * 4));
      const all = matmulRef(x, w, c.rows, ne, c.H);
      const logits = new Float32Array(c.rows * c.E);
      for (let t = 0; t < c.rows; t++) logits.set(all.subarray(t * ne, t * ne + c.E), t * c.E);
      const ref = routeRef(logits, c.rows, c.E, c.k, c.mode, c.normalize);
      assert.deepEqual(Array.from(ids), Array.from(ref.ids), JSON.stringify(c));
      // The counters add each row's kept experts to what they held (5 here).
      const counts = new Uint32Array(await readBuffer(device, cb, 0, c.E * 4));
      const want = new Array(c.E).fill(5);
      for (const e of ref.ids) want[e]++;
      assert.deepEqual(Array.from(counts), want, `${JSON.stringify(c)} counts`);
      for (let i = 0; i < wts.length; i++) {
        assert.ok(Math.abs(wts[i] - ref.weights[i]) < 1e-5, `${JSON.stringify(c)} weight ${i}`);
      }
      if (c.shared) {
        const sg = new Float32Array(await readBuffer(device, sb, 0, c.rows * 4));
        for (let t = 0; t < c.rows; t++) {
          assert.ok(Math.abs(sg[t] - 1 / (1 + Math.exp(-all[t * ne + c.E]))) < 1e-5);
        }
      }
    }
  },
});

Deno.test({
  name: "router topK kernel keeps the lower expert id on ties",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const top = await topKProgram(device, ring, {
      experts: 6,
      topK: 3,
      mode: "softmax_topk",
      normalize: true,
      sharedGate: false,
    });
    const ib = buf(device, "ids", new Uint32Array(3));
    const got = new Uint32Array(
      await runAndRead(
        device,
        ring,
        [{
          program: top,
          group: top.bind("top", [
            buf(device, "l", new Float32Array([1, 5, 2, 5, 2, 0])),
            ib,
            buf(device, "w", new Float32Array(3)),
            buf(device, "s", new Float32Array(1)),
            buf(device, "c", new Uint32Array(6)),
          ]),
          grid: [1, 1, 1],
        }],
        { rows: 1 },
        ib,
        12,
      ),
    );
    assert.deepEqual(Array.from(got), [1, 3, 2]);
  },
});
