import assert from "node:assert/strict";
import { matmulRef } from "./cpu/matmul.ts";
import { rmsNormRef } from "./cpu/rms_norm.ts";
import { embedProgram } from "./embed.ts";
import { grid2d } from "./gpu.ts";
import { gemmProgram, gemmWgsl, GEMV_SHAPE, gemvProgram, type LinearParams } from "./linear.ts";
import { rmsNormProgram } from "./rms_norm.ts";
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

const shapes: [number, number, number][] = [[1, 8, 16], [1, 37, 64], [3, 130, 96], [5, 64, 200], [
  70,
  65,
  48,
]];

for (const dtype of ["f32", "f16"] as const) {
  for (const kind of ["gemv", "gemm"] as const) {
    Deno.test({
      name: `${kind} (${dtype}) matches matmulRef with bias and residual add on random shapes`,
      ignore: SKIP_GPU,
      fn: async () => {
        const { device, ring } = await testGpu();
        const r = rng(kind === "gemv" ? 1 : 2);
        // The GEMM runs one shape per dtype: llvmpipe takes ~15 s to JIT each new GEMM pipeline.
        // The mat-vec also in another shape (as a benchmark may pick), on two of the shapes.
        const runs = kind === "gemv"
          ? [
            ...shapes.map((s) => [s, GEMV_SHAPE] as const),
            ...shapes.slice(1, 3).map((s) => [s, { tpo: 8, outs: 32 }] as const),
          ]
          : [[shapes[shapes.length - 1], GEMV_SHAPE] as const];
        for (const [[rows, n, k], shape] of runs) {
          if (dtype === "f16" && k % 8 !== 0) continue;
          const x = randomArray(r, rows * k);
          const w = randomArray(r, n * k);
          const b = randomArray(r, n);
          const y0 = randomArray(r, rows * n);
          const p: LinearParams = { label: "t", n, k, dtype, bias: true, mode: "add", alpha: 0.5 };
          const prog = kind === "gemv"
            ? await gemvProgram(device, ring, p, shape)
            : await gemmProgram(device, ring, p);
          const yb = buf(device, "y", y0);
          const group = prog.bind("t", [
            buf(device, "x", x),
            buf(device, "w", weightData(w, dtype)),
            buf(device, "b", b),
            yb,
          ]);
          const grid: [number, number, number] = kind === "gemv"
            ? grid2d(Math.ceil(n / shape.outs))
            : [Math.ceil(n / 64), Math.ceil(rows / 64), 1];
          const got = new Float32Array(
            await runAndRead(device, ring, [{ program: prog, group, grid }], { rows }, yb, rows * n * 4),
          );
          const wr = dtype === "f16" ? roundF16(w) : w;
          const ref = matmulRef(x, wr, rows, n, k, { bias: b });
          for (let i = 0; i < ref.length; i++) ref[i] = y0[i] + 0.5 * ref[i];
          const err = relError(got, ref);
          assert.ok(
            err < 1e-5,
            `${kind} ${dtype} [${rows},${n},${k}] ${JSON.stringify(shape)}: relative error ${err}`,
          );
        }
      },
    });
  }
}

for (const dtype of ["f32", "f16"] as const) {
  Deno.test({
    name: `gemv (${dtype}) with the RMSNorm fused in matches rmsNormRef then matmulRef`,
    ignore: SKIP_GPU,
    fn: async () => {
      const { device, ring } = await testGpu();
      const r = rng(dtype === "f32" ? 11 : 12);
      // [rows, n, k] and shape: several rows (batched decode), outputs past the last workgroup's, and a shape
      // with few threads per output (each thread then sums the squares of many chunks).
      const runs = [
        [[1, 37, 64], GEMV_SHAPE],
        [[3, 130, 96], GEMV_SHAPE],
        [[2, 40, 256], { tpo: 4, outs: 16 }],
        [[1, 64, 2048], GEMV_SHAPE],
      ] as const;
      for (const [[rows, n, k], shape] of runs) {
        for (const bias of [false, true]) {
          // Inputs far from unit scale: the norm must really be applied.
          const x = randomArray(r, rows * k, -6, 6), g = randomArray(r, k, 0.5, 1.5);
          const w = randomArray(r, n * k), b = randomArray(r, n), y0 = randomArray(r, rows * n);
          const p: LinearParams = { label: "t", n, k, dtype, bias, mode: "add", alpha: 0.5, normEps: 1e-5 };
          const prog = await gemvProgram(device, ring, p, shape);
          const yb = buf(device, "y", y0);
          const bufs = [
            buf(device, "x", x),
            buf(device, "w", weightData(w, dtype)),
            ...(bias ? [buf(device, "b", b)] : []),
            yb,
            buf(device, "g", g),
          ];
          const got = await runProgram(
            device,
            ring,
            prog,
            bufs,
            grid2d(Math.ceil(n / shape.outs)),
            rows,
            yb,
            rows * n,
          );
          const xn = rmsNormRef(x, g, 1e-5, rows, k);
          const ref = matmulRef(xn, dtype === "f16" ? roundF16(w) : w, rows, n, k, bias ? { bias: b } : {});
          for (let i = 0; i < ref.length; i++) ref[i] = y0[i] + 0.5 * ref[i];
          const err = relError(got, ref);
          assert.ok(
            err < 1e-5,
            `fused gemv ${dtype} [${rows},${n},${k}] bias ${bias}: relative error ${err}`,
          );
        }
      }
      assert.throws(
        () =>
          gemmWgsl({ label: "t", n: 8, k: 16, dtype, bias: false, mode: "store", alpha: 1, normEps: 1e-5 }),
        RangeError,
      );
    },
  });
}

Deno.test({
  name: "rmsNorm kernel matches rmsNormRef",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const r = rng(3);
    // n = 37 and 2050 take the scalar path, the others the vec4 path.
    for (const [rows, n] of [[1, 64], [7, 200], [3, 2048], [2, 37], [1, 2050]]) {
      const x = randomArray(r, rows * n, -3, 3), w = randomArray(r, n, 0.5, 1.5);
      const prog = await rmsNormProgram(device, ring, { n, eps: 1e-5 });
      const yb = buf(device, "y", new Float32Array(rows * n));
      const group = prog.bind("t", [buf(device, "x", x), buf(device, "w", w), yb]);
      const got = new Float32Array(
        await runAndRead(
          device,
          ring,
          [{ program: prog, group, grid: [rows, 1, 1] }],
          { rows },
          yb,
          rows * n * 4,
        ),
      );
      const err = relError(got, rmsNormRef(x, w, 1e-5, rows, n));
      assert.ok(err < 1e-5, `rmsNorm [${rows},${n}]: ${err}`);
    }
  },
});

Deno.test({
  name: "embed kernel looks up prompt ids and the ring token",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const r = rng(4);
    for (const dtype of ["f32", "f16"] as const) {
      const V = 50, H = 24;
      const table = randomArray(r, V * H);
      const prog = await embedProgram(device, ring, { hidden: H, vocab: V, dtype, multiplier: 2 });
      const ids = new Uint32Array([3, 49, 0]);
      const ringBuf = buf(device, "ring", new Uint32Array([7, 11, 13, 0]));
      const xb = buf(device, "x", new Float32Array(3 * H));
      const group = prog.bind("t", [
        buf(device, "table", weightData(table, dtype)),
        buf(device, "ids", ids),
        ringBuf,
        xb,
      ]);
      const t = dtype === "f16" ? roundF16(table) : table;
      const got = new Float32Array(
        await runAndRead(
          device,
          ring,
          [{ program: prog, group, grid: [3, 1, 1] }],
          { rows: 3 },
          xb,
          3 * H * 4,
        ),
      );
      for (let row = 0; row < 3; row++) {
        for (let i = 0; i < H; i++) assert.equal(got[row * H + i], 2 * t[ids[row] * H + i]);
      }
      const one = new Float32Array(
        await runAndRead(
          device,
          ring,
          [{ program: prog, group, grid: [1, 1, 1] }],
          { rows: 1, srcRing: true, ringIn: 2 },
          xb,
          H * 4,
        ),
      );
      for (let i = 0; i < H; i++) assert.equal(one[i], 2 * t[13 * H + i]);
    }
  },
});
