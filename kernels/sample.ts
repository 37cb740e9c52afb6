/**
 * Token sampling on the GPU, one workgroup: arg-max for greedy decoding, otherwise temperature, top-k and
 * top-p by value thresholds found with a bisection over the bit patterns of the logits, and a draw from the
 * seeded counter-based generator of kernels/cpu/sampling.ts. The bisections (64 passes) read only the logits
 * within 30 of the largest after the temperature, copied first (in id order) to a scratch row: e^-30 ≈ 1e-13,
 * so the others weigh nothing in a threshold's mass, and a top-k set larger than the copied ones differs from
 * the exact one only by such ids; the more peaked the row, the fewer the passes read. The chosen id is written
 * into the token ring, where the next step's embedding lookup reads it: sampling never waits for the CPU. In a
 * batched step each row (one workgroup each) samples its own sequence with its lane's parameters.
 *
 * @module
 */

import { type Program, Program as P, type StepRing } from "./gpu.ts";
import { prelude } from "./wgsl.ts";

/** Bytes of one lane's sampler parameters. */
export const SAMPLER_UNIFORM_BYTES = 16;

/** One lane's sampler parameters: temperature f32, topK u32, topP f32, seed u32. */
export function samplerUniform(
  p: { temperature: number; topK: number; topP: number; seed: number },
): ArrayBuffer {
  const buf = new ArrayBuffer(SAMPLER_UNIFORM_BYTES);
  const dv = new DataView(buf);
  dv.setFloat32(0, p.temperature, true);
  dv.setUint32(4, p.topK >>> 0, true);
  dv.setFloat32(8, p.topP, true);
  dv.setUint32(12, p.seed >>> 0, true);
  return buf;
}

const WG = 256;

/**
 * WGSL statements applying `stmt(v, i)` (value expression, id expression) to every id of the row: each thread
 * takes 8 consecutive ids per round (rounds of WG · 8), their loads issued together — a loop of one load per
 * step waits on each load in turn, which made every pass over a 50k vocabulary tens of µs. A thread visits its
 * ids in increasing order.
 */
function overRow(stmt: (v: string, i: string) => string): string {
  const loads = Array.from({ length: 8 }, (_, j) => `let v${j} = logits[row + i0 + ${j}u];`).join(" ");
  const body = Array.from({ length: 8 }, (_, j) => `{ ${stmt(`v${j}`, `i0 + ${j}u`)} }`).join("\n      ");
  return `{
    var i0 = li * 8u;
    for (; i0 + 8u <= V; i0 += WG * 8u) {
      ${loads}
      ${body}
    }
    for (var i = i0; i < min(i0 + 8u, V); i++) { let v = logits[row + i]; ${stmt("v", "i")} }
  }`;
}

/**
 * WGSL applying `stmt(v)` to the `n` values of the scratch row (the candidates), eight at a time per thread as
 * {@linkcode overRow}.
 */
function overCandidates(stmt: (v: string) => string): string {
  const loads = Array.from({ length: 8 }, (_, j) => `let v${j} = scr[row + i0 + ${j}u];`).join(" ");
  const body = Array.from({ length: 8 }, (_, j) => `{ ${stmt(`v${j}`)} }`).join("\n      ");
  return `{
    var i0 = li * 8u;
    for (; i0 + 8u <= n; i0 += WG * 8u) {
      ${loads}
      ${body}
    }
    for (var i = i0; i < min(i0 + 8u, n); i++) { let v = scr[row + i]; ${stmt("v")} }
  }`;
}

/**
 * WGSL of the sampler. Bindings: 0 logits [rows, V] f32 (row r reads row `st.logits_row + r`); 1 sampler
 * parameters [lanes] (SAMPLER_UNIFORM_BYTES each; row r uses lane `row_lane(r)`'s); 2 token ring
 * [lanes, ring_stride] u32 (row r writes slot `row_step(r)` of its lane); 3 scratch, the logits' shape (row r
 * uses the logits row's place). Grid: rows workgroups.
 */
export function sampleWgsl(vocab: number): string {
  const chunk = Math.ceil(vocab / WG);
  return `${prelude()}
const V: u32 = ${vocab}u;
const WG: u32 = ${WG}u;
const CHUNK: u32 = ${chunk}u;
struct Sampler { temperature: f32, top_k: u32, top_p: f32, seed: u32 }
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> sps: array<Sampler>;
@group(0) @binding(2) var<storage, read_write> ring: array<u32>;
@group(0) @binding(3) var<storage, read_write> scr: array<f32>;
var<workgroup> rv: array<f32, ${WG}>;
var<workgroup> ri: array<u32, ${WG}>;
var<workgroup> ncand: u32;

fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}
// Order-preserving map of f32 to u32: a larger float has a larger key.
fn fkey(f: f32) -> u32 {
  let b = bitcast<u32>(f);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
fn sum_f(li: u32, v: f32) -> f32 {
  rv[li] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (li < s) { rv[li] += rv[li + s]; }
    workgroupBarrier();
  }
  let total = rv[0];
  workgroupBarrier();
  return total;
}
fn sum_u(li: u32, v: u32) -> u32 {
  ri[li] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (li < s) { ri[li] += ri[li + s]; }
    workgroupBarrier();
  }
  let total = ri[0];
  workgroupBarrier();
  return total;
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.x;
  if (r >= st.rows) { return; }
  let sp = sps[row_lane(r)];
  let out = row_lane(r) * st.ring_stride + row_step(r);
  let row = (st.logits_row + r) * V;
  // Arg-max over the row, lowest id on ties (a thread's first maximum is its lowest id).
  var bv = -3.4e38;
  var bi = 0xffffffffu;
  ${overRow((v, i) => `if (${v} > bv) { bv = ${v}; bi = ${i}; }`)}
  rv[li] = bv;
  ri[li] = bi;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (li < s) {
      let ov = rv[li + s];
      let oi = ri[li + s];
      if (ov > rv[li] || (ov == rv[li] && oi < ri[li])) { rv[li] = ov; ri[li] = oi; }
    }
    workgroupBarrier();
  }
  let best = ri[0];
  let lmax = rv[0];
  workgroupBarrier();
  if (sp.temperature <= 0.0 || sp.top_k == 1u) {
    if (li == 0u) { ring[out] = best; }
    return;
  }
  let tinv = 1.0 / sp.temperature;
  let m = lmax / sp.temperature;
  // The candidates: the logits within 30 of the largest after the temperature, each thread's in its visiting
  // order after those of the threads before it (an exclusive prefix sum of the counts), so the scratch row and
  // every sum over it are the same on every run.
  let cut = lmax - 30.0 * sp.temperature;
  var cl = 0u;
  ${overRow((v) => `cl += select(0u, 1u, ${v} >= cut);`)}
  ri[li] = cl;
  workgroupBarrier();
  for (var s = 1u; s < WG; s <<= 1u) {
    let t = select(0u, ri[li - s], li >= s);
    workgroupBarrier();
    ri[li] += t;
    workgroupBarrier();
  }
  var slot = ri[li] - cl;
  if (li == WG - 1u) { ncand = ri[li]; }
  let n = workgroupUniformLoad(&ncand);
  ${overRow((v) => `if (${v} >= cut) { scr[row + slot] = ${v}; slot++; }`)}
  storageBarrier();
  // Top-k: the largest key threshold that still keeps at least top_k ids.
  var thr = 0u;
  if (sp.top_k > 0u && sp.top_k < V) {
    for (var b = 31i; b >= 0i; b--) {
      let cand = thr | (1u << u32(b));
      var cnt = 0u;
      ${overCandidates((v) => `cnt += select(0u, 1u, fkey(${v}) >= cand);`)}
      if (sum_u(li, cnt) >= sp.top_k) { thr = cand; }
    }
  }
  var zl = 0.0;
  ${overCandidates((v) => `if (fkey(${v}) >= thr) { zl += exp(${v} * tinv - m); }`)}
  let z = sum_f(li, zl);
  // Top-p: the largest threshold whose kept mass still reaches top_p of the mass.
  if (sp.top_p < 1.0) {
    var pthr = 0u;
    for (var b = 31i; b >= 0i; b--) {
      let cand = pthr | (1u << u32(b));
      var ml = 0.0;
      ${
    overCandidates((v) => `let k = fkey(${v}); if (k >= cand && k >= thr) { ml += exp(${v} * tinv - m); }`)
  }
      if (sum_f(li, ml) >= sp.top_p * z) { pthr = cand; }
    }
    thr = max(thr, pthr);
  }
  // Draw: walk the kept mass in id order; each thread owns a contiguous chunk of ids.
  let lo = li * CHUNK;
  let hi = min(lo + CHUNK, V);
  var cs = 0.0;
  var c0 = lo;
  for (; c0 + 8u <= hi; c0 += 8u) {
    ${Array.from({ length: 8 }, (_, j) => `let w${j} = logits[row + c0 + ${j}u];`).join(" ")}
    ${
    Array.from({ length: 8 }, (_, j) => `if (fkey(w${j}) >= thr) { cs += exp(w${j} * tinv - m); }`).join(
      "\n    ",
    )
  }
  }
  for (var i = c0; i < hi; i++) {
    let v = logits[row + i];
    if (fkey(v) >= thr) { cs += exp(v * tinv - m); }
  }
  rv[li] = cs;
  workgroupBarrier();
  if (li == 0u) {
    var total = 0.0;
    for (var j = 0u; j < WG; j++) { total += rv[j]; }
    let u = f32(pcg(pcg(sp.seed) ^ row_step(r)) >> 8u) / 16777216.0;
    let goal = u * total;
    var acc = 0.0;
    var chosen = best;
    var found = false;
    for (var j = 0u; j < WG && !found; j++) {
      if (acc + rv[j] > goal) {
        let jl = j * CHUNK;
        let jh = min(jl + CHUNK, V);
        // In id order, eight loads at a time.
        var i0 = jl;
        for (; i0 + 8u <= jh && !found; i0 += 8u) {
          ${Array.from({ length: 8 }, (_, j) => `let w${j} = logits[row + i0 + ${j}u];`).join(" ")}
          ${
    Array.from(
      { length: 8 },
      (_, j) =>
        `if (!found && fkey(w${j}) >= thr) { acc += exp(w${j} * tinv - m); if (acc > goal) { chosen = i0 + ${j}u; found = true; } }`,
    ).join("\n          ")
  }
        }
        for (var i = i0; i < jh && !found; i++) {
          let v = logits[row + i];
          if (fkey(v) >= thr) {
            acc += exp(v * tinv - m);
            if (acc > goal) { chosen = i; found = true; }
          }
        }
      } else {
        acc += rv[j];
      }
    }
    ring[out] = chosen;
  }
}`;
}

/** The sampler program. */
export function sampleProgram(device: GPUDevice, ring: StepRing, vocab: number): Promise<Program> {
  return P.get(device, ring, "sample", sampleWgsl(vocab), ["read", "read", "write", "write"]);
}
