/**
 * GEAR compression on the GPU: one workgroup per (KV head, K or V, sequence) compresses the tokens of the
 * blocks a forward call completed — [⌊pos/buffer⌋·buffer, ⌊(pos + rows)/buffer⌋·buffer) — from the
 * full-precision ring into the store of `gear_layout.ts`, as one segment:
 *
 * 1. per group: outlier selection (greedy, the extreme that shrinks the range most), min/max of the rest,
 *    f16 scale and min, the outliers' corrections (u16 entries: a thread writes whole words, so it takes the
 *    key groups of two channels, or every value group of a token);
 * 2. codes packed along the channels of each token;
 * 3. the residual R = X − dequant, then the outliers' corrections subtracted by a thread per stored entry, in
 *    workgroup memory where a one-block segment fits (with its group parameters), else in a scratch buffer;
 * 4. rank-r factors of R by power iteration from a seeded start, with Gram–Schmidt QR in workgroup memory;
 *    Q stored as int8 per column scale, P as f16;
 * 5. the segment table entries of the new blocks.
 *
 * With a fit policy (`gear_fit.ts`), step 1 may pick each group's range by least squares instead: a thread per
 * group reads its values once into a private array and scores the 64 shrinks of the min/max range on the grid
 * there, 32 to a pass over the values (the outlier entries of a chunk of groups are packed into words by a
 * thread per unit after a barrier). Refit rounds repeat steps 1–4 on Y = X − L (L = Q·Pᵀ of the last round),
 * which is kept where the residual goes; the residual stays X − dequant − outliers, and the factors of the last
 * round are stored. A decode step's program (`oneBlock`) has the segment length fixed.
 *
 * The kernel runs 32 workgroups per layer for a 16-head model (one per SM): it is bound by the latency of each
 * thread's dependent instructions, so its loops keep independent sums in flight (docs/benchmarks.md, "several
 * tiles per workgroup").
 *
 * It matches `gearCompressRef` of `cpu/gear.ts` (up to float summation order and rare code ties; with refits,
 * the rounds after the first quantize an L that differs by float rounding, so a few more codes and ranges can
 * flip).
 *
 * @module
 */

import type { DType } from "../engine/types.ts";
import { checkFitPolicy, FIT_STEP, FIT_STEPS, GEAR_FIT_DEFAULT, type GearFitPolicy } from "./gear_fit.ts";
import { type GearLayout, HASH_WGSL, OUTLIER_WGSL } from "./gear_layout.ts";
import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { prelude } from "./wgsl.ts";

/** Parameters of one compress program. */
export interface GearCompressParams {
  /** The store layout. */
  layout: GearLayout;
  /** Rank of the segments this program writes (0: none; at most layout.rMax). */
  rank: number;
  /** Power-iteration rounds. */
  loops: number;
  /** Seed of the power iteration's start. */
  seed: number;
  /** Precision of the full-precision ring (f16: packed two per u32). */
  ringDtype: DType;
  /**
   * Workgroup memory the program may use (bytes; {@linkcode gearCompressProgram} passes the device's limit,
   * default 0). Where a block's residual fits, a one-block segment (every decode step's) keeps it there for the
   * power iteration instead of the scratch buffer.
   */
  workgroupBytes?: number;
  /**
   * How the segment is fitted (default {@linkcode GEAR_FIT_DEFAULT}: min/max ranges, no refits); refits need a
   * low-rank part, so a rank-0 program does none. Code for the least-squares ranges and the refit rounds is
   * generated only when asked for.
   */
  fit?: GearFitPolicy;
  /**
   * The program serves calls that complete at most one block per sequence (decode steps, one row per sequence):
   * the segment is then always `buffer` tokens, a constant, so the element-wise loops have fixed trip counts
   * the shader compiler can unroll and overlap.
   */
  oneBlock?: boolean;
}

const WG = 128;

/** Floats of the compress scratch buffer: per (sequence, head, K/V) the residual and Q of up to bufCap tokens. */
export function gearScratchFloats(l: GearLayout): number {
  return l.batch * l.nKV * 2 * l.bufCap * (l.hd + Math.max(1, l.rMax));
}

/**
 * WGSL of compression. Bindings: 0 store (u32, read-write); 1 K ring, 2 V ring [B, nKV, bufCap, hd] (f32, or
 * f16 packed in u32); 3 scratch f32 ({@linkcode gearScratchFloats}). Grid: (nKV, 2, sequences): sequence
 * `st.lane + z`, whose tokens the forward call at the step slot's pos and rows appended; or, for a batched step
 * (continuous batching), (nKV, 2, rows): decode row z, of its own lane and position, when it completed a block.
 */
export function gearCompressWgsl(p: GearCompressParams): string {
  const l = p.layout;
  if (!Number.isInteger(p.rank) || p.rank < 0 || p.rank > l.rMax) {
    throw new RangeError(`Cannot build GEAR compression: rank ${p.rank} is outside [0, ${l.rMax}]`);
  }
  if (p.rank > 0 && (!Number.isInteger(p.loops) || p.loops < 1)) {
    throw new RangeError(`Cannot build GEAR compression: loops must be a positive integer, got ${p.loops}`);
  }
  const f16 = p.ringDtype === "f16";
  const ringType = f16 ? "u32" : "f32";
  const read = (name: string) => f16 ? `unpack2x16float(${name}[i >> 1u])[i & 1u]` : `${name}[i]`;
  const R = p.rank;
  const o = l.off;
  const fit = p.fit ?? GEAR_FIT_DEFAULT;
  checkFitPolicy(fit);
  const mse = fit.fit === "mse";
  // With the mse fit, the outlier entries of a chunk of groups pass through gent [WG, KMAX] u32 (where any).
  const ents = mse && (l.kK > 0 || l.mV > 0);
  const kMax = Math.max(l.kK, l.kVFull, 1);
  // Tokens of a segment whose residual [NSH, hd] f32 and Q [NSH, rank] f32 are staged in workgroup memory
  // (0: none), beside ps, red and gent.
  // The group parameters of a staged segment [NPAR] u32 (f16 scale, min), read back by steps 2 and 3.
  const nPar = Math.max((l.buffer / l.group) * l.hd, l.buffer * l.nGV);
  const fixedBytes = 4 * (l.hd * Math.max(R, 1) + WG + (ents ? WG * kMax : 0) + nPar);
  const nsh = R > 0 && fixedBytes + 4 * l.buffer * (l.hd + R) <= (p.workgroupBytes ?? 0) ? l.buffer : 0;
  // Staged rows are XOR-swizzled within aligned blocks of up to 32 channels (the largest power of two dividing
  // hd), so threads reading one channel of many tokens, or many channels of one token, hit distinct banks.
  const swz = Math.min(32, l.hd & -l.hd) - 1;
  // Refits refit the low-rank part: a rank-0 program has none.
  const refits = R > 0 ? fit.refits : 0;
  // What the quantization reads at (absolute token t, channel c): the ring; with refits Y = X − L [n, D] f32,
  // kept where the residual goes (rsh or scratch; res_at), Y = X on the first round.
  const src = (t: string, c: string) =>
    refits > 0 ? `res_at(shr, sb, ${t} - c0, ${c})` : `ring_at(kind, bh, ${t}, ${c})`;
  // Entry i of the group in step 1: read once into vals [GLEN] f32 by the mse fit, else from the source.
  const gval = (i: string) => mse ? `vals[${i}]` : src(`t0 + ${i} * stT`, `ch0 + ${i} * stC`);
  const load = mse
    ? `      var vals: array<f32, GLEN>;
      for (var i = 0u; i < len; i++) { vals[i] = ${src("t0 + i * stT", "ch0 + i * stC")}; }
`
    : "";
  // The b of the mse grid, four to a vec4.
  const quads = Array.from({ length: FIT_STEPS / 4 }, (_, q) => q);
  // The a of the mse grid scored in one pass over the values.
  const ABLK = 4;
  if (FIT_STEPS % ABLK !== 0) throw new RangeError(`FIT_STEPS ${FIT_STEPS} is not a multiple of ${ABLK}`);
  const ablk = Array.from({ length: ABLK }, (_, a) => a);
  const range = mse
    ? `      // The outliers' values, then the kept values moved to the front of vals (in order), their min and max.
      var ov: array<f32, 16>;
      for (var j = 0u; j < nrem; j++) { ov[j] = vals[rem[j]]; }
      var m = 0u;
      var mn = 3.4e38; var mx = -3.4e38;
      for (var i = 0u; i < len; i++) {
        var gone = false;
        for (var j = 0u; j < nrem; j++) { if (rem[j] == i) { gone = true; } }
        if (gone) { continue; }
        let v = vals[i];
        vals[m] = v;
        m++;
        mn = min(mn, v); mx = max(mx, v);
      }
      // Least squares over the grid lo = mn + a·r·FSTEP, hi = mx − b·r·FSTEP (a, b < FSTEPS, r = mx − mn) of
      // the stored (f16) scale and min; the first best in (a, b) order, so min/max wins ties. Per block of
      // ABLK a, one pass over the values scores every (a, b) of the block, four b to a vec4 (independent sums,
      // so a thread's arithmetic overlaps; codes by the scale's reciprocal: 0 for a zero scale).
      let r = mx - mn;
      var sc = 0.0; var m16 = 0.0; var best = 0.0;
      for (var a0 = 0u; a0 < FSTEPS; a0 += ABLK) {
${
      ablk.map((aa) =>
        `        let z${aa} = f16r(mn + r * (f32(a0 + ${aa}u) * FSTEP));
` + quads.map((q) =>
          `        let s${aa}_${q} = f16r4((mx - r * (vec4<f32>(${
            [0, 1, 2, 3].map((e) => `${4 * q + e}.0`).join(", ")
          }) * FSTEP) - (mn + r * (f32(a0 + ${aa}u) * FSTEP))) / LEVELS);
        let i${aa}_${q} = select(vec4<f32>(0.0), 1.0 / s${aa}_${q}, s${aa}_${q} != vec4<f32>(0.0));
        var e${aa}_${q} = vec4<f32>(0.0);`
        ).join("\n")
      ).join("\n")
    }
        for (var i = 0u; i < m; i++) {
          let v = vals[i];
${
      ablk.map((aa) =>
        `          let u${aa} = v - z${aa};
` + quads.map((q) =>
          `          let d${aa}_${q} = u${aa} - clamp(floor(u${aa} * i${aa}_${q} + 0.5), vec4<f32>(0.0), vec4<f32>(LEVELS)) * s${aa}_${q};
          e${aa}_${q} += d${aa}_${q} * d${aa}_${q};`
        ).join("\n")
      ).join("\n")
    }
        }
${
      ablk.flatMap((aa) =>
        quads.flatMap((q) =>
          [..."xyzw"].map((lane, e) =>
            `        if (${
              aa + q + e === 0 ? "a0 == 0u || " : ""
            }e${aa}_${q}.${lane} < best) { best = e${aa}_${q}.${lane}; sc = s${aa}_${q}.${lane}; m16 = z${aa}; }`
          )
        )
      ).join("\n")
    }
      }`
    : `      var mn = 3.4e38; var mx = -3.4e38;
      for (var i = 0u; i < len; i++) {
        var gone = false;
        for (var j = 0u; j < nrem; j++) { if (rem[j] == i) { gone = true; } }
        if (gone) { continue; }
        let v = ${gval("i")};
        mn = min(mn, v); mx = max(mx, v);
      }
      let sc = f16r((mx - mn) / LEVELS);
      let m16 = f16r(mn);`;
  // Step 3's outlier corrections, subtracted from the residual after it is written: a thread per stored entry
  // (entries of zero value, the padding of groups with fewer outliers, are skipped, so no two threads write one
  // entry), in place of a search of the group's entries for every element.
  const scatterKeys = l.kK > 0
    ? `
    if (kind == 0u) {
      let kb = (bh * (T / G) + c0 / G) * D * KK;
      for (var i = li; i < (n / G) * D * KK; i += WG) {
        let e = u16_at(O_OUTK, kb + i);
        let v = out_value(e);
        if (v != 0.0) { res_sub(shr, sb, (i / (D * KK)) * G + (e & 0x7fu), (i / KK) % D, v); }
      }
    }`
    : "";
  const scatterValues = l.mV > 0
    ? `
    if (kind == 1u) {
      let vb = (bh * T + c0) * 2u * MW;
      for (var i = li; i < n * 2u * MW; i += WG) {
        let e = u16_at(O_OUTV, vb + i);
        let v = out_value(e);
        if (v != 0.0) { res_sub(shr, sb, i / (2u * MW), min((i % (2u * MW)) / KVF, NGV - 1u) * GV + (e & 0x7fu), v); }
      }
    }`
    : "";
  const scatter = scatterKeys || scatterValues
    ? `
  // The outliers' corrections, once every residual entry is written.
  q_barrier(shr);${scatterKeys}${scatterValues}`
    : "";
  // The power iteration's per-rank accumulators a0, a1, … (J in a template: the rank, ACC: its accumulator).
  const ranks = Array.from({ length: Math.max(R, 1) }, (_, j) => j);
  const accs = {
    decl: ranks.map((j) => `var a${j} = 0.0;`).join(" "),
    add: (term: string) => ranks.map((j) => `a${j} += x * ${term.replaceAll("J", `${j}u`)};`).join(" "),
    store: (stmt: string) =>
      ranks.map((j) => stmt.replaceAll("J", `${j}u`).replaceAll("ACC", `a${j}`)).join(" "),
  };
  const lowRankFit = R > 0
    ? `
  // --- 3. residual R [n, D] into scratch ---${
      refits > 0 ? "\n  // (over Y, each entry by the thread that read it)" : ""
    }
  for (var i = li; i < n * D; i += WG) {
    let t = c0 + i / D;
    let c = i % D;
    let x = ring_at(kind, bh, t, c);
    let pr = par_get(shr, kind, bh, t, c, c0);${refits > 0 ? "\n    let y = res_at(shr, sb, i / D, c);" : ""}
    let v = x - (f32(code_of(${refits > 0 ? "y" : "x"}, pr.x, pr.y)) * pr.x + pr.y);
    if (shr) { rsh[ridx(i / D, c)] = v; } else { scr[sb + i] = v; }
  }${scatter}
  storageBarrier();
  workgroupBarrier();
  // --- 4. power iteration ---
  for (var i = li; i < D * RANK; i += WG) { ps[i] = power_start(SEED, kind, h, c0 / NB, i); }
  workgroupBarrier();
  for (var it = 0u; it < LOOPS; it++) {
    gs_p(li);
    // Q = R·P (each residual entry read once for every rank; the sums run over c in order; one named
    // accumulator per rank, so they stay in registers).
    for (var t = li; t < n; t += WG) {
      ${accs.decl}
      for (var c = 0u; c < D; c++) {
        let x = res_at(shr, sb, t, c);
        ${accs.add("ps[c * RANK + J]")}
      }
      ${accs.store("q_put(shr, qb, t * RANK + J, ACC);")}
    }
    q_barrier(shr);
    if (it == LOOPS - 1u) {
      gs_q(li, qb, n, shr);
      // Q to int8 per column: scale max|q| / 127 (f16); P below is computed from the dequantized Q.
      for (var j = 0u; j < RANK; j++) {
        var part = 0.0;
        for (var t = li; t < n; t += WG) { part = max(part, abs(q_get(shr, qb, t * RANK + j))); }
        qsc[j] = f16r(reduce_max(part, li) / 127.0);
      }
      for (var i = li; i < n * RANK; i += WG) {
        let sc = qsc[i % RANK];
        q_put(shr, qb, i, select(0.0, f32(q8_code(q_get(shr, qb, i), sc)) * sc, sc > 0.0));
      }
      q_barrier(shr);
    }
    // P = Rᵀ·Q (each residual entry read once for every rank; the sums run over t in order).
    for (var c = li; c < D; c += WG) {
      ${accs.decl}
      for (var t = 0u; t < n; t++) {
        let x = res_at(shr, sb, t, c);
        ${accs.add("q_get(shr, qb, t * RANK + J)")}
      }
      ${accs.store("ps[c * RANK + J] = ACC;")}
    }
    workgroupBarrier();
  }`
    : "";
  const lowRankStore = R > 0
    ? `
  let qo = select(O_QV, O_QK, kind == 0u);
  for (var i = li; i < n * RW; i += WG) {
    let t = i / RW;
    let w = i % RW;
    var word = 0u;
    for (var e = 0u; e < 4u; e++) {
      let j = 4u * w + e;
      if (j < RANK && qsc[j] > 0.0) {
        word |= (u32(q8_code(q_get(shr, qb, t * RANK + j), qsc[j])) & 0xffu) << (8u * e);
      }
    }
    store[qo + (bh * T + c0 + t) * RW + w] = word;
  }
  // P [D, RMAX] f16, then the RMAX column scales of Q.
  let po = select(O_PV, O_PK, kind == 0u) + (bh * NBLK + c0 / NB) * PW;
  for (var w = li; w < PW; w += WG) {
    var v = vec2<f32>(0.0);
    for (var e = 0u; e < 2u; e++) {
      let hi = 2u * w + e;
      let c = hi / RMAX;
      let j = hi % RMAX;
      if (c < D && j < RANK) { v[e] = f16r(ps[c * RANK + j]); }
      if (c == D && j < RANK) { v[e] = qsc[j]; }
    }
    store[po + w] = pack2x16float(v);
  }`
    : l.rMax > 0
    ? `
  let qo = select(O_QV, O_QK, kind == 0u);
  for (var i = li; i < n * RW; i += WG) { store[qo + (bh * T + c0) * RW + i] = 0u; }
  let po = select(O_PV, O_PK, kind == 0u) + (bh * NBLK + c0 / NB) * PW;
  for (var w = li; w < PW; w += WG) { store[po + w] = 0u; }`
    : "";
  // Outlier selection of the group in step 1 (rem: the indices removed, in order).
  const outlierSelect = `      var rem: array<u32, 16>;
      var nrem = 0u;
      for (var it = 0u; it < k; it++) {
        if (len - nrem < 3u) { break; }
        var iMax = 0xffffffffu; var iMin = 0xffffffffu; var vMax = 0.0; var vMin = 0.0;
        for (var i = 0u; i < len; i++) {
          var gone = false;
          for (var j = 0u; j < nrem; j++) { if (rem[j] == i) { gone = true; } }
          if (gone) { continue; }
          let v = ${gval("i")};
          if (iMax == 0xffffffffu || v > vMax) { iMax = i; vMax = v; }
          if (iMin == 0xffffffffu || v < vMin) { iMin = i; vMin = v; }
        }
        var max2 = -3.4e38; var min2 = 3.4e38;
        for (var i = 0u; i < len; i++) {
          var gone = false;
          for (var j = 0u; j < nrem; j++) { if (rem[j] == i) { gone = true; } }
          if (gone) { continue; }
          let v = ${gval("i")};
          if (i != iMax && v > max2) { max2 = v; }
          if (i != iMin && v < min2) { min2 = v; }
        }
        rem[nrem] = select(iMin, iMax, vMax - max2 >= min2 - vMin);
        nrem++;
      }
`;
  // Step 1: with the mse fit a thread per group, else a thread per unit.
  // Where unit `u`'s outlier entries go (step 1, both fits): its first half-word hw0 in the outlier words and
  // its word count nw (a key unit: the key groups of a token group and two channels; a value unit: one token).
  const unitWords = (u: string, indent: string) =>
    [
      `var hw0 = (bh * T + c0 + ${u}) * 2u * MW;`,
      "var nw = MW;",
      "if (kind == 0u) {",
      `  hw0 = ((bh * (T / G) + c0 / G + ${u} / DP) * D + 2u * (${u} % DP)) * KK;`,
      "  nw = KK;",
      "}",
    ].join(`\n${indent}`);
  // A unit's entries ents, two 16-bit entries per word, stored at hw0.
  const storeUnit = (indent: string) =>
    `let ob = select(O_OUTV, O_OUTK, kind == 0u) + hw0 / 2u;\n${indent}` +
    "for (var w = 0u; w < nw; w++) { store[ob + w] = ents[2u * w] | (ents[2u * w + 1u] << 16u); }";
  const step1 = mse
    ? `  // --- 1. per group: outliers, least-squares scale and min ---
  // A thread takes a group (the key group of a channel, or a value group of a token), in chunks of whole
  // units (the key groups of two channels, or every value group of a token) whose outlier entries fill whole
  // words: after a barrier, a thread per unit packs them from gent.
  let nunits = select(n, (n / G) * DP, kind == 0u);
  let subs = select(NGV, 2u, kind == 0u);
  let upc = WG / subs;
  for (var u0 = 0u; u0 < nunits; u0 += upc) {
    let ui = u0 + li / subs;
    let sub = li % subs;
    if (li < upc * subs && ui < nunits && (kind == 1u || 2u * (ui % DP) + sub < D)) {
      var t0: u32; var ch0: u32; var len: u32; var stT: u32; var stC: u32; var k: u32; var pat: u32; var lp: u32;
      if (kind == 0u) {
        let tg = c0 / G + ui / DP;
        let c = 2u * (ui % DP) + sub;
        t0 = tg * G; ch0 = c; len = G; stT = 1u; stC = 0u; k = KK;
        pat = O_PARK + (bh * (T / G) + tg) * D + c;
        lp = (ui / DP) * D + c;
      } else {
        let t = c0 + ui;
        t0 = t; ch0 = sub * GV; len = select(GV, D - sub * GV, sub == NGV - 1u); stT = 0u; stC = 1u;
        k = select(KVF, KVL, sub == NGV - 1u);
        pat = O_PARV + (bh * T + t) * NGV + sub;
        lp = ui * NGV + sub;
      }
${load}${outlierSelect}${range}
      let pw = pack2x16float(vec2<f32>(sc, m16));
      store[pat] = pw;
      if (shr) { parsh[lp] = pw; }${
      ents
        ? `
      for (var j = 0u; j < nrem; j++) {
        let x = ov[j];
        let cv = x - (f32(code_of(x, sc, m16)) * sc + m16);
        gent[li * KMAX + j] = enc_out(rem[j], f16b(cv));
      }
      for (var j = nrem; j < k; j++) { gent[li * KMAX + j] = 0u; }`
        : ""
    }
    }${
      ents
        ? `
    workgroupBarrier();
    if (li < upc && u0 + li < nunits) {
      let uj = u0 + li;
      // Zeroed explicitly: naga hoists a loop's function-scope variables and zeroes them once, not per pass, and
      // a group with fewer outliers than entries leaves the rest 0.
      var ents = array<u32, NENT>();
      ${unitWords("uj", "      ")}
      for (var g = 0u; g < subs; g++) {
        let k = select(select(KVF, KVL, g == NGV - 1u), KK, kind == 0u);
        let eat = select(g * KVF, g * KK, kind == 0u);
        for (var j = 0u; j < k; j++) { ents[eat + j] = gent[(li * subs + g) * KMAX + j]; }
      }
      ${storeUnit("      ")}
    }
    workgroupBarrier();`
        : ""
    }
  }
  storageBarrier();
  workgroupBarrier();
`
    : `  // --- 1. per group: outliers, scale and min ---
  // A thread takes a unit whose outlier entries fill whole words: the key groups of a token group and two
  // channels (hd is even when there are outliers), or every value group of one token.
  let nunits = select(n, (n / G) * DP, kind == 0u);
  let subs = select(NGV, 2u, kind == 0u);
  for (var ui = li; ui < nunits; ui += WG) {
    var ents = array<u32, NENT>(); // zeroed per unit (see above)
    ${unitWords("ui", "    ")}
    for (var sub = 0u; sub < subs; sub++) {
      var t0: u32; var ch0: u32; var len: u32; var stT: u32; var stC: u32; var k: u32; var eat: u32; var pat: u32;
      var lp: u32;
      if (kind == 0u) {
        let tg = c0 / G + ui / DP;
        let c = 2u * (ui % DP) + sub;
        if (c >= D) { continue; }
        t0 = tg * G; ch0 = c; len = G; stT = 1u; stC = 0u; k = KK;
        eat = sub * KK;
        pat = O_PARK + (bh * (T / G) + tg) * D + c;
        lp = (ui / DP) * D + c;
      } else {
        let t = c0 + ui;
        let g = sub;
        t0 = t; ch0 = g * GV; len = select(GV, D - g * GV, g == NGV - 1u); stT = 0u; stC = 1u;
        k = select(KVF, KVL, g == NGV - 1u);
        eat = g * KVF;
        pat = O_PARV + (bh * T + t) * NGV + g;
        lp = ui * NGV + g;
      }
${outlierSelect}${range}
      let pw = pack2x16float(vec2<f32>(sc, m16));
      store[pat] = pw;
      if (shr) { parsh[lp] = pw; }
      for (var j = 0u; j < nrem; j++) {
        let i = rem[j];
        let x = ${src("t0 + i * stT", "ch0 + i * stC")};
        let cv = x - (f32(code_of(x, sc, m16)) * sc + m16);
        ents[eat + j] = enc_out(i, f16b(cv));
      }
    }
    ${storeUnit("    ")}
  }
  storageBarrier();
  workgroupBarrier();
`;
  // Steps 1 and 2.
  const quantize = `${step1}  // --- 2. codes ---
  let co = select(O_CV, O_CK, kind == 0u);
  for (var i = li; i < n * W; i += WG) {
    let t = c0 + i / W;
    let w = i % W;
    var word = 0u;
    for (var e = 0u; e < PERW; e++) {
      let c = w * PERW + e;
      if (c < D) {
        let pr = par_get(shr, kind, bh, t, c, c0);
        word |= code_of(${src("t", "c")}, pr.x, pr.y) << (e * BITS);
      }
    }
    store[co + (bh * T + t) * W + w] = word;
  }
  storageBarrier();
`;
  // With refits: Y = X, then rounds of steps 1–4, each but the last followed by Y = X − L for the next.
  const body = refits > 0
    ? `
  // --- Y = X for the first round ---
  for (var i = li; i < n * D; i += WG) {
    let v = ring_at(kind, bh, c0 + i / D, i % D);
    if (shr) { rsh[ridx(i / D, i % D)] = v; } else { scr[sb + i] = v; }
  }
  storageBarrier();
  workgroupBarrier();
  for (var rf = 0u; rf <= REFITS; rf++) {
${quantize}
  workgroupBarrier();${lowRankFit}
  if (rf < REFITS) {
    // --- Y = X − L, L(t, c) = Σ_j Qdeq[t, j]·f16(P[c, j]), over the residual the last loop read ---
    storageBarrier();
    for (var i = li; i < n * D; i += WG) {
      let t = i / D;
      let c = i % D;
      var lr = 0.0;
      for (var j = 0u; j < RANK; j++) { lr += q_get(shr, qb, t * RANK + j) * f16r(ps[c * RANK + j]); }
      let v = ring_at(kind, bh, c0 + t, c) - lr;
      if (shr) { rsh[ridx(t, c)] = v; } else { scr[sb + i] = v; }
    }
    storageBarrier();
    workgroupBarrier();
  }
  }${lowRankStore}`
    : `${quantize}${lowRankFit}${lowRankStore}`;
  return `${prelude()}
${HASH_WGSL}
${OUTLIER_WGSL}
const WG: u32 = ${WG}u;
const D: u32 = ${l.hd}u;
const NKV: u32 = ${l.nKV}u;
const T: u32 = ${l.T}u;
const W: u32 = ${l.W}u;
const PERW: u32 = ${l.perWord}u;
const BITS: u32 = ${l.bits}u;
const LEVELS: f32 = ${2 ** l.bits - 1}.0;
const G: u32 = ${l.group}u;
const GV: u32 = ${l.gv}u;
const NGV: u32 = ${l.nGV}u;
const KK: u32 = ${l.kK}u;
const KVF: u32 = ${l.kVFull}u;
const KVL: u32 = ${l.kVLast}u;
const MV: u32 = ${l.mV}u;
const MW: u32 = ${l.MW}u;
const DP: u32 = ${Math.ceil(l.hd / 2)}u;
const NENT: u32 = ${Math.max(2 * l.kK, 2 * l.MW, 1)}u;
const RANK: u32 = ${Math.max(R, 1)}u;
const RMAX: u32 = ${Math.max(l.rMax, 1)}u;
const RW: u32 = ${l.RW}u;
const PW: u32 = ${l.PW}u;
const LOOPS: u32 = ${p.loops}u;
const SEED: u32 = ${p.seed >>> 0}u;
const NB: u32 = ${l.buffer}u;
const BUFCAP: u32 = ${l.bufCap}u;
const NBLK: u32 = ${l.nBlk}u;
const REGION: u32 = ${l.bufCap * (l.hd + Math.max(1, l.rMax))}u;
const O_CK: u32 = ${o.codesK}u;
const O_CV: u32 = ${o.codesV}u;
const O_PARK: u32 = ${o.parK}u;
const O_PARV: u32 = ${o.parV}u;
const O_QK: u32 = ${o.qK}u;
const O_QV: u32 = ${o.qV}u;
const O_PK: u32 = ${o.pK}u;
const O_PV: u32 = ${o.pV}u;
const O_OUTK: u32 = ${o.outK}u;
const O_OUTV: u32 = ${o.outV}u;
const O_SEG: u32 = ${o.seg}u;${
    mse
      ? `
const GLEN: u32 = ${l.group}u;
const KMAX: u32 = ${kMax}u;
const FSTEPS: u32 = ${FIT_STEPS}u;
const FSTEP: f32 = ${FIT_STEP};
const ABLK: u32 = ${ABLK}u;`
      : ""
  }${refits > 0 ? `\nconst REFITS: u32 = ${refits}u;` : ""}
@group(0) @binding(0) var<storage, read_write> store: array<u32>;
@group(0) @binding(1) var<storage, read> rk: array<${ringType}>;
@group(0) @binding(2) var<storage, read> rv: array<${ringType}>;
@group(0) @binding(3) var<storage, read_write> scr: array<f32>;
var<workgroup> ps: array<f32, ${l.hd * Math.max(R, 1)}>;
var<workgroup> red: array<vec4<f32>, ${WG / 4}>;${
    ents ? `\nvar<workgroup> gent: array<u32, ${WG * kMax}>;` : ""
  }
var<private> qsc: array<f32, ${Math.max(R, 1)}>;
// The residual of a segment of at most NSH tokens [NSH, D] f32, rows swizzled (ridx).
const NSH: u32 = ${nsh}u;
var<workgroup> rsh: array<f32, ${Math.max(1, nsh * l.hd)}>;
// The group parameters of such a segment (f16 scale, min): keys [NSH / G, D], values [NSH, NGV].
var<workgroup> parsh: array<u32, ${nsh > 0 ? nPar : 1}>;
// Q of such a segment [NSH, RANK] f32 (q_get).
var<workgroup> qsh: array<f32, ${Math.max(1, nsh * Math.max(R, 1))}>;
fn ridx(t: u32, c: u32) -> u32 {
  return t * D + (c ^ (t & ${swz}u));
}
// Residual entry (token t of the segment, channel c): staged (shr) or in the scratch buffer from sb.
fn res_at(shr: bool, sb: u32, t: u32, c: u32) -> f32 {
  if (shr) { return rsh[ridx(t, c)]; }
  return scr[sb + t * D + c];
}
// Entry i of Q [n, RANK] f32: staged in qsh with the residual (shr), else in the scratch buffer from qb.
fn q_get(shr: bool, qb: u32, i: u32) -> f32 {
  if (shr) { return qsh[i]; }
  return scr[qb + i];
}
fn q_put(shr: bool, qb: u32, i: u32, v: f32) {
  if (shr) { qsh[i] = v; } else { scr[qb + i] = v; }
}
// The barrier after Q's entries were written, for where they live.
fn q_barrier(shr: bool) {
  if (shr) { workgroupBarrier(); } else { storageBarrier(); }
}

fn ring_at(kind: u32, bh: u32, t: u32, c: u32) -> f32 {
  let i = (bh * BUFCAP + t % BUFCAP) * D + c;
  if (kind == 0u) { return ${read("rk")}; }
  return ${read("rv")};
}
fn f16r(x: f32) -> f32 {
  return unpack2x16float(pack2x16float(vec2<f32>(clamp(x, -65504.0, 65504.0), 0.0))).x;
}
${
    mse
      ? `fn f16r4(x: vec4<f32>) -> vec4<f32> {
  let c = clamp(x, vec4<f32>(-65504.0), vec4<f32>(65504.0));
  return vec4<f32>(unpack2x16float(pack2x16float(c.xy)), unpack2x16float(pack2x16float(c.zw)));
}
`
      : ""
  }fn f16b(x: f32) -> u32 {
  return pack2x16float(vec2<f32>(clamp(x, -65504.0, 65504.0), 0.0)) & 0xffffu;
}
fn code_of(x: f32, sc: f32, mn: f32) -> u32 {
  if (sc == 0.0) { return 0u; }
  return u32(clamp(floor((x - mn) / sc + 0.5), 0.0, LEVELS));
}
fn par_of(kind: u32, bh: u32, t: u32, c: u32) -> vec2<f32> {
  if (kind == 0u) { return unpack2x16float(store[O_PARK + (bh * (T / G) + t / G) * D + c]); }
  return unpack2x16float(store[O_PARV + (bh * T + t) * NGV + c / GV]);
}
// The parameters of (absolute token t, channel c) of the segment from c0: staged (shr) or in the store.
fn par_get(shr: bool, kind: u32, bh: u32, t: u32, c: u32, c0: u32) -> vec2<f32> {
  if (shr) {
    if (kind == 0u) { return unpack2x16float(parsh[((t - c0) / G) * D + c]); }
    return unpack2x16float(parsh[(t - c0) * NGV + c / GV]);
  }
  return par_of(kind, bh, t, c);
}
fn u16_at(base: u32, i: u32) -> u32 {
  return (store[base + (i >> 1u)] >> ((i & 1u) * 16u)) & 0xffffu;
}
// Subtracts v from residual entry (token t of the segment, channel c).
fn res_sub(shr: bool, sb: u32, t: u32, c: u32, v: f32) {
  if (shr) { rsh[ridx(t, c)] -= v; } else { scr[sb + t * D + c] -= v; }
}
fn q8_code(x: f32, sc: f32) -> i32 {
  return i32(clamp(floor(x / sc + 0.5), -127.0, 127.0));
}
// Reductions over the workgroup in two barriers: every thread reads all WG partials (the same addresses for
// all, so the reads are broadcasts) as vec4s into two accumulators, instead of a tree of log2(WG) barriers.
fn reduce_max(v: f32, li: u32) -> f32 {
  red[li / 4u][li % 4u] = v;
  workgroupBarrier();
  var a = red[0];
  var b = red[1];
  for (var i = 2u; i < WG / 4u; i += 2u) {
    a = max(a, red[i]);
    b = max(b, red[i + 1u]);
  }
  workgroupBarrier();
  let m = max(a, b);
  return max(max(m.x, m.y), max(m.z, m.w));
}
fn reduce(v: f32, li: u32) -> f32 {
  red[li / 4u][li % 4u] = v;
  workgroupBarrier();
  var a = red[0];
  var b = red[1];
  for (var i = 2u; i < WG / 4u; i += 2u) {
    a += red[i];
    b += red[i + 1u];
  }
  workgroupBarrier();
  return dot(a + b, vec4<f32>(1.0));
}
fn gs_p(li: u32) {
  for (var j = 0u; j < RANK; j++) {
    for (var k = 0u; k < j; k++) {
      var part = 0.0;
      for (var c = li; c < D; c += WG) { part += ps[c * RANK + j] * ps[c * RANK + k]; }
      let d = reduce(part, li);
      for (var c = li; c < D; c += WG) { ps[c * RANK + j] -= d * ps[c * RANK + k]; }
      workgroupBarrier();
    }
    var part = 0.0;
    for (var c = li; c < D; c += WG) { part += ps[c * RANK + j] * ps[c * RANK + j]; }
    let nn = sqrt(reduce(part, li));
    let inv = select(0.0, 1.0 / nn, nn > 1e-20);
    for (var c = li; c < D; c += WG) { ps[c * RANK + j] *= inv; }
    workgroupBarrier();
  }
}
fn gs_q(li: u32, qb: u32, n: u32, shr: bool) {
  for (var j = 0u; j < RANK; j++) {
    for (var k = 0u; k < j; k++) {
      var part = 0.0;
      for (var t = li; t < n; t += WG) { part += q_get(shr, qb, t * RANK + j) * q_get(shr, qb, t * RANK + k); }
      let d = reduce(part, li);
      for (var t = li; t < n; t += WG) {
        q_put(shr, qb, t * RANK + j, q_get(shr, qb, t * RANK + j) - d * q_get(shr, qb, t * RANK + k));
      }
      q_barrier(shr);
    }
    var part = 0.0;
    for (var t = li; t < n; t += WG) { part += q_get(shr, qb, t * RANK + j) * q_get(shr, qb, t * RANK + j); }
    let nn = sqrt(reduce(part, li));
    let inv = select(0.0, 1.0 / nn, nn > 1e-20);
    for (var t = li; t < n; t += WG) { q_put(shr, qb, t * RANK + j, q_get(shr, qb, t * RANK + j) * inv); }
    q_barrier(shr);
  }
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let h = wg.x;
  let kind = wg.y;
  // Unbatched: sequence st.lane + z, the call's rows from st.pos. Batched: decode row z of its own lane and
  // position (a row that completes no block returns).
  var b = st.lane + wg.z;
  var p0 = st.pos;
  var nr = st.rows;
  if (st.batched != 0u) {
    if (wg.z >= st.rows) { return; }
    b = row_lane(wg.z);
    p0 = row_pos(wg.z);
    nr = 1u;
  }
  let bh = b * NKV + h;
  let c0 = (p0 / NB) * NB;
  let c1 = ((p0 + nr) / NB) * NB;
  if (c1 <= c0) { return; }
  let n = ${p.oneBlock ? "NB; // one block per call (oneBlock)" : "c1 - c0;"}
  let sb = (bh * 2u + kind) * REGION;
  let shr = n <= NSH;
  let qb = sb + BUFCAP * D;
${body}
  // --- 5. segment table ---
  if (h == 0u && kind == 0u) {
    for (var j = c0 / NB + li; j < c1 / NB; j += WG) { store[O_SEG + b * NBLK + j] = c0 / NB; }
  }
}`;
}

/** The compress program. */
export function gearCompressProgram(
  device: GPUDevice,
  ring: StepRing,
  p: GearCompressParams,
): Promise<Program> {
  const code = gearCompressWgsl({
    ...p,
    workgroupBytes: p.workgroupBytes ?? device.limits.maxComputeWorkgroupStorageSize,
  });
  const fit = p.fit && (p.fit.fit !== "minmax" || p.fit.refits > 0) ? `-${p.fit.fit}-f${p.fit.refits}` : "";
  return P.get(device, ring, `gear-compress-r${p.rank}${fit}${p.oneBlock ? "-block" : ""}`, code, [
    "write",
    "read",
    "read",
    "write",
  ]);
}
