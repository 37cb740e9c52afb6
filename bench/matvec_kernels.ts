/**
 * GPU time of the decode mat-vecs, kernel by kernel, without a model, at the OLMoE-1B-7B shape by default
 * (hidden 2048, expert width 1024, 64 experts, 8 per token, qkv 6144 outputs, vocabulary 50304): f16 and packed
 * (w4g128 experts, w8g128 attention) gate/up, down, qkv, o-proj and LM head, each in every `--shapes` candidate
 * (threads per output × outputs per workgroup). Timestamp queries around a pass of `--reps` dispatches give the
 * time per dispatch; successive dispatches read other experts / other copies of the matrix, so weights stream
 * from memory as in a real decode step (each layer reads its own) rather than from the L2 cache.
 *
 *   deno run -A bench/matvec_kernels.ts [--shapes 64x4,32x8,16x16] [--down-shapes 64x4,64x4/8] [--reps 48]
 *     [--only q-gate-up,…]   # shapes: threads per output × outputs per workgroup [/ expert teams of down]
 *     [--runtime-sizes]     # packed kernels without their schemes (sizes computed at run time)
 *
 * Prints a Markdown table (µs per dispatch and GB/s of weight bytes) and one JSON line per row. The GPU is kept
 * in its fast state (kernels/keep_awake.ts) as the engine does: filling the buffers keeps the main thread busy
 * long enough to leave every kernel 3–4× slower until a warm-up.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { DOWN_SHAPE, downProgram, GATEUP_SHAPE, gateUpProgram } from "../kernels/experts.ts";
import { acquireGpu, type Dispatch, grid2d, StepRing, storageBuffer, uploadBuffer } from "../kernels/gpu.ts";
import { gemvProgram, gemvShape } from "../kernels/linear.ts";
import {
  buildQuantSet,
  QDOWN_SHAPE,
  qDownProgram,
  QGATEUP_SHAPE,
  qGateUpProgram,
  qgemvProgram,
  qgemvShape,
  type QuantMatrix,
  wordsPerRow,
} from "../kernels/qmatvec.ts";
import type { MatvecShape } from "../kernels/wgsl.ts";
import { PassTimer } from "./gpu_timer.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    shapes: { type: "string", default: "64x4,32x8,16x16,8x32,16x8,32x4" },
    "down-shapes": { type: "string", default: "64x4,64x4/8,32x8/8,64x2/8,128x2/8,32x4/4,16x16" },
    reps: { type: "string", default: "48" },
    hidden: { type: "string", default: "2048" },
    inter: { type: "string", default: "1024" },
    experts: { type: "string", default: "64" },
    topk: { type: "string", default: "8" },
    qkv: { type: "string", default: "6144" },
    vocab: { type: "string", default: "50304" },
    only: { type: "string", default: "" },
    "runtime-sizes": { type: "boolean", default: false },
  },
});
// Without the weight sets' schemes the packed kernels size chunks and groups at run time.
const rt = values["runtime-sizes"];
const H = Number(values.hidden),
  I = Number(values.inter),
  E = Number(values.experts),
  k = Number(values.topk);
const QKV = Number(values.qkv), V = Number(values.vocab), reps = Number(values.reps);
const only = values.only ? new Set(values.only.split(",")) : undefined;
/** Shapes "TPOxOUTS" or "TPOxOUTS/SPLIT" (teams of the down kernels). */
const parseShapes = (list: string): MatvecShape[] =>
  list.split(",").map((s) => {
    const [dims, split] = s.split("/");
    const [tpo, outs] = dims.split("x").map(Number);
    return split ? { tpo, outs, split: Number(split) } : { tpo, outs };
  });
const shapes = parseShapes(values.shapes), downShapes = parseShapes(values["down-shapes"]);
const shapeName = (s: MatvecShape) => `${s.tpo}×${s.outs}${s.split ? `/${s.split}` : ""}`;

const ctx = await acquireGpu();
if (!ctx.hasTimestamps) {
  throw new Error("Cannot run the benchmark: the adapter has no timestamp-query feature");
}
const device = ctx.device;
const ring = new StepRing(device, 8);

// Deterministic high-entropy filler (xorshift32: weights of a real model do not compress either), f16 weights
// with magnitudes near 1 and random signs.
let seed = 2463534242;
const rnd = () => {
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>>= 0);
};
function f16Words(n: number): Uint32Array {
  const a = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const lo = 0x3000 | (rnd() & 0x8fff), hi = 0x3000 | (rnd() & 0x8fff);
    a[i] = lo | (hi << 16);
  }
  return a;
}
function packed(rows: number, cols: number, bits: number, group: number): QuantMatrix {
  const qweight = new Uint32Array(rows * wordsPerRow(bits, group, cols));
  for (let i = 0; i < qweight.length; i++) qweight[i] = rnd();
  const p = rows * (cols / group);
  return {
    rows,
    cols,
    bits,
    group,
    qweight,
    scales: new Uint16Array(p).fill(0x2000),
    mins: new Uint16Array(p).fill(0xa000),
  };
}
function upload(label: string, data: ArrayBufferView): GPUBuffer {
  return uploadBuffer(device, label, data);
}

// Activations and outputs: [k, max(H, I)] f32 rows (gate/up reads row 0; down reads k rows of h).
const xs = upload("bench.x", new Float32Array(k * Math.max(H, I, 64)).map((_, i) => Math.sin(i) * 0.1));
const hs = storageBuffer(device, "bench.h", k * I * 4);
const ys = storageBuffer(device, "bench.y", Math.max(V, QKV, H) * 4);
const wts = upload("bench.wts", new Float32Array(k).fill(1 / k));
// Expert ids of 8 successive dispatches: all 64 experts in turn (rep r reads experts r·k … r·k + k − 1).
const idSets = Array.from(
  { length: E / k },
  (_, r) => upload(`bench.ids-${r}`, new Uint32Array(Array.from({ length: k }, (_, j) => (r * k + j) % E))),
);

const timer = new PassTimer(device);

/** GPU µs per dispatch, dispatches `ds[i % ds.length]` in turn (best of 5 passes of `reps`). */
async function time(ds: Dispatch[]): Promise<number> {
  const off = ring.set(0, { pos: 0, rows: 1, step: 0, srcRing: false, ringIn: 0, logitsRow: 0 });
  ring.flush(device);
  return (await timer.perDispatch(ring, ds, off, reps)).gpuUs;
}

interface Kernel {
  name: string;
  /** Weight bytes one dispatch reads. */
  bytes: number;
  /** Default shape of the engine. */
  shape: MatvecShape;
  /** A down projection (tried in the down shapes). */
  down?: boolean;
  make: (shape: MatvecShape) => Promise<Dispatch[]>;
}

const kernels: Kernel[] = [];
// f16 experts: [E, 2I, H] and [E, H, I] as packed f16 pairs.
{
  const gu = upload("bench.f16-gate-up", f16Words(E * 2 * I * H / 2));
  const dn = upload("bench.f16-down", f16Words(E * H * I / 2));
  kernels.push({
    name: "gate-up f16",
    bytes: k * 2 * I * H * 2,
    shape: GATEUP_SHAPE,
    make: async (s) => {
      const p = await gateUpProgram(device, ring, { hidden: H, inter: I, topK: k, dtype: "f16" }, s);
      return idSets.map((ids, r) => ({
        program: p,
        group: p.bind(`bench.gu-${r}`, [xs, gu, ids, hs]),
        grid: [Math.ceil(I / s.outs), k, 1],
      }));
    },
  }, {
    name: "down f16",
    down: true,
    bytes: k * H * I * 2,
    shape: DOWN_SHAPE,
    make: async (s) => {
      const p = await downProgram(device, ring, {
        hidden: H,
        inter: I,
        topK: k,
        shared: 0,
        dtype: "f16",
        alpha: 1,
      }, s);
      return idSets.map((ids, r) => ({
        program: p,
        group: p.bind(`bench.dn-${r}`, [hs, dn, ids, wts, ys]),
        grid: [Math.ceil(H / s.outs), 1, 1],
      }));
    },
  });
}
// f16 linear layers: 8 copies of qkv [QKV, H] (one per layer in turn), the LM head [V, H].
for (const [name, n, copies] of [["qkv f16", QKV, 8], ["lm-head f16", V, 1]] as const) {
  const ws = Array.from({ length: copies }, (_, i) => upload(`bench.${name}-${i}`, f16Words(n * H / 2)));
  kernels.push({
    name,
    bytes: n * H * 2,
    shape: gemvShape(n),
    make: async (s) => {
      const p = await gemvProgram(device, ring, {
        label: name,
        n,
        k: H,
        dtype: "f16",
        bias: false,
        mode: "store",
        alpha: 1,
      }, s);
      return ws.map((w, i) => ({
        program: p,
        group: p.bind(`bench.${name}-${i}`, [xs, w, ys]),
        grid: grid2d(Math.ceil(n / s.outs)),
      }));
    },
  });
}
// Packed experts: w4g128 (uniform) and a w4/w2 mix (MxMoE-like: every other expert at w2g128).
for (const [name, schemes] of [["w4g128", [[4, 128]]], ["w4/w2 mix", [[4, 128], [2, 128]]]] as const) {
  const gu = buildQuantSet(
    Array.from({ length: E }, (_, e) => packed(2 * I, H, ...schemes[e % schemes.length] as [number, number])),
  );
  const dn = buildQuantSet(
    Array.from({ length: E }, (_, e) => packed(H, I, ...schemes[e % schemes.length] as [number, number])),
  );
  const guB = [upload("bench.qgu-w", gu.qw), upload("bench.qgu-p", gu.qp), upload("bench.qgu-m", gu.meta)];
  const dnB = [upload("bench.qdn-w", dn.qw), upload("bench.qdn-p", dn.qp), upload("bench.qdn-m", dn.meta)];
  const avgBits = schemes.reduce((a, s) => a + s[0], 0) / schemes.length;
  const perRowBytes = (cols: number) => cols * avgBits / 8 + (cols / 128) * 4;
  kernels.push({
    name: `q-gate-up ${name}`,
    bytes: k * 2 * I * perRowBytes(H),
    shape: QGATEUP_SHAPE,
    make: async (s) => {
      const p = await qGateUpProgram(device, ring, {
        hidden: H,
        inter: I,
        topK: k,
        schemes: rt ? undefined : gu.schemes,
      }, s);
      return idSets.map((ids, r) => ({
        program: p,
        group: p.bind(`bench.qgu-${r}`, [xs, ...guB, ids, hs]),
        grid: [Math.ceil(I / s.outs), k, 1],
      }));
    },
  }, {
    name: `q-down ${name}`,
    down: true,
    bytes: k * H * perRowBytes(I),
    shape: QDOWN_SHAPE,
    make: async (s) => {
      const p = await qDownProgram(device, ring, {
        hidden: H,
        inter: I,
        topK: k,
        alpha: 1,
        schemes: rt ? undefined : dn.schemes,
      }, s);
      return idSets.map((ids, r) => ({
        program: p,
        group: p.bind(`bench.qdn-${r}`, [hs, ...dnB, ids, wts, ys]),
        grid: [Math.ceil(H / s.outs), 1, 1],
      }));
    },
  });
}
// Packed attention projections: w8g128 qkv [QKV, H] and o [H, H], 8 copies each.
for (const [name, n] of [["q-qkv w8g128", QKV], ["q-o w8g128", H]] as const) {
  const sets = Array.from({ length: 8 }, (_, i) => {
    const set = buildQuantSet([packed(n, H, 8, 128)]);
    return [
      upload(`bench.${name}-w${i}`, set.qw),
      upload(`bench.${name}-p${i}`, set.qp),
      upload("m", set.meta),
    ];
  });
  kernels.push({
    name,
    bytes: n * (H + (H / 128) * 4),
    shape: qgemvShape(n),
    make: async (s) => {
      const p = await qgemvProgram(device, ring, {
        n,
        k: H,
        mode: "store",
        bias: false,
        alpha: 1,
        schemes: rt ? undefined : [{ bits: 8, group: 128 }],
      }, s);
      return sets.map((b, i) => ({
        program: p,
        group: p.bind(`bench.${name}-${i}`, [xs, ...b, ys]),
        grid: grid2d(Math.ceil(n / s.outs)),
      }));
    },
  });
}

console.log(
  JSON.stringify({ device: ctx.adapterName, subgroups: ctx.hasSubgroups, H, I, E, k, QKV, V, reps }),
);
const table: string[] = [];
for (const kern of kernels) {
  if (only && !only.has(kern.name)) continue;
  const cells: string[] = [];
  for (const s of kern.down ? downShapes : shapes) {
    try {
      const us = await time(await kern.make(s));
      const gbs = kern.bytes / us / 1e3;
      console.log(JSON.stringify({ kernel: kern.name, ...s, us, gbs }));
      const mark = shapeName(s) === shapeName(kern.shape) ? " (default)" : "";
      cells.push(`${shapeName(s)}: ${us.toFixed(1)} µs, ${gbs.toFixed(0)} GB/s${mark}`);
    } catch (e) {
      cells.push(`${shapeName(s)}: error ${(e as Error).message.slice(0, 60)}`);
    }
  }
  table.push(`| ${kern.name} | ${(kern.bytes / 1e6).toFixed(2)} | ${cells.join("<br>")} |`);
}
console.log(
  `\n${ctx.adapterName}${
    rt ? ", packed kernels sized at run time" : ""
  }; µs per dispatch (GB/s of weight bytes)` +
    ` by shape (threads per output × outputs per workgroup [/ expert teams])`,
);
console.log("| kernel | MB | shape: time |");
console.log("| --- | --- | --- |");
for (const row of table) console.log(row);
