/**
 * The kernel cost table MxMoE's allocator needs, measured on the local adapter: the time of the dequantizing
 * mat-vec (kernels/qmatvec.ts) for each scheme, block shape and token count. Without an adapter, a model of
 * bytes read stands in (documented as such in the table).
 *
 * @module
 */

import {
  acquireGpu,
  encodeDispatch,
  grid2d,
  hasWebGpuAdapter,
  StepRing,
  uploadBuffer,
} from "../../kernels/gpu.ts";
import { buildQuantSet, QGEMV_SHAPE, qgemvProgram, type QuantMatrix } from "../../kernels/qmatvec.ts";
import { quantizeRtn } from "./quantize.ts";
import { parseScheme, storedBitsPerWeight } from "./scheme.ts";

/** Milliseconds per (scheme, shape, tokens), and where they come from. */
export interface CostTable {
  /** "measured" on `adapter`, or "bytes-model" without one. */
  source: "measured" | "bytes-model";
  /** Adapter description. */
  adapter: string;
  /** Key `${scheme}|${rows}x${cols}|${tokens}` → milliseconds. */
  entries: Record<string, number>;
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
export function bytesModelCosts(shapes: { rows: number; cols: number; schemes: string[] }[]): CostTable {
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
export function costTableCovers(
  table: CostTable,
  shapes: { rows: number; cols: number; schemes: string[] }[],
): boolean {
  return shapes.every(({ rows, cols, schemes }) =>
    schemes.every((s) => COST_TOKENS.every((m) => Number.isFinite(table.entries[costKey(s, rows, cols, m)])))
  );
}

/** The description of the adapter costs would be measured on now ("none" without one). */
export async function costAdapter(): Promise<string> {
  if (!(await hasWebGpuAdapter())) return "none";
  return (await acquireGpu()).adapterName;
}

/** Measures (or models, without an adapter) the cost of each shape's schemes for COST_TOKENS. */
export async function measureCosts(
  shapes: { rows: number; cols: number; schemes: string[] }[],
  onProgress?: (done: number, total: number) => void,
): Promise<CostTable> {
  const entries: Record<string, number> = {};
  const total = shapes.reduce((a, s) => a + s.schemes.length, 0);
  if (!(await hasWebGpuAdapter())) return bytesModelCosts(shapes);
  const ctx = await acquireGpu();
  const device = ctx.device;
  const ring = new StepRing(device, COST_TOKENS.length);
  const reps = 24;
  let done = 0;
  for (const { rows, cols, schemes } of shapes) {
    const maxM = COST_TOKENS[COST_TOKENS.length - 1];
    const x = uploadBuffer(device, "cost-x", new Float32Array(maxM * cols).fill(0.01));
    const y = uploadBuffer(device, "cost-y", new Float32Array(maxM * rows));
    for (const scheme of schemes) {
      const set = buildQuantSet([randomMatrix(rows, cols, scheme)]);
      const prog = await qgemvProgram(device, ring, {
        n: rows,
        k: cols,
        mode: "store",
        bias: false,
        alpha: 1,
        schemes: set.schemes,
      });
      const bufs = [
        uploadBuffer(device, "cost-qw", set.qw),
        uploadBuffer(device, "cost-qp", set.qp),
        uploadBuffer(device, "cost-meta", set.meta),
      ];
      const group = prog.bind("cost", [x, ...bufs, y]);
      const grid = grid2d(Math.ceil(rows / QGEMV_SHAPE.outs));
      for (let mi = 0; mi < COST_TOKENS.length; mi++) {
        const off = ring.set(mi, {
          pos: 0,
          rows: COST_TOKENS[mi],
          step: 0,
          srcRing: false,
          ringIn: 0,
          logitsRow: 0,
        });
        ring.flush(device);
        const run = async (n: number) => {
          const enc = device.createCommandEncoder({ label: "cost" });
          const pass = enc.beginComputePass({ label: "cost" });
          for (let i = 0; i < n; i++) encodeDispatch(pass, ring, { program: prog, group, grid }, off);
          pass.end();
          const t0 = performance.now();
          device.queue.submit([enc.finish()]);
          await device.queue.onSubmittedWorkDone();
          return performance.now() - t0;
        };
        await run(1); // warm-up
        const one = await run(1);
        const many = await run(reps + 1);
        entries[costKey(scheme, rows, cols, COST_TOKENS[mi])] = Math.max(1e-6, (many - one) / reps);
      }
      for (const b of bufs) b.destroy();
      onProgress?.(++done, total);
    }
    x.destroy();
    y.destroy();
  }
  ring.buffer.destroy();
  return { source: "measured", adapter: ctx.adapterName, entries };
}
