/**
 * The kernel cost table MxMoE's allocator needs, measured on the local adapter: the time of the kernel that runs
 * a block (kernels/qmatvec.ts: the grouped expert gate/up or down, one expert of the scheme with every token
 * routed to it; the dequantizing linear mat-vec for other blocks) for each scheme, block shape and token count.
 * Without an adapter, a model of bytes read stands in (documented as such in the table).
 *
 * @module
 */

import {
  acquireGpu,
  type Dispatch,
  encodeDispatch,
  grid2d,
  hasWebGpuAdapter,
  StepRing,
  uploadBuffer,
} from "../../kernels/gpu.ts";
import {
  buildQuantSet,
  QDOWN_SHAPE,
  qDownProgram,
  QGATEUP_SHAPE,
  qGateUpProgram,
  QGEMV_SHAPE,
  qgemvProgram,
  type QuantMatrix,
  wordsPerRow,
} from "../../kernels/qmatvec.ts";
import { quantizeRtn } from "./quantize.ts";
import { parseScheme, storedBitsPerWeight } from "./scheme.ts";

/**
 * What the measured costs timed: the expert kernels' default shapes and a revision of their code, so that a table
 * cached beside a model is measured anew when the kernels change.
 */
export const COST_KERNELS = `qmatvec r2 gate_up ${JSON.stringify(QGATEUP_SHAPE)} down ${
  JSON.stringify(QDOWN_SHAPE)
}`;

/** A block shape of the cost table: [rows, cols] and its schemes; `kernel` names the grouped expert kernel. */
export interface CostShape {
  /** Output features. */
  rows: number;
  /** Input features. */
  cols: number;
  /** Schemes to time. */
  schemes: string[];
  /**
   * "gate_up" ([2I, H]: gate and up rows of one expert) or "down" ([H, I]) times that grouped expert kernel;
   * absent: the linear mat-vec.
   */
  kernel?: "gate_up" | "down";
}

/** Milliseconds per (scheme, shape, tokens), and where they come from. */
export interface CostTable {
  /** "measured" on `adapter`, or "bytes-model" without one. */
  source: "measured" | "bytes-model";
  /** Adapter description. */
  adapter: string;
  /** The kernels measured ({@linkcode COST_KERNELS}); absent in a bytes model and in older tables. */
  kernels?: string;
  /** Key `${scheme}|${rows}x${cols}|${tokens}` → milliseconds. */
  entries: Record<string, number>;
}

/** What one more code path in a projection's grouped expert kernel costs, as a fraction of the layer's time. */
export interface PathCosts {
  /** For the gate/up kernel. */
  gate_up: number;
  /** For the down kernel. */
  down: number;
}

/** The key of a cost entry. */
export function costKey(scheme: string, rows: number, cols: number, tokens: number): string {
  return `${scheme}|${rows}x${cols}|${tokens}`;
}

/** Token counts the table holds; lookups round up to the next one (beyond the last: scale linearly). */
export const COST_TOKENS = [1, 4, 16, 64];

/** The cost of `scheme` on a [rows, cols] block for `tokens` tokens (0 tokens cost nothing). */
export function lookupCost(t: CostTable, scheme: string, rows: number, cols: number, tokens: number): number {
  if (tokens <= 0) return 0;
  const at = COST_TOKENS.find((m) => m >= tokens);
  if (at !== undefined) return t.entries[costKey(scheme, rows, cols, at)] ?? NaN;
  const last = COST_TOKENS[COST_TOKENS.length - 1];
  return (t.entries[costKey(scheme, rows, cols, last)] ?? NaN) * tokens / last;
}

/** A [rows, cols] matrix of random packed levels in `scheme` (what a kernel's time does not depend on). */
function randomPacked(rows: number, cols: number, scheme: string, seed: number): QuantMatrix {
  const sc = parseScheme(scheme);
  let s = seed >>> 0 || 1;
  const next = () => (s ^= s << 13, s ^= s >>> 17, s ^= s << 5, s >>> 0);
  if (sc.kind === "f16") {
    return { rows, cols, f16: Uint16Array.from({ length: rows * cols }, () => 0x2000 | (next() & 0x3ff)) };
  }
  const qweight = new Uint32Array(rows * wordsPerRow(sc.bits, sc.group, cols));
  for (let i = 0; i < qweight.length; i++) qweight[i] = next();
  const groups = rows * cols / sc.group;
  const scales = new Uint16Array(new Float16Array(groups).fill(1e-3).buffer);
  const mins = new Uint16Array(new Float16Array(groups).fill(-1e-2).buffer);
  return { rows, cols, bits: sc.bits, group: sc.group, qweight, scales, mins };
}

function randomMatrix(rows: number, cols: number, scheme: string): QuantMatrix {
  let s = 12345;
  const w = Float32Array.from(
    { length: rows * cols },
    () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) - 0.5,
  );
  const sc = parseScheme(scheme);
  if (sc.kind === "f16") return { rows, cols, f16: new Uint16Array(new Float16Array(w).buffer) };
  return quantizeRtn(w, rows, cols, sc.bits, sc.group);
}

/**
 * A cost table without an adapter: milliseconds proportional to the bytes of the weights read, growing slowly
 * with the token count (what a memory-bound kernel costs).
 */
export function bytesModelCosts(shapes: CostShape[]): CostTable {
  const entries: Record<string, number> = {};
  for (const { rows, cols, schemes } of shapes) {
    for (const scheme of schemes) {
      const bytes = storedBitsPerWeight(parseScheme(scheme), cols) * rows * cols / 8;
      for (const m of COST_TOKENS) entries[costKey(scheme, rows, cols, m)] = bytes * 1e-6 * (1 + m / 64);
    }
  }
  return { source: "bytes-model", adapter: "none", entries };
}

/** Whether `table` has an entry for every scheme, shape and token count of `shapes`. */
export function costTableCovers(table: CostTable, shapes: CostShape[]): boolean {
  return shapes.every(({ rows, cols, schemes }) =>
    schemes.every((s) => COST_TOKENS.every((m) => Number.isFinite(table.entries[costKey(s, rows, cols, m)])))
  );
}

/** The description of the adapter costs would be measured on now ("none" without one). */
export async function costAdapter(): Promise<string> {
  if (!(await hasWebGpuAdapter())) return "none";
  return (await acquireGpu()).adapterName;
}

/** Milliseconds from submitting `n` rounds of `dispatches` in one compute pass until the GPU has run them. */
async function timePass(
  device: GPUDevice,
  ring: StepRing,
  dispatches: Dispatch[],
  stepOffset: number,
  n: number,
  label: string,
): Promise<number> {
  const enc = device.createCommandEncoder({ label });
  const pass = enc.beginComputePass({ label });
  for (let i = 0; i < n; i++) for (const d of dispatches) encodeDispatch(pass, ring, d, stepOffset);
  pass.end();
  const t0 = performance.now();
  device.queue.submit([enc.finish()]);
  await device.queue.onSubmittedWorkDone();
  return performance.now() - t0;
}

/**
 * Measures (or models, without an adapter) the cost of each shape's schemes for COST_TOKENS: a shape with a
 * `kernel` in that grouped expert kernel (one expert of the scheme, every token routed to it, top-1), else in
 * the linear mat-vec.
 */
export async function measureCosts(
  shapes: CostShape[],
  onProgress?: (done: number, total: number) => void,
): Promise<CostTable> {
  for (const { rows, kernel } of shapes) {
    if (kernel === "gate_up" && rows % 2 !== 0) {
      throw new RangeError(`Cannot time a gate/up block of ${rows} rows: gate and up rows come in pairs`);
    }
  }
  const entries: Record<string, number> = {};
  const total = shapes.reduce((a, s) => a + s.schemes.length, 0);
  if (!(await hasWebGpuAdapter())) return bytesModelCosts(shapes);
  const ctx = await acquireGpu();
  const device = ctx.device;
  const ring = new StepRing(device, COST_TOKENS.length);
  const reps = 24;
  const maxM = COST_TOKENS[COST_TOKENS.length - 1];
  // ids [maxM] u32: every token to expert 0; wts [maxM] f32: weight 1.
  const ids = uploadBuffer(device, "cost-ids", new Uint32Array(maxM));
  const wts = uploadBuffer(device, "cost-wts", new Float32Array(maxM).fill(1));
  let done = 0;
  for (const { rows, cols, schemes, kernel } of shapes) {
    // x [maxM, cols] f32 input; y [maxM, rows] f32 output (gate/up: h [maxM, rows / 2]).
    const x = uploadBuffer(device, "cost-x", new Float32Array(maxM * cols).fill(0.01));
    const y = uploadBuffer(device, "cost-y", new Float32Array(maxM * rows));
    for (const scheme of schemes) {
      const set = buildQuantSet([randomMatrix(rows, cols, scheme)]);
      const bufs = [
        uploadBuffer(device, "cost-qw", set.qw),
        uploadBuffer(device, "cost-qp", set.qp),
        uploadBuffer(device, "cost-meta", set.meta),
      ];
      // The dispatch for m tokens.
      let dispatch: (m: number) => Dispatch;
      if (kernel === "gate_up") {
        const prog = await qGateUpProgram(device, ring, {
          hidden: cols,
          inter: rows / 2,
          topK: 1,
          schemes: set.schemes,
        });
        const group = prog.bind("cost", [x, ...bufs, ids, y]);
        dispatch = (m) => ({ program: prog, group, grid: [Math.ceil(rows / 2 / QGATEUP_SHAPE.outs), m, 1] });
      } else if (kernel === "down") {
        const prog = await qDownProgram(device, ring, {
          hidden: rows,
          inter: cols,
          topK: 1,
          alpha: 1,
          schemes: set.schemes,
        });
        const group = prog.bind("cost", [x, ...bufs, ids, wts, y]);
        dispatch = (m) => ({ program: prog, group, grid: [Math.ceil(rows / QDOWN_SHAPE.outs), m, 1] });
      } else {
        const prog = await qgemvProgram(device, ring, {
          n: rows,
          k: cols,
          mode: "store",
          bias: false,
          alpha: 1,
          schemes: set.schemes,
        });
        const group = prog.bind("cost", [x, ...bufs, y]);
        dispatch = () => ({ program: prog, group, grid: grid2d(Math.ceil(rows / QGEMV_SHAPE.outs)) });
      }
      for (let mi = 0; mi < COST_TOKENS.length; mi++) {
        const m = COST_TOKENS[mi];
        const off = ring.set(mi, { pos: 0, rows: m, step: 0, srcRing: false, ringIn: 0, logitsRow: 0 });
        ring.flush(device);
        const run = (n: number) => timePass(device, ring, [dispatch(m)], off, n, "cost");
        await run(1); // warm-up
        const one = await run(1);
        const many = await run(reps + 1);
        entries[costKey(scheme, rows, cols, m)] = Math.max(1e-6, (many - one) / reps);
      }
      for (const b of bufs) b.destroy();
      onProgress?.(++done, total);
    }
    x.destroy();
    y.destroy();
  }
  ids.destroy();
  wts.destroy();
  ring.buffer.destroy();
  return { source: "measured", adapter: ctx.adapterName, kernels: COST_KERNELS, entries };
}

/**
 * Measures what a second code path (kernels/qmatvec.ts codePathKey) in one projection's grouped expert kernel
 * costs a MoE layer of `shape` for one token: `layers` layers' gate/up then down dispatches (each layer its own
 * weights, as in a decode step) in one pass, with a projection's `topK` experts all in scheme `pair[0]`, all in
 * `pair[1]`, or alternating between them, the other projection in `pair[0]`. The result is the alternating run's
 * excess over the mean of the two uniform runs, as a fraction of that mean (0 when it is not slower); the median
 * of `trials` passes of `reps` steps each.
 */
export async function measurePathCosts(
  shape: { hidden: number; inter: number; topK: number },
  pair: [string, string],
  options: { layers?: number; reps?: number; trials?: number } = {},
): Promise<PathCosts> {
  const { hidden: H, inter: I, topK: K } = shape;
  const layers = options.layers ?? 8, reps = options.reps ?? 8, trials = options.trials ?? 5;
  const ctx = await acquireGpu();
  const device = ctx.device;
  const ring = new StepRing(device, 1);
  const off = ring.set(0, { pos: 0, rows: 1, step: 0, srcRing: false, ringIn: 0, logitsRow: 0 });
  ring.flush(device);
  // x [H] f32; h [K, I] f32; ids [K] u32 (experts 0..K-1); wts [K] f32.
  const x = uploadBuffer(device, "path-x", new Float32Array(H).fill(0.01));
  const h = uploadBuffer(device, "path-h", new Float32Array(K * I));
  const ids = uploadBuffer(device, "path-ids", Uint32Array.from({ length: K }, (_, i) => i));
  const wts = uploadBuffer(device, "path-wts", new Float32Array(K).fill(1 / K));
  const made: GPUBuffer[] = [x, h, ids, wts];
  // The pass's time (ms per step) with gate/up experts in `gu(e)` and down experts in `dn(e)`.
  const time = async (gu: (e: number) => string, dn: (e: number) => string): Promise<number> => {
    const steps: Dispatch[] = [];
    const bufs: GPUBuffer[] = [];
    for (let l = 0; l < layers; l++) {
      const guSet = buildQuantSet(
        Array.from({ length: K }, (_, e) => randomPacked(2 * I, H, gu(e), 7 + l * K + e)),
      );
      const dnSet = buildQuantSet(
        Array.from({ length: K }, (_, e) => randomPacked(H, I, dn(e), 99 + l * K + e)),
      );
      const up = (label: string, set: ReturnType<typeof buildQuantSet>) => {
        const b = [set.qw, set.qp, set.meta].map((d, i) => uploadBuffer(device, `${label}-${i}`, d));
        bufs.push(...b);
        return b;
      };
      const guProg = await qGateUpProgram(device, ring, {
        hidden: H,
        inter: I,
        topK: K,
        schemes: guSet.schemes,
      });
      const dnProg = await qDownProgram(device, ring, {
        hidden: H,
        inter: I,
        topK: K,
        alpha: 1,
        schemes: dnSet.schemes,
      });
      steps.push({
        program: guProg,
        group: guProg.bind(`path-L${l}-gu`, [x, ...up(`path-L${l}-gu`, guSet), ids, h]),
        grid: [Math.ceil(I / QGATEUP_SHAPE.outs), K, 1],
      });
      steps.push({
        program: dnProg,
        group: dnProg.bind(`path-L${l}-dn`, [h, ...up(`path-L${l}-dn`, dnSet), ids, wts, x]),
        grid: [Math.ceil(H / QDOWN_SHAPE.outs), 1, 1],
      });
    }
    const run = (n: number) => timePass(device, ring, steps, off, n, "path-cost");
    await run(1); // warm-up
    const samples: number[] = [];
    for (let t = 0; t < trials; t++) {
      const one = await run(1), many = await run(reps + 1);
      samples.push((many - one) / reps);
    }
    for (const b of bufs) b.destroy();
    samples.sort((a, b) => a - b);
    return samples[Math.floor(samples.length / 2)];
  };
  const [a, b] = pair;
  const alt = (e: number) => e % 2 === 0 ? a : b;
  const tA = await time(() => a, () => a);
  const guB = await time(() => b, () => a), guMix = await time(alt, () => a);
  const dnB = await time(() => a, () => b), dnMix = await time(() => a, alt);
  for (const buf of made) buf.destroy();
  ring.buffer.destroy();
  const excess = (mix: number, other: number) => Math.max(0, mix / ((tA + other) / 2) - 1);
  return { gate_up: excess(guMix, guB), down: excess(dnMix, dnB) };
}
