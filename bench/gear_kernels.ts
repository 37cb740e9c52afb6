/**
 * GPU time of one layer's decode attention over a long KV cache, kernel by kernel, without a model: the f16
 * cache's split-K attention and merge against GEAR's split-K attention (the 64-thread and the 256-thread
 * kernel), merge and block compression, at the OLMoE-1B-7B attention shape (16 heads × 128, no GQA) by default. Timestamp queries around a pass of `--reps`
 * dispatches of one kernel give its time per dispatch.
 *
 *   deno run -A bench/gear_kernels.ts [--contexts 1024,8192,32768] [--bits 2] [--heads 16] [--hd 128] [--reps 50]
 *     [--rank 4] [--outliers 0.02]      # --rank 0 --outliers 0: plain KIVI quantization (quant-2)
 *     [--fit minmax|joint]              # the compression's fit: min/max ranges (quant, gear-l) or mode gear's
 *                                       # joint fit (least-squares ranges, 2 refits)
 *     [--pad-kb N]                      # GEAR kernels with N KiB more workgroup memory each (a diagnostic:
 *                                       # fewer workgroups fit an SM; if the time does not move, fewer ran)
 *     [--ablate codes,params,prows,seg,barriers,score,vsum,sums,p1,p4]  # a diagnostic (results wrong,
 *                                       # timing only): the 64-thread kernel without those global loads
 *                                       # (codes, key/value parameters, the segment's P rows, the segment
 *                                       # index), barriers, or parts of its arithmetic
 *     [--tiles-per-split 2,4]           # also the 64-thread split kernel over that many 64-key tiles per
 *                                       # workgroup, with its merge (a table of its own)
 *     [--compress-ablate ring,grid+loops1,…]  # a diagnostic (results wrong, timing only): the compression
 *                                       # (at the last context) without parts, each variant a '+'-joined set of
 *                                       # ring (the ring's loads: values computed instead), grid (the mse
 *                                       # fit's grid: its first block of a), loops1 (one power-iteration
 *                                       # loop), refits0 (no refit rounds), select (no outlier selection),
 *                                       # membar (storage barriers as workgroup barriers)
 *
 * The GEAR store is filled the way decoding fills it: block after block of random f16 keys and values written
 * to the full-precision ring and compressed by the real compress kernel (at --rank, as at prefill). Prints a
 * Markdown table and one JSON line per context.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  attentionCombineProgram,
  type AttentionParams,
  attentionProgram,
  partialFloats,
} from "../kernels/attention.ts";
import {
  GEAR_WIDE_MAX_HD,
  type GearAttentionParams,
  gearAttentionProgram,
  gearAttentionWgsl,
  gearMergeProgram,
  gearPartialFloats,
} from "../kernels/gear_attention.ts";
import {
  type GearCompressParams,
  gearCompressProgram,
  gearCompressWgsl,
  gearScratchFloats,
} from "../kernels/gear_compress.ts";
import { GEAR_JOINT_FIT } from "../engine/kv/gear_fit.ts";
import { gearLayout, ringWords } from "../kernels/gear_layout.ts";
import { acquireGpu, type Dispatch, Program, StepRing, storageBuffer } from "../kernels/gpu.ts";
import { mergeGroupsX } from "../kernels/split_merge.ts";
import { PassTimer, submitRepeated } from "./gpu_timer.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    contexts: { type: "string", default: "1024,8192,32768" },
    bits: { type: "string", default: "2" },
    heads: { type: "string", default: "16" },
    hd: { type: "string", default: "128" },
    reps: { type: "string", default: "50" },
    rank: { type: "string", default: "4" },
    outliers: { type: "string", default: "0.02" },
    "pad-kb": { type: "string", default: "0" },
    ablate: { type: "string", default: "" },
    fit: { type: "string", default: "minmax" },
    "tiles-per-split": { type: "string", default: "" },
    "compress-ablate": { type: "string", default: "" },
  },
});
const contexts = values.contexts.split(",").map(Number);
const rank = Number(values.rank), outliers = Number(values.outliers);
const bits = Number(values.bits),
  nH = Number(values.heads),
  hd = Number(values.hd),
  reps = Number(values.reps);
const maxPos = Math.max(...contexts);
const tileCounts = values["tiles-per-split"] ? values["tiles-per-split"].split(",").map(Number) : [];
for (const t of tileCounts) {
  if (!Number.isInteger(t) || t < 1) {
    throw new TypeError(`Cannot run the benchmark: --tiles-per-split takes whole numbers ≥ 1, not ${t}`);
  }
}
const TILE = 64;

const ctx = await acquireGpu();
if (!ctx.hasTimestamps) {
  throw new Error("Cannot run the benchmark: the adapter has no timestamp-query feature");
}
const device = ctx.device;
const ring = new StepRing(device, 8);
const scale = 1 / Math.sqrt(hd);

// The GEAR cache: [1 sequence, nH KV heads, capacity] with gear-2's defaults.
const layout = gearLayout({
  batch: 1,
  nKV: nH,
  hd,
  capacity: maxPos + TILE,
  bits,
  group: 64,
  buffer: 64,
  rMax: rank,
  outliers,
  maxRows: 1,
});
// store u32 [layout.words]; ring K/V f16 packed in u32 [1, nH, bufCap, hd]; scratch f32.
const store = storageBuffer(device, "bench.gear-store", layout.words * 4);
const ringK = storageBuffer(device, "bench.gear-ring-k", ringWords(layout, "f16") * 4);
const ringV = storageBuffer(device, "bench.gear-ring-v", ringWords(layout, "f16") * 4);
const scratch = storageBuffer(device, "bench.gear-scratch", gearScratchFloats(layout) * 4);

let seed = 12345;
function random(): number {
  seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
  return seed / 2 ** 32;
}
/** f16 values packed two per u32: noise plus a per-channel offset, as real keys have. */
function randomHalves(n: number, phase: number): Uint32Array<ArrayBuffer> {
  const f = new Float16Array(n);
  for (let i = 0; i < n; i++) f[i] = (random() * 2 - 1) + Math.sin(0.37 * (i % hd) + phase);
  return new Uint32Array(f.buffer);
}

// Fill the store: each block of 64 tokens goes through the ring and the compress kernel.
if (values.fit !== "minmax" && values.fit !== "joint") {
  throw new TypeError(`Cannot run the benchmark: --fit takes minmax or joint, not ${values.fit}`);
}
const compressParams: GearCompressParams = {
  layout,
  rank,
  loops: 3,
  seed: 7,
  ringDtype: "f16",
  fit: values.fit === "joint" ? GEAR_JOINT_FIT : undefined,
  // Every call here is a single row completing one block: the decode step's program.
  oneBlock: true,
};
const compress = await gearCompressProgram(device, ring, compressParams);
const compressGroup = compress.bind("bench.gear-compress", [store, ringK, ringV, scratch]);
const ringHalves = nH * layout.bufCap * hd;
const pool = [0, 1, 2, 3].map((i) => randomHalves(ringHalves, i));
const t0 = performance.now();
for (let b0 = 0; b0 + layout.buffer <= maxPos; b0 += layout.buffer) {
  const k = b0 / layout.buffer;
  device.queue.writeBuffer(ringK, 0, pool[k % 4]);
  device.queue.writeBuffer(ringV, 0, pool[(k + 1) % 4]);
  const off = ring.set(k % ring.slots, {
    pos: b0 + layout.buffer - 1,
    rows: 1,
    step: 0,
    srcRing: false,
    ringIn: 0,
    logitsRow: 0,
  });
  ring.flush(device);
  submitRepeated(
    device,
    ring,
    { program: compress, group: compressGroup, grid: [nH, 2, 1] },
    off,
    1,
    "bench.fill",
  );
  if (k % 64 === 63) await device.queue.onSubmittedWorkDone();
}
await device.queue.onSubmittedWorkDone();
console.error(`filled ${maxPos} tokens in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

// The f16 cache: K, V [1, nH, capacity, hd] f16.
const cap = maxPos + TILE;
const kc = storageBuffer(device, "bench.k-cache", nH * cap * hd * 2);
const vc = storageBuffer(device, "bench.v-cache", nH * cap * hd * 2);
for (const b of [kc, vc]) {
  const chunk = randomHalves(nH * TILE * hd, 0.5);
  for (let at = 0; at < nH * cap * hd * 2; at += chunk.byteLength) {
    device.queue.writeBuffer(b, at, chunk, 0, Math.min(chunk.length, (nH * cap * hd * 2 - at) / 4));
  }
}
const q = storageBuffer(device, "bench.q", nH * hd * 4);
device.queue.writeBuffer(q, 0, new Float32Array(nH * hd).map(() => random() * 2 - 1));
const attn = storageBuffer(device, "bench.attn", nH * hd * 4);

const attParams: AttentionParams = {
  nH,
  nKV: nH,
  hd,
  capacity: cap,
  scale,
  window: 0,
  kvDtype: "f16",
  split: TILE,
};
const f16Split = await attentionProgram(device, ring, attParams);
const f16Merge = await attentionCombineProgram(device, ring, attParams);
const f16Partials = storageBuffer(
  device,
  "bench.partials",
  nH * Math.ceil(cap / TILE) * partialFloats(hd) * 4,
);
const gearParams: GearAttentionParams = {
  layout,
  nH,
  scale,
  window: 0,
  ringDtype: "f16",
  rowsPerSeq: 1,
  split: true,
};
const padKb = Number(values["pad-kb"]);
if (!Number.isInteger(padKb) || padKb < 0) {
  throw new TypeError(
    `Cannot run the benchmark: --pad-kb must be a whole number of KiB, not ${values["pad-kb"]}`,
  );
}
const ablations = values.ablate ? values.ablate.split(",") : [];
for (const a of ablations) {
  if (!["codes", "params", "prows", "seg", "barriers", "score", "vsum", "sums", "p1", "p4"].includes(a)) {
    throw new TypeError(`Cannot run the benchmark: unknown --ablate part ${a}`);
  }
}
/** The GEAR WGSL `code` without the global loads (or barriers) --ablate names: a timing diagnostic. */
function ablate(code: string): string {
  let c = code;
  if (ablations.includes("codes")) {
    c = c.replace(/store\[O_C([KV]) \+ (\w+) \* W \+ ([^\]]+)\]/g, "(($2 + $3) * 2654435761u)");
  }
  if (ablations.includes("params")) c = c.replace(/store\[O_PAR[KV] \+ [^;]*\]\)/g, "0x3c003c00u)");
  if (ablations.includes("prows")) c = c.replace(/half_at\(p[kv], [^;]*\);/g, "0.5;");
  if (ablations.includes("seg")) c = c.replace(/store\[O_SEG \+ [^;]*\];/g, "0u;");
  if (ablations.includes("barriers")) c = c.replaceAll("workgroupBarrier();", "");
  // Compute parts of the 64-thread kernel: the score's dot products, the value sums, the two-stage sums, the
  // query fold (p1) and the softmax weights' stores (p4).
  if (ablations.includes("score")) c = c.replace(/^\s*sc \+= dot\(qd.*$/gm, "");
  if (ablations.includes("vsum")) c = c.replace(/^\s*a\d \+= dot\(w4_.*$/gm, "");
  if (ablations.includes("sums")) c = c.replace(/^\s*sum_stage\(li, NR[KV]\);$/gm, "");
  if (ablations.includes("p1")) {
    c = c.replace(/^\s*(if \(cf\d < \d+u\) \{ qd|red\[\d+u \* TK \+ li\] = select).*$/gm, "");
  }
  if (ablations.includes("p4")) c = c.replace(/^\s*(wt|red)\[\d+u (\+|\* TK \+) li.*pr \*.*$/gm, "");
  return c;
}
const compressVariants = values["compress-ablate"] ? values["compress-ablate"].split(",") : [];
const COMPRESS_PARTS = ["ring", "grid", "loops1", "refits0", "select", "membar"];
for (const v of compressVariants) {
  for (const part of v.split("+")) {
    if (!COMPRESS_PARTS.includes(part)) {
      throw new TypeError(`Cannot run the benchmark: unknown --compress-ablate part ${part}`);
    }
  }
}
/** The compress WGSL without the parts of `variant` ('+'-joined): a timing diagnostic, its store is wrong. */
function ablateCompress(variant: string): string {
  const parts = variant.split("+");
  let c = gearCompressWgsl({
    ...compressParams,
    workgroupBytes: device.limits.maxComputeWorkgroupStorageSize,
  });
  const swap = (from: RegExp | string, to: string) => {
    const next = c.replace(from, to);
    if (next === c) throw new Error(`Cannot ablate the compression: ${from} is not in its WGSL`);
    c = next;
  };
  if (parts.includes("ring")) {
    swap(
      /fn ring_at\(kind: u32, bh: u32, t: u32, c: u32\) -> f32 \{[\s\S]*?\n\}/,
      "fn ring_at(kind: u32, bh: u32, t: u32, c: u32) -> f32 {\n  return f32((c * 7u + t * 13u + bh + kind) % 17u) * 0.25 - 2.0;\n}",
    );
  }
  if (parts.includes("grid")) swap(/const FSTEPS: u32 = \d+u;/, "const FSTEPS: u32 = 1u;");
  if (parts.includes("loops1")) swap(/const LOOPS: u32 = \d+u;/, "const LOOPS: u32 = 1u;");
  if (parts.includes("refits0")) swap(/const REFITS: u32 = \d+u;/, "const REFITS: u32 = 0u;");
  if (parts.includes("select")) {
    swap(/for \(var it = 0u; it < k; it\+\+\)/g, "for (var it = 0u; it < 0u; it++)");
  }
  if (parts.includes("membar")) swap(/storageBarrier\(\);/g, "workgroupBarrier();");
  return c;
}
const compressAblated = await Promise.all(compressVariants.map(async (v) => {
  const prog = await Program.get(device, ring, `bench.compress-ablate-${v}`, ablateCompress(v), [
    "write",
    "read",
    "read",
    "write",
  ]);
  // Its own store and scratch: the ablated program writes garbage.
  const s2 = storageBuffer(device, `bench.compress-ablate-store-${v}`, layout.words * 4);
  const sc2 = storageBuffer(device, `bench.compress-ablate-scratch-${v}`, gearScratchFloats(layout) * 4);
  return { v, d: { program: prog, group: prog.bind(`bench.compress-ablate-${v}`, [s2, ringK, ringV, sc2]) } };
}));

/**
 * A GEAR attention program; with --pad-kb its WGSL gets an extra workgroup array of that size, written only
 * when a run-time value says so (never here), so the driver keeps it and fewer workgroups fit an SM.
 */
function gearProgram(p: GearAttentionParams) {
  // (The 256-thread kernel is not ablated.)
  if (ablations.length > 0 && !p.wide) {
    return Program.get(
      device,
      ring,
      `gear-ablate-${p.wide ? "wide" : ""}${ablations.join("-")}`,
      ablate(gearAttentionWgsl(p)),
      [
        "read",
        "read",
        "read",
        "read",
        "write",
      ],
    );
  }
  if (padKb === 0) return gearAttentionProgram(device, ring, p);
  const code = gearAttentionWgsl(p)
    .replace(
      "@compute @workgroup_size",
      `var<workgroup> occupancy_pad: array<f32, ${padKb * 256}>;\n@compute @workgroup_size`,
    )
    .replace(
      "  let r = wg.y;\n",
      "  let r = wg.y;\n  if (st.rows == 0xffffffffu) { occupancy_pad[li] = 1.0; }\n",
    );
  return Program.get(device, ring, `gear-pad-${padKb}`, code, ["read", "read", "read", "read", "write"]);
}
const gearSplit = await gearProgram(gearParams);
// The 256-thread split kernel (decode runs it over few tiles) where the head fits it.
const gearWide = hd <= GEAR_WIDE_MAX_HD ? await gearProgram({ ...gearParams, wide: true }) : undefined;
const gearMerge = await gearMergeProgram(device, ring, gearParams);
const gearPartials = storageBuffer(device, "bench.gear-partials", gearPartialFloats(gearParams) * 4);

// The 64-thread split kernel over several tiles per workgroup, each with its merge and partials.
const multi = await Promise.all(tileCounts.map(async (tiles) => {
  const p = { ...gearParams, tilesPerSplit: tiles };
  const split = await gearProgram(p);
  const merge = await gearMergeProgram(device, ring, p);
  const partials = storageBuffer(device, `bench.gear-partials-t${tiles}`, gearPartialFloats(p) * 4);
  return { tiles, split, merge, partials };
}));

const timer = new PassTimer(device);

/** GPU microseconds per dispatch of `d` at `pos` (best of 5 passes of `reps` dispatches). */
async function time(d: Dispatch, pos: number): Promise<number> {
  const off = ring.set(0, { pos, rows: 1, step: 0, srcRing: false, ringIn: 0, logitsRow: 0 });
  ring.flush(device);
  return (await timer.perDispatch(ring, [d], off, reps)).gpuUs;
}

const rows: Record<string, number>[] = [];
for (const pos of contexts) {
  const splits = Math.floor(pos / TILE) + 1;
  const r: Record<string, number> = {
    context: pos,
    f16_split_us: await time({
      program: f16Split,
      group: f16Split.bind("bench.f16-split", [q, kc, vc, f16Partials]),
      grid: [nH, 1, splits],
    }, pos),
    f16_merge_us: await time({
      program: f16Merge,
      group: f16Merge.bind("bench.f16-merge", [f16Partials, attn]),
      grid: [mergeGroupsX(nH, hd), 1, 1],
    }, pos),
    gear_split_us: await time({
      program: gearSplit,
      group: gearSplit.bind("bench.gear-split", [q, store, ringK, ringV, gearPartials]),
      grid: [nH, 1, splits],
    }, pos),
    gear_wide_split_us: gearWide
      ? await time({
        program: gearWide,
        group: gearWide.bind("bench.gear-wide-split", [q, store, ringK, ringV, gearPartials]),
        grid: [nH, 1, splits],
      }, pos)
      : Number.NaN,
    gear_merge_us: await time({
      program: gearMerge,
      group: gearMerge.bind("bench.gear-merge", [gearPartials, attn]),
      grid: [mergeGroupsX(nH, hd), 1, 1],
    }, pos),
    gear_compress_us: await time({ program: compress, group: compressGroup, grid: [nH, 2, 1] }, pos - 1),
  };
  for (const m of multi) {
    r[`gear_split_t${m.tiles}_us`] = await time({
      program: m.split,
      group: m.split.bind(`bench.gear-split-t${m.tiles}`, [q, store, ringK, ringV, m.partials]),
      grid: [nH, 1, Math.floor(pos / (TILE * m.tiles)) + 1],
    }, pos);
    r[`gear_merge_t${m.tiles}_us`] = await time({
      program: m.merge,
      group: m.merge.bind(`bench.gear-merge-t${m.tiles}`, [m.partials, attn]),
      grid: [mergeGroupsX(nH, hd), 1, 1],
    }, pos);
  }
  rows.push(r);
  console.log(JSON.stringify({ device: ctx.adapterName, bits, rank, outliers, nH, hd, ...r }));
}
console.log(
  `\n${ctx.adapterName}, ${nH} heads × ${hd}, gear-${bits} (group 64, rank ${rank}, ${
    outliers * 100
  } % outliers), µs per layer`,
);
console.log(
  "| context | f16 split | f16 merge | f16 total | gear split | gear split, 256 threads | gear merge | gear total | compress (1/64 steps) |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows) {
  const f = (x: number) => x.toFixed(1);
  console.log(
    `| ${r.context} | ${f(r.f16_split_us)} | ${f(r.f16_merge_us)} | ${
      f(r.f16_split_us + r.f16_merge_us)
    } | ` +
      `${f(r.gear_split_us)} | ${f(r.gear_wide_split_us)} | ${f(r.gear_merge_us)} | ` +
      `${f(r.gear_split_us + r.gear_merge_us)} | ` +
      `${f(r.gear_compress_us)} |`,
  );
}
if (multi.length > 0) {
  console.log("\n64-thread split kernel by tiles per workgroup: split + merge, µs per layer");
  console.log(`| context | 1 tile | ${multi.map((m) => `${m.tiles} tiles`).join(" | ")} |`);
  console.log(`| --- | --- | ${multi.map(() => "---").join(" | ")} |`);
  for (const r of rows) {
    const f = (x: number) => x.toFixed(1);
    const cells = multi.map((m) =>
      `${f(r[`gear_split_t${m.tiles}_us`])} + ${f(r[`gear_merge_t${m.tiles}_us`])} = ${
        f(r[`gear_split_t${m.tiles}_us`] + r[`gear_merge_t${m.tiles}_us`])
      }`
    );
    console.log(
      `| ${r.context} | ${f(r.gear_split_us)} + ${f(r.gear_merge_us)} = ${
        f(r.gear_split_us + r.gear_merge_us)
      } | ${cells.join(" | ")} |`,
    );
  }
}
if (compressAblated.length > 0) {
  const pos = contexts[contexts.length - 1];
  console.log(`\ncompression without parts (a diagnostic, results wrong), µs per layer at ${pos}`);
  console.log("| variant | µs |");
  console.log("| --- | --- |");
  console.log(`| as is | ${rows[rows.length - 1].gear_compress_us.toFixed(1)} |`);
  for (const a of compressAblated) {
    const us = await time({ ...a.d, grid: [nH, 2, 1] }, pos - 1);
    console.log(`| without ${a.v} | ${us.toFixed(1)} |`);
  }
}
