/**
 * Weight quantizers producing the packed layout of pack.ts: round-to-nearest (RTN) and GPTQ (Frantar et al.,
 * 2022: column-by-column rounding with the error compensated on the remaining columns through the inverse
 * Hessian of the layer's calibration inputs, H = 2XᵀX/n), asymmetric and group-wise.
 *
 * @module
 */

import type { PackedMatrix } from "./pack.ts";
import { packLevels } from "./pack.ts";

/** Options of {@linkcode quantizeGptq}. */
export interface GptqOptions {
  /** Dampening added to the Hessian diagonal, as a fraction of its mean (default 0.01). */
  damp?: number;
  /** Quantize columns in order of decreasing Hessian diagonal (default false); groups stay static. */
  actOrder?: boolean;
  /** Columns updated together (default 128). */
  blockSize?: number;
}

const f16 = (x: number) => Math.f16round(x);

/** Scale and minimum (both f16-representable) of values `v[from..to)` for `bits`. */
function groupParams(
  v: ArrayLike<number>,
  from: number,
  to: number,
  bits: number,
): { scale: number; min: number } {
  let lo = Infinity, hi = -Infinity;
  for (let i = from; i < to; i++) {
    lo = Math.min(lo, v[i]);
    hi = Math.max(hi, v[i]);
  }
  const maxq = (1 << bits) - 1;
  const min = f16(lo);
  let scale = f16((hi - min) / maxq);
  if (!(scale > 0)) scale = f16(Math.max(Math.abs(min), 1e-4) / maxq) || 6.103515625e-5;
  return { scale, min };
}

function level(x: number, scale: number, min: number, maxq: number): number {
  return Math.min(maxq, Math.max(0, Math.round((x - min) / scale)));
}

function finish(
  q: Uint8Array,
  scales: Float32Array,
  mins: Float32Array,
  rows: number,
  cols: number,
  bits: number,
  group: number,
): PackedMatrix {
  return {
    rows,
    cols,
    bits,
    group,
    qweight: packLevels(q, rows, cols, bits, group),
    scales: new Uint16Array(new Float16Array(scales).buffer),
    mins: new Uint16Array(new Float16Array(mins).buffer),
  };
}

/** Round-to-nearest quantization of `w` [rows, cols]. */
export function quantizeRtn(
  w: Float32Array,
  rows: number,
  cols: number,
  bits: number,
  group: number,
): PackedMatrix {
  if (w.length !== rows * cols) {
    throw new RangeError(`Cannot quantize: ${w.length} values for [${rows}, ${cols}]`);
  }
  if (cols % group !== 0) throw new RangeError(`Cannot quantize ${cols} columns in groups of ${group}`);
  const groups = cols / group, maxq = (1 << bits) - 1;
  const q = new Uint8Array(rows * cols);
  const scales = new Float32Array(rows * groups), mins = new Float32Array(rows * groups);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const from = r * cols + g * group;
      const { scale, min } = groupParams(w, from, from + group, bits);
      scales[r * groups + g] = scale;
      mins[r * groups + g] = min;
      for (let i = from; i < from + group; i++) q[i] = level(w[i], scale, min, maxq);
    }
  }
  return finish(q, scales, mins, rows, cols, bits, group);
}

/** Lower Cholesky factor of the symmetric positive-definite `a` [n, n] (float64), or undefined if not SPD. */
export function cholesky(a: Float64Array, n: number): Float64Array | undefined {
  const l = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    let d = a[j * n + j];
    for (let k = 0; k < j; k++) d -= l[j * n + k] * l[j * n + k];
    if (!(d > 0)) return undefined;
    const ljj = Math.sqrt(d);
    l[j * n + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      let s = a[i * n + j];
      for (let k = 0; k < j; k++) s -= l[i * n + k] * l[j * n + k];
      l[i * n + j] = s / ljj;
    }
  }
  return l;
}

/** Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), the matrix GPTQ's updates read. */
function inverseUpperCholesky(h: Float64Array, n: number): Float64Array {
  const l = cholesky(h, n);
  if (!l) throw new RangeError("Cannot run GPTQ: the dampened Hessian is not positive definite");
  // Linv = L⁻¹ (lower triangular).
  const linv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    linv[i * n + i] = 1 / l[i * n + i];
    for (let j = 0; j < i; j++) {
      let s = 0;
      for (let k = j; k < i; k++) s += l[i * n + k] * linv[k * n + j];
      linv[i * n + j] = -s / l[i * n + i];
    }
  }
  // H⁻¹ = Linvᵀ Linv.
  const hinv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let k = i; k < n; k++) s += linv[k * n + i] * linv[k * n + j];
      hinv[i * n + j] = s;
      hinv[j * n + i] = s;
    }
  }
  const lc = cholesky(hinv, n);
  if (!lc) throw new RangeError("Cannot run GPTQ: the inverse Hessian is not positive definite");
  const u = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) u[j * n + i] = lc[i * n + j];
  return u;
}

/**
 * GPTQ quantization of `w` [rows, cols] with the calibration Hessian `h` [cols, cols] (Σ over calibration
 * inputs x of x xᵀ; any positive scale). Group parameters are taken from the error-updated weights when a
 * group starts (or from the original weights with `actOrder`, whose column order differs from the groups').
 */
export function quantizeGptq(
  w: Float32Array,
  rows: number,
  cols: number,
  h: Float64Array,
  bits: number,
  group: number,
  options: GptqOptions = {},
): PackedMatrix {
  if (w.length !== rows * cols) {
    throw new RangeError(`Cannot quantize: ${w.length} values for [${rows}, ${cols}]`);
  }
  if (h.length !== cols * cols) {
    throw new RangeError(`Cannot run GPTQ: the Hessian must be [${cols}, ${cols}]`);
  }
  if (cols % group !== 0) throw new RangeError(`Cannot quantize ${cols} columns in groups of ${group}`);
  const n = cols, groups = cols / group, maxq = (1 << bits) - 1;
  const block = options.blockSize ?? 128;
  const W = Float64Array.from(w);
  const H = Float64Array.from(h);
  // Dead inputs (never active in calibration) quantize to anything: fix their diagonal, zero their weights.
  for (let i = 0; i < n; i++) {
    if (H[i * n + i] === 0) {
      H[i * n + i] = 1;
      for (let r = 0; r < rows; r++) W[r * n + i] = 0;
    }
  }
  let mean = 0;
  for (let i = 0; i < n; i++) mean += H[i * n + i];
  const damp = (options.damp ?? 0.01) * (mean / n);
  for (let i = 0; i < n; i++) H[i * n + i] += damp;

  // Column order: natural, or by decreasing Hessian diagonal.
  const perm = Array.from({ length: n }, (_, i) => i);
  if (options.actOrder) perm.sort((a, b) => H[b * n + b] - H[a * n + a] || a - b);
  const Hp = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) Hp[i * n + j] = H[perm[i] * n + perm[j]];
  const U = inverseUpperCholesky(Hp, n);

  const scales = new Float32Array(rows * groups), mins = new Float32Array(rows * groups);
  const setGroup = (source: Float64Array, g: number, colOf: (c: number) => number) => {
    const tmp = new Float64Array(group);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < group; j++) tmp[j] = source[r * n + colOf(g * group + j)];
      const p = groupParams(tmp, 0, group, bits);
      scales[r * groups + g] = p.scale;
      mins[r * groups + g] = p.min;
    }
  };
  // Working copy in permuted column order.
  const Wp = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) for (let c = 0; c < n; c++) Wp[r * n + c] = W[r * n + perm[c]];
  if (options.actOrder) { for (let g = 0; g < groups; g++) setGroup(W, g, (c) => c); }

  const q = new Uint8Array(rows * cols);
  const err = new Float64Array(rows * block);
  for (let i1 = 0; i1 < n; i1 += block) {
    const i2 = Math.min(i1 + block, n), count = i2 - i1;
    for (let i = 0; i < count; i++) {
      const col = i1 + i; // permuted index
      const orig = perm[col];
      if (!options.actOrder && orig % group === 0) setGroup(Wp, orig / group, (c) => c);
      const g = Math.floor(orig / group);
      const d = U[col * n + col];
      for (let r = 0; r < rows; r++) {
        const x = Wp[r * n + col];
        const s = scales[r * groups + g], m = mins[r * groups + g];
        const lv = level(x, s, m, maxq);
        q[r * cols + orig] = lv;
        const e = (x - (Math.fround(lv * s) + m)) / d;
        err[r * block + i] = e;
        for (let j = col + 1; j < i2; j++) Wp[r * n + j] -= e * U[col * n + j];
      }
    }
    // Propagate the block's errors to the later columns.
    if (i2 < n) {
      for (let r = 0; r < rows; r++) {
        for (let i = 0; i < count; i++) {
          const e = err[r * block + i];
          if (e === 0) continue;
          const uo = (i1 + i) * n;
          for (let j = i2; j < n; j++) Wp[r * n + j] -= e * U[uo + j];
        }
      }
    }
  }
  return finish(q, scales, mins, rows, cols, bits, group);
}
