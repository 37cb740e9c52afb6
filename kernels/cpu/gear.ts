/**
 * CPU references of the GEAR KV-cache ops, in the store layout of `kernels/gear_layout.ts`:
 *
 * - {@linkcode gearCompressRef}: compresses the tokens [c0, c1) of the full-precision ring into the store:
 *   per group outlier selection, asymmetric b-bit quantization (keys per channel over groups of g tokens,
 *   values per token over groups of channels), packing, and the rank-r approximation of the residual by power
 *   iteration from a seeded start with a small (Gram–Schmidt) QR, per KV head; optionally with least-squares
 *   ranges and rounds of refitting the quantized part to X − L ({@linkcode GearFitPolicy}, `gear_fit.ts`);
 * - {@linkcode gearReconstructRef}: the dense keys or values a compressed range stands for;
 * - {@linkcode gearAttentionRef}: causal attention over the compressed tokens plus the full-precision ring.
 *
 * Arithmetic that decides codes (group statistics, scales, code rounding) is done in float32 steps as the WGSL
 * does; the power iteration and attention run in float64.
 *
 * @module
 */

import { checkFitPolicy, FIT_STEP, FIT_STEPS, GEAR_FIT_DEFAULT, type GearFitPolicy } from "../gear_fit.ts";
import { compressedBefore, encodeOutlier, type GearLayout, powerStart } from "../gear_layout.ts";

const f16Scratch = new Float16Array(1);
const u16Scratch = new Uint16Array(f16Scratch.buffer);
const F16_MAX = 65504;

/** `x` rounded to the nearest f16 (clamped to the f16 range). */
export function roundF16Value(x: number): number {
  f16Scratch[0] = Math.max(-F16_MAX, Math.min(F16_MAX, x));
  return f16Scratch[0];
}

/** The f16 bit pattern of `x` (clamped to the f16 range). */
export function f16Bits(x: number): number {
  f16Scratch[0] = Math.max(-F16_MAX, Math.min(F16_MAX, x));
  return u16Scratch[0];
}

/** The value of an f16 bit pattern. */
export function f16Value(bits: number): number {
  u16Scratch[0] = bits & 0xffff;
  return f16Scratch[0];
}

/** Low and high f16 halves of a u32 word, as numbers. */
export function unpackHalves(word: number): [number, number] {
  return [f16Value(word & 0xffff), f16Value(word >>> 16)];
}

/** A u32 holding f16 `lo` in the low half and f16 `hi` in the high half. */
export function packHalves(lo: number, hi: number): number {
  return (f16Bits(lo) | (f16Bits(hi) << 16)) >>> 0;
}

/**
 * Outliers of one group: `k` times, removes the largest or the smallest remaining entry, whichever shrinks the
 * remaining range more (the largest on ties; among equal values the lowest index). Returns the indices in the
 * order they were removed.
 */
export function selectOutliers(vals: ArrayLike<number>, k: number): number[] {
  const removed: number[] = [];
  const n = vals.length;
  for (let it = 0; it < k && n - removed.length >= 3; it++) {
    let iMax = -1, iMin = -1;
    for (let i = 0; i < n; i++) {
      if (removed.includes(i)) continue;
      if (iMax < 0 || vals[i] > vals[iMax]) iMax = i;
      if (iMin < 0 || vals[i] < vals[iMin]) iMin = i;
    }
    let max2 = -Infinity, min2 = Infinity;
    for (let i = 0; i < n; i++) {
      if (removed.includes(i)) continue;
      if (i !== iMax && vals[i] > max2) max2 = vals[i];
      if (i !== iMin && vals[i] < min2) min2 = vals[i];
    }
    const gainMax = Math.fround(vals[iMax] - max2), gainMin = Math.fround(min2 - vals[iMin]);
    removed.push(gainMax >= gainMin ? iMax : iMin);
  }
  return removed;
}

/** Scale and min of a group with range [mn, mx] at `levels` = 2^b − 1, rounded to f16 as stored. */
export function quantParams(mn: number, mx: number, levels: number): [number, number] {
  return [roundF16Value(Math.fround(Math.fround(mx - mn) / levels)), roundF16Value(mn)];
}

/**
 * The range [lo, hi] within [mn, mx] for the entries of `vals` not in `removed` that {@linkcode GearFitPolicy}
 * "mse" takes: the grid point (lo = mn + a·r/32, hi = mx − b·r/32, a, b in 0..7, r = mx − mn) whose stored scale
 * and min give the least squared error, the first such in (a, b) order (min/max itself on ties).
 */
export function fitRange(
  vals: ArrayLike<number>,
  removed: readonly number[],
  mn: number,
  mx: number,
  levels: number,
): [number, number] {
  const kept: number[] = [];
  for (let i = 0; i < vals.length; i++) if (!removed.includes(i)) kept.push(vals[i]);
  const r = Math.fround(mx - mn);
  let best: [number, number] = [mn, mx], bestE = Infinity;
  for (let a = 0; a < FIT_STEPS; a++) {
    const lo = Math.fround(mn + Math.fround(r * (a * FIT_STEP)));
    for (let b = 0; b < FIT_STEPS; b++) {
      const hi = Math.fround(mx - Math.fround(r * (b * FIT_STEP)));
      const [scale, min] = quantParams(lo, hi, levels);
      let e = 0;
      for (const x of kept) {
        const d = x - dequant(quantCode(x, scale, min, levels), scale, min);
        e += d * d;
      }
      if (e < bestE) {
        bestE = e;
        best = [lo, hi];
      }
    }
  }
  return best;
}

/** The code of `x` for a group of (scale, min): clamp(floor((x − min)/scale + 1/2), 0, levels); 0 when scale is 0. */
export function quantCode(x: number, scale: number, min: number, levels: number): number {
  if (scale === 0) return 0;
  const q = Math.floor(Math.fround(Math.fround(Math.fround(x - min) / scale) + 0.5));
  return Math.max(0, Math.min(levels, q));
}

/** The value a code stands for. */
export function dequant(code: number, scale: number, min: number): number {
  return Math.fround(Math.fround(code * scale) + min);
}

/** Reads element (b, h, t, c) of a ring buffer [B, nKV, bufCap, hd]. */
function ringAt(l: GearLayout, ring: Float32Array, bh: number, t: number, c: number): number {
  return ring[(bh * l.bufCap + (t % l.bufCap)) * l.hd + c];
}

/** Orthonormalizes the `r` columns of `m` [rows, r] in place (modified Gram–Schmidt; tiny columns become 0). */
export function gramSchmidt(m: Float64Array, rows: number, r: number): void {
  for (let j = 0; j < r; j++) {
    for (let k = 0; k < j; k++) {
      let d = 0;
      for (let i = 0; i < rows; i++) d += m[i * r + j] * m[i * r + k];
      for (let i = 0; i < rows; i++) m[i * r + j] -= d * m[i * r + k];
    }
    let n = 0;
    for (let i = 0; i < rows; i++) n += m[i * r + j] * m[i * r + j];
    n = Math.sqrt(n);
    const inv = n > 1e-20 ? 1 / n : 0;
    for (let i = 0; i < rows; i++) m[i * r + j] *= inv;
  }
}

/**
 * Rank-`rank` factors of `res` [n, d] by `loops` rounds of power iteration from `p0` [d, rank]: each round
 * orthonormalizes P, sets Q = R P, and P = Rᵀ Q; the last round orthonormalizes Q and rounds it to int8 as
 * stored (column j: codes q8 = floor(q / s_j + 0.5) in [−127, 127] with the f16 scale s_j = max|q[:, j]| / 127)
 * before P = Rᵀ Q. Returns Q [n, rank] (the dequantized q8·s_j), its codes and scales, and P [d, rank]
 * (f16-rounded): R ≈ Q Pᵀ.
 */
export function powerIteration(
  res: Float64Array,
  n: number,
  d: number,
  rank: number,
  loops: number,
  p0: Float64Array,
): { q: Float64Array; p: Float64Array; q8: Int8Array; qScale: Float64Array } {
  const p = Float64Array.from(p0);
  const q = new Float64Array(n * rank);
  const q8 = new Int8Array(n * rank);
  const qScale = new Float64Array(rank);
  for (let it = 0; it < loops; it++) {
    gramSchmidt(p, d, rank);
    q.fill(0);
    for (let t = 0; t < n; t++) {
      for (let j = 0; j < rank; j++) {
        let s = 0;
        for (let c = 0; c < d; c++) s += res[t * d + c] * p[c * rank + j];
        q[t * rank + j] = s;
      }
    }
    if (it === loops - 1) {
      gramSchmidt(q, n, rank);
      for (let j = 0; j < rank; j++) {
        let mx = 0;
        for (let t = 0; t < n; t++) mx = Math.max(mx, Math.abs(Math.fround(q[t * rank + j])));
        qScale[j] = roundF16Value(Math.fround(mx / 127));
      }
      for (let i = 0; i < q.length; i++) {
        const sc = qScale[i % rank];
        const code = sc > 0 ? int8Code(q[i], sc) : 0;
        q8[i] = code;
        q[i] = Math.fround(code * sc);
      }
    }
    for (let c = 0; c < d; c++) {
      for (let j = 0; j < rank; j++) {
        let s = 0;
        for (let t = 0; t < n; t++) s += res[t * d + c] * q[t * rank + j];
        p[c * rank + j] = s;
      }
    }
  }
  for (let i = 0; i < p.length; i++) p[i] = roundF16Value(p[i]);
  return { q, p, q8, qScale };
}

/** The int8 code of `x` at scale `sc` (> 0): floor(x / sc + 0.5) in f32, clamped to [−127, 127]. */
export function int8Code(x: number, sc: number): number {
  return Math.max(-127, Math.min(127, Math.floor(Math.fround(Math.fround(Math.fround(x) / sc) + 0.5))));
}

/** The int8 at byte `j` of the words from `at`, as a number. */
function int8At(store: Uint32Array, at: number, j: number): number {
  return ((store[at + (j >> 2)] >>> ((j & 3) * 8)) << 24) >> 24;
}

/** The u16 at halfword `i` of the words from `at`. */
function u16At(store: Uint32Array, at: number, i: number): number {
  return (store[at + (i >> 1)] >>> ((i & 1) * 16)) & 0xffff;
}

/** Writes the u16s `vals` from halfword `i` (even) of the words from `at`. */
function setU16s(store: Uint32Array, at: number, i: number, vals: readonly number[]): void {
  for (let k = 0; k < vals.length; k += 2) {
    store[at + (i + k) / 2] = ((vals[k] & 0xffff) | ((vals[k + 1] ?? 0) << 16)) >>> 0;
  }
}

/**
 * Compresses the tokens [c0, c1) (whole blocks; c0 = the tokens already compressed) of every sequence (or of
 * those in `lanes`) and KV head from the rings `ringK`, `ringV` [B, nKV, bufCap, hd] into `store` as one segment
 * of rank `rank` (0: quantization and outliers only), with `loops` power-iteration rounds seeded by `seed`,
 * fitted as `policy` says ({@linkcode GearFitPolicy}; default: min/max ranges, no refits).
 */
export function gearCompressRef(
  l: GearLayout,
  store: Uint32Array,
  ringK: Float32Array,
  ringV: Float32Array,
  c0: number,
  c1: number,
  rank: number,
  loops: number,
  seed: number,
  lanes?: readonly number[],
  policy: GearFitPolicy = GEAR_FIT_DEFAULT,
): void {
  if (c0 % l.buffer !== 0 || c1 % l.buffer !== 0 || c1 < c0 || c1 > l.T) {
    throw new RangeError(
      `Cannot compress tokens [${c0}, ${c1}): not whole blocks of ${l.buffer} within ${l.T}`,
    );
  }
  if (rank > l.rMax) throw new RangeError(`Cannot compress with rank ${rank}: the layout holds ${l.rMax}`);
  checkFitPolicy(policy);
  const n = c1 - c0;
  if (n === 0) return;
  const { hd: d, group: g, W, perWord, bits } = l;
  const levels = 2 ** bits - 1;
  const blk0 = c0 / l.buffer;
  for (let bh = 0; bh < l.batch * l.nKV; bh++) {
    const h = bh % l.nKV;
    if (lanes && !lanes.includes(Math.floor(bh / l.nKV))) continue;
    for (let kind = 0; kind < 2; kind++) {
      const ring = kind === 0 ? ringK : ringV;
      const X = (t: number, c: number) => ringAt(l, ring, bh, t, c);
      // Scale/min of (t, c) and the outlier correction at (t, c), filled by the group pass.
      const par = (t: number, c: number): [number, number] =>
        kind === 0
          ? unpackHalves(store[l.off.parK + (bh * (l.T / g) + Math.floor(t / g)) * d + c])
          : unpackHalves(store[l.off.parV + (bh * l.T + t) * l.nGV + Math.floor(c / l.gv)]);
      const corr = new Float64Array(n * d);
      // The outlier entries of these tokens: a contiguous run of u16s from halfword `outAt` (even: hd is even,
      // and a token's value outliers fill whole words) of the section at `outBase`.
      const outBase = kind === 0 ? l.off.outK : l.off.outV;
      const outAt = kind === 0 ? (bh * (l.T / g) + c0 / g) * d * l.kK : (bh * l.T + c0) * 2 * l.MW;
      const outs = new Array<number>(kind === 0 ? (n / g) * d * l.kK : n * 2 * l.MW).fill(0);
      const groups: {
        t0: number;
        c0: number;
        len: number;
        stepT: number;
        stepC: number;
        k: number;
        at: number;
      }[] = [];
      if (kind === 0) {
        for (let tg = c0 / g; tg < c1 / g; tg++) {
          for (let c = 0; c < d; c++) {
            groups.push({
              t0: tg * g,
              c0: c,
              len: g,
              stepT: 1,
              stepC: 0,
              k: l.kK,
              at: ((bh * (l.T / g) + tg) * d + c) * l.kK - outAt,
            });
          }
        }
      } else {
        for (let t = c0; t < c1; t++) {
          for (let gi = 0; gi < l.nGV; gi++) {
            const len = gi === l.nGV - 1 ? d - gi * l.gv : l.gv;
            groups.push({
              t0: t,
              c0: gi * l.gv,
              len,
              stepT: 0,
              stepC: 1,
              k: gi === l.nGV - 1 ? l.kVLast : l.kVFull,
              at: (bh * l.T + t) * 2 * l.MW + gi * l.kVFull - outAt,
            });
          }
        }
      }
      // The quantized part fits Y = X − L (L: the low-rank part of the previous fit; 0 at first); the residual
      // the low-rank part then approximates is X − dequant − outliers.
      const lowRank = new Float64Array(n * d);
      const Y = (t: number, c: number) => Math.fround(X(t, c) - lowRank[(t - c0) * d + c]);
      const res = new Float64Array(n * d);
      const quantizePass = () => {
        corr.fill(0);
        outs.fill(0);
        for (const gr of groups) {
          const vals = new Float32Array(gr.len);
          for (let i = 0; i < gr.len; i++) vals[i] = Y(gr.t0 + i * gr.stepT, gr.c0 + i * gr.stepC);
          const removed = selectOutliers(vals, gr.k);
          let mn = Infinity, mx = -Infinity;
          for (let i = 0; i < gr.len; i++) {
            if (removed.includes(i)) continue;
            mn = Math.min(mn, vals[i]);
            mx = Math.max(mx, vals[i]);
          }
          if (policy.fit === "mse") [mn, mx] = fitRange(vals, removed, mn, mx, levels);
          const [scale, min] = quantParams(mn, mx, levels);
          const word = packHalves(scale, min);
          if (kind === 0) store[l.off.parK + (bh * (l.T / g) + gr.t0 / g) * d + gr.c0] = word;
          else store[l.off.parV + (bh * l.T + gr.t0) * l.nGV + gr.c0 / l.gv] = word;
          removed.forEach((i, j) => {
            const x = vals[i];
            const cv = Math.fround(x - dequant(quantCode(x, scale, min, levels), scale, min));
            const t = gr.t0 + i * gr.stepT, c = gr.c0 + i * gr.stepC;
            // The entry's index is its place in the group: the token in a key group, the channel in a value group.
            const e = encodeOutlier(i, f16Bits(cv));
            corr[(t - c0) * d + c] = f16Value(e & 0xff80);
            outs[gr.at + j] = e;
          });
        }
        if (outs.length > 0) setU16s(store, outBase, outAt, outs);
        // Codes, packed along the channels of each token; the residual for the low-rank part.
        const codesAt = kind === 0 ? l.off.codesK : l.off.codesV;
        for (let t = c0; t < c1; t++) {
          for (let w = 0; w < W; w++) {
            let word = 0;
            for (let e = 0; e < perWord; e++) {
              const c = w * perWord + e;
              if (c >= d) break;
              const [scale, min] = par(t, c);
              const code = quantCode(Y(t, c), scale, min, levels);
              word = (word | (code << (e * bits))) >>> 0;
              res[(t - c0) * d + c] = X(t, c) - dequant(code, scale, min) - corr[(t - c0) * d + c];
            }
            store[codesAt + (bh * l.T + t) * W + w] = word;
          }
        }
      };
      quantizePass();
      if (l.rMax === 0) continue;
      const qAt = kind === 0 ? l.off.qK : l.off.qV;
      const pAt = (kind === 0 ? l.off.pK : l.off.pV) + (bh * l.nBlk + blk0) * l.PW;
      const halves = new Float64Array(2 * l.PW);
      if (rank > 0) {
        const p0 = new Float64Array(d * rank);
        for (let i = 0; i < d * rank; i++) p0[i] = powerStart(seed, kind, h, blk0, i);
        let { q, p, q8, qScale } = powerIteration(res, n, d, rank, loops, p0);
        for (let round = 0; round < policy.refits; round++) {
          for (let t = 0; t < n; t++) {
            for (let c = 0; c < d; c++) {
              let s = 0;
              for (let j = 0; j < rank; j++) s += q[t * rank + j] * p[c * rank + j];
              lowRank[t * d + c] = s;
            }
          }
          quantizePass();
          ({ q, p, q8, qScale } = powerIteration(res, n, d, rank, loops, p0));
        }
        for (let t = c0; t < c1; t++) {
          for (let w = 0; w < l.RW; w++) {
            let word = 0;
            for (let e = 0; e < 4; e++) {
              const j = 4 * w + e;
              if (j < rank) word |= (q8[(t - c0) * rank + j] & 0xff) << (8 * e);
            }
            store[qAt + (bh * l.T + t) * l.RW + w] = word >>> 0;
          }
        }
        // P [hd, rMax], then Q's column scales.
        for (let c = 0; c < d; c++) for (let j = 0; j < rank; j++) halves[c * l.rMax + j] = p[c * rank + j];
        for (let j = 0; j < rank; j++) halves[d * l.rMax + j] = qScale[j];
        for (let w = 0; w < l.PW; w++) store[pAt + w] = packHalves(halves[2 * w], halves[2 * w + 1]);
      } else {
        for (let t = c0; t < c1; t++) {
          store.fill(0, qAt + (bh * l.T + t) * l.RW, qAt + (bh * l.T + t + 1) * l.RW);
        }
        store.fill(0, pAt, pAt + l.PW);
      }
    }
  }
  for (let b = 0; b < l.batch; b++) {
    if (lanes && !lanes.includes(b)) continue;
    for (let j = blk0; j < c1 / l.buffer; j++) store[l.off.seg + b * l.nBlk + j] = blk0;
  }
}

/**
 * The dense keys (`kind` 0) or values (1) that the compressed tokens [t0, t1) of sequence `b`, KV head `h`
 * stand for: dequantized codes + Q Pᵀ + outlier corrections. Returns [t1 − t0, hd] float64.
 */
export function gearReconstructRef(
  l: GearLayout,
  store: Uint32Array,
  kind: 0 | 1,
  b: number,
  h: number,
  t0: number,
  t1: number,
): Float64Array {
  const { hd: d, group: g, W, perWord, bits } = l;
  const bh = b * l.nKV + h;
  const n = t1 - t0;
  const out = new Float64Array(n * d);
  const mask = 2 ** bits - 1;
  const codesAt = kind === 0 ? l.off.codesK : l.off.codesV;
  const qAt = kind === 0 ? l.off.qK : l.off.qV;
  const pBase = kind === 0 ? l.off.pK : l.off.pV;
  const pCache = new Map<number, Float64Array>();
  const pOf = (blk: number) => {
    let p = pCache.get(blk);
    if (!p) {
      p = new Float64Array(2 * l.PW);
      for (let w = 0; w < l.PW; w++) {
        const [a, bb] = unpackHalves(store[pBase + (bh * l.nBlk + blk) * l.PW + w]);
        p[2 * w] = a;
        p[2 * w + 1] = bb;
      }
      pCache.set(blk, p);
    }
    return p;
  };
  const qRow = new Float64Array(l.rMax);
  for (let t = t0; t < t1; t++) {
    const p = l.rMax > 0 ? pOf(store[l.off.seg + b * l.nBlk + Math.floor(t / l.buffer)]) : undefined;
    if (p) {
      for (let j = 0; j < l.rMax; j++) {
        qRow[j] = int8At(store, qAt + (bh * l.T + t) * l.RW, j) * p[d * l.rMax + j];
      }
    }
    for (let c = 0; c < d; c++) {
      const word = store[codesAt + (bh * l.T + t) * W + Math.floor(c / perWord)];
      const code = (word >>> ((c % perWord) * bits)) & mask;
      const [scale, min] = kind === 0
        ? unpackHalves(store[l.off.parK + (bh * (l.T / g) + Math.floor(t / g)) * d + c])
        : unpackHalves(store[l.off.parV + (bh * l.T + t) * l.nGV + Math.floor(c / l.gv)]);
      let x = code * scale + min;
      if (p) { for (let j = 0; j < l.rMax; j++) x += qRow[j] * p[c * l.rMax + j]; }
      out[(t - t0) * d + c] = x;
    }
    if (kind === 1) {
      for (let e = 0; e < l.mV; e++) {
        const ent = u16At(store, l.off.outV, (bh * l.T + t) * 2 * l.MW + e);
        const gi = l.kVFull > 0 ? Math.min(Math.floor(e / l.kVFull), l.nGV - 1) : 0;
        out[(t - t0) * d + gi * l.gv + (ent & 0x7f)] += f16Value(ent & 0xff80);
      }
    }
  }
  if (kind === 0 && l.kK > 0) {
    for (let tg = Math.floor(t0 / g); tg * g < t1; tg++) {
      for (let c = 0; c < d; c++) {
        for (let j = 0; j < l.kK; j++) {
          const ent = u16At(store, l.off.outK, ((bh * (l.T / g) + tg) * d + c) * l.kK + j);
          const t = tg * g + (ent & 0x7f);
          if (t >= t0 && t < t1) out[(t - t0) * d + c] += f16Value(ent & 0xff80);
        }
      }
    }
  }
  return out;
}

/** Shapes of {@linkcode gearAttentionRef}. */
export interface GearAttentionDims {
  /** Query heads (a multiple of the layout's KV heads). */
  nH: number;
  /** Score scale. */
  scale: number;
  /** Sliding window (0: none). */
  window: number;
}

/**
 * Attention of `rows` query rows per sequence (of every sequence, or of those in `lanes`; the others' rows stay
 * zero) at positions pos0.. over the compressed tokens [0, compressedBefore(pos0)) and the ring.
 * `q` [B, rows, nH, hd]; returns [B, rows, nH·hd]. Query head h reads KV head h / (nH / nKV). Scores and softmax
 * in float64.
 */
export function gearAttentionRef(
  l: GearLayout,
  store: Uint32Array,
  ringK: Float32Array,
  ringV: Float32Array,
  q: Float32Array,
  rows: number,
  pos0: number,
  dims: GearAttentionDims,
  lanes?: readonly number[],
): Float32Array {
  const { nH, scale, window } = dims;
  const d = l.hd, group = nH / l.nKV;
  const cComp = compressedBefore(pos0, l.buffer);
  const out = new Float32Array(l.batch * rows * nH * d);
  const last = pos0 + rows - 1;
  const scores = new Float64Array(last + 1);
  const acc = new Float64Array(d);
  for (let b = 0; b < l.batch; b++) {
    if (lanes && !lanes.includes(b)) continue;
    for (let kv = 0; kv < l.nKV; kv++) {
      const bh = b * l.nKV + kv;
      const kc = gearReconstructRef(l, store, 0, b, kv, 0, cComp);
      const vc = gearReconstructRef(l, store, 1, b, kv, 0, cComp);
      const key = (t: number, c: number) => t < cComp ? kc[t * d + c] : ringAt(l, ringK, bh, t, c);
      const val = (t: number, c: number) => t < cComp ? vc[t * d + c] : ringAt(l, ringV, bh, t, c);
      for (let r = 0; r < rows; r++) {
        const pos = pos0 + r;
        const start = window > 0 ? Math.max(0, pos - window + 1) : 0;
        for (let h = kv * group; h < (kv + 1) * group; h++) {
          const qo = ((b * rows + r) * nH + h) * d;
          let max = -Infinity;
          for (let t = start; t <= pos; t++) {
            let s = 0;
            for (let c = 0; c < d; c++) s += q[qo + c] * key(t, c);
            scores[t] = s * scale;
            max = Math.max(max, scores[t]);
          }
          let z = 0;
          for (let t = start; t <= pos; t++) z += scores[t] = Math.exp(scores[t] - max);
          acc.fill(0);
          for (let t = start; t <= pos; t++) {
            const p = scores[t] / z;
            for (let c = 0; c < d; c++) acc[c] += p * val(t, c);
          }
          for (let c = 0; c < d; c++) out[qo + c] = acc[c];
        }
      }
    }
  }
  return out;
}
