import assert from "node:assert/strict";
import { GEAR_FIT_DEFAULT, type GearFitPolicy } from "../gear_fit.ts";
import { gearLayout } from "../gear_layout.ts";
import { randomArray, rng } from "../test_util.ts";
import {
  dequant,
  fitRange,
  gearCompressRef,
  gearReconstructRef,
  quantCode,
  quantParams,
  selectOutliers,
} from "./gear.ts";

/** Squared error of quantizing `vals` (f32) with the stored scale and min of the range [lo, hi]. */
function squaredError(vals: readonly number[], lo: number, hi: number, levels: number): number {
  const [scale, min] = quantParams(lo, hi, levels);
  let e = 0;
  for (const x of vals) e += (x - dequant(quantCode(x, scale, min, levels), scale, min)) ** 2;
  return e;
}

Deno.test("fitRange: the mse range has no more squared error than min/max, and less on most groups", () => {
  const r = rng(17);
  for (const bits of [2, 4, 8]) {
    const levels = 2 ** bits - 1;
    let better = 0, groups = 0;
    for (const len of [5, 32, 64, 128]) {
      for (let trial = 0; trial < 40; trial++) {
        // Roughly normal values (a sum of uniforms), a few of them large, with up to 2 outliers removed.
        const vals = new Float32Array(len);
        for (let i = 0; i < len; i++) {
          vals[i] = r() + r() + r() + (r(0, 1) < 0.03 ? 8 * r() : 0) + 0.5 * trial;
        }
        const removed = selectOutliers(vals, trial % 3);
        const kept = Array.from(vals).filter((_, i) => !removed.includes(i));
        const mn = Math.min(...kept), mx = Math.max(...kept);
        const [lo, hi] = fitRange(vals, removed, mn, mx, levels);
        assert.ok(mn <= lo && lo <= hi && hi <= mx, `range [${lo}, ${hi}] outside [${mn}, ${mx}]`);
        const eFit = squaredError(kept, lo, hi, levels), eMinMax = squaredError(kept, mn, mx, levels);
        assert.ok(eFit <= eMinMax, `${bits} bits, ${len} values: mse ${eFit} > min/max ${eMinMax}`);
        groups++;
        if (eFit < eMinMax) better++;
      }
    }
    // At 2 and 4 bits the min/max range wastes levels on most such groups.
    if (bits < 8) assert.ok(better > groups / 2, `${bits} bits: better on ${better} of ${groups} groups`);
  }
});

Deno.test("fitRange: min/max wins ties (a constant group)", () => {
  assert.deepEqual(fitRange(new Float32Array([0.5, 0.5, 0.5]), [], 0.5, 0.5, 3), [0.5, 0.5]);
});

/** Rings [1, 2, bufCap, hd] of a rank-2 trend, noise and rare large entries. */
function trendRing(bufCap: number, hd: number, r: (lo?: number, hi?: number) => number): Float32Array {
  const a = randomArray(r, 2 * bufCap * hd);
  const u = randomArray(r, 2 * bufCap), v = randomArray(r, 2 * hd);
  for (let i = 0; i < a.length; i++) {
    const t = Math.floor(i / hd) % bufCap, c = i % hd;
    a[i] = 0.6 * a[i] + 1.5 * (u[2 * t] * v[2 * c] + u[2 * t + 1] * v[2 * c + 1]) +
      (r(0, 1) < 0.01 ? 5 * r() : 0);
  }
  return a;
}

Deno.test("gearCompressRef: the mse fit and each refit lower ‖X − D − L − S‖ of every head, K and V", () => {
  const shapes = [
    { bits: 2, rank: 4, outliers: 0.02, hd: 32, group: 64 },
    { bits: 2, rank: 2, outliers: 0, hd: 64, group: 32 },
    { bits: 4, rank: 2, outliers: 0.05, hd: 32, group: 32 },
  ];
  const policies: GearFitPolicy[] = [
    GEAR_FIT_DEFAULT,
    { fit: "mse", refits: 0 },
    { fit: "mse", refits: 1 },
    { fit: "mse", refits: 2 },
    { fit: "minmax", refits: 2 },
  ];
  for (const [si, s] of shapes.entries()) {
    const l = gearLayout({ ...s, batch: 1, nKV: 2, capacity: 128, buffer: 64, rMax: 4, maxRows: 128 });
    const r = rng(100 + si);
    const rk = trendRing(l.bufCap, l.hd, r), rv = trendRing(l.bufCap, l.hd, r);
    // errs[policy][head·2 + kind]: the squared error of the reconstruction of a 128-token segment.
    const errs = policies.map((policy) => {
      const store = new Uint32Array(l.words);
      gearCompressRef(l, store, rk, rv, 0, 128, s.rank, 3, 5, undefined, policy);
      const out: number[] = [];
      for (let h = 0; h < l.nKV; h++) {
        for (const kind of [0, 1] as const) {
          const rec = gearReconstructRef(l, store, kind, 0, h, 0, 128);
          const src = kind === 0 ? rk : rv;
          let e = 0;
          for (let t = 0; t < 128; t++) {
            for (let c = 0; c < l.hd; c++) e += (rec[t * l.hd + c] - src[(h * l.bufCap + t) * l.hd + c]) ** 2;
          }
          out.push(e);
        }
      }
      return out;
    });
    const [minmax, mse0, mse1, mse2, minmax2] = errs;
    // Strictly: a fit that changed nothing would fail.
    for (let i = 0; i < minmax.length; i++) {
      const at = `${JSON.stringify(s)} head ${i >> 1} kind ${i & 1}`;
      assert.ok(mse0[i] < minmax[i], `${at}: mse ${mse0[i]} > min/max ${minmax[i]}`);
      assert.ok(mse1[i] < mse0[i], `${at}: 1 refit ${mse1[i]} > none ${mse0[i]}`);
      assert.ok(mse2[i] < mse1[i], `${at}: 2 refits ${mse2[i]} > 1 ${mse1[i]}`);
      assert.ok(minmax2[i] < minmax[i], `${at}: min/max with 2 refits ${minmax2[i]} > none ${minmax[i]}`);
    }
  }
});

/** A one-block layout of one 16-wide KV head at 2 bits, rank 2, with `outliers`. */
function oneBlockLayout(outliers: number) {
  return gearLayout({
    batch: 1,
    nKV: 1,
    hd: 16,
    capacity: 64,
    bits: 2,
    group: 32,
    buffer: 64,
    rMax: 2,
    outliers,
    maxRows: 64,
  });
}

Deno.test("gearCompressRef: the default policy is min/max without refits; rank 0 has no refits", () => {
  const l = oneBlockLayout(0.05);
  const r = rng(3);
  const rk = trendRing(l.bufCap, l.hd, r).subarray(0, l.bufCap * l.hd);
  const rv = trendRing(l.bufCap, l.hd, r).subarray(0, l.bufCap * l.hd);
  const run = (rank: number, policy?: GearFitPolicy) => {
    const store = new Uint32Array(l.words);
    gearCompressRef(l, store, rk, rv, 0, 64, rank, 3, 1, undefined, policy);
    return store;
  };
  assert.deepEqual(run(2), run(2, { fit: "minmax", refits: 0 }));
  // Without a low-rank part there is nothing to refit: the mse fit alone.
  assert.deepEqual(run(0, { fit: "mse", refits: 2 }), run(0, { fit: "mse", refits: 0 }));
  assert.notDeepEqual(run(0, { fit: "mse", refits: 0 }), run(0));
});

Deno.test("gearCompressRef rejects a malformed fit policy", () => {
  const l = oneBlockLayout(0);
  const ring = new Float32Array(l.bufCap * l.hd);
  const run = (policy: GearFitPolicy) =>
    gearCompressRef(l, new Uint32Array(l.words), ring, ring, 0, 64, 2, 3, 1, undefined, policy);
  assert.throws(() => run({ fit: "lsq" as "mse", refits: 0 }), TypeError);
  assert.throws(() => run({ fit: "mse", refits: -1 }), RangeError);
  assert.throws(() => run({ fit: "mse", refits: 1.5 }), RangeError);
});
