import assert from "node:assert/strict";
import { attentionRef } from "./cpu/attention.ts";
import { gearAttentionRef, gearCompressRef, gearReconstructRef } from "./cpu/gear.ts";
import {
  GEAR_WIDE_MAX_HD,
  type GearAttentionParams,
  gearAttentionProgram,
  gearAttentionWgsl,
  gearMergeProgram,
  gearPartialFloats,
  gearSplitKeys,
} from "./gear_attention.ts";
import { gearCompressProgram, gearScratchFloats } from "./gear_compress.ts";
import { compressedBefore, type GearLayout, gearLayout } from "./gear_layout.ts";
import { type Dispatch, encodeDispatch, readBuffer } from "./gpu.ts";
import { mergeGroupsX } from "./split_merge.ts";
import { buf, randomArray, relError, relRmsError, rng, roundF16, SKIP_GPU, testGpu } from "./test_util.ts";

interface Case {
  bits: number;
  hd: number;
  group: number;
  buffer: number;
  rMax: number;
  outliers: number;
  nKV: number;
  nH: number;
  batch: number;
  rows: number;
  pos: number;
  window: number;
}

const cases: Case[] = [
  {
    bits: 2,
    hd: 24,
    group: 64,
    buffer: 64,
    rMax: 4,
    outliers: 0.02,
    nKV: 2,
    nH: 4,
    batch: 2,
    rows: 1,
    pos: 200,
    window: 0,
  },
  {
    bits: 4,
    hd: 16,
    group: 32,
    buffer: 64,
    rMax: 2,
    outliers: 0.05,
    nKV: 1,
    nH: 3,
    batch: 1,
    rows: 5,
    pos: 130,
    window: 0,
  },
  {
    bits: 8,
    hd: 32,
    group: 64,
    buffer: 128,
    rMax: 0,
    outliers: 0,
    nKV: 2,
    nH: 2,
    batch: 3,
    rows: 2,
    pos: 300,
    window: 0,
  },
  {
    bits: 2,
    hd: 128,
    group: 128,
    buffer: 128,
    rMax: 2,
    outliers: 0.1,
    nKV: 1,
    nH: 2,
    batch: 1,
    rows: 1,
    pos: 260,
    window: 0,
  },
  {
    bits: 4,
    hd: 16,
    group: 64,
    buffer: 64,
    rMax: 4,
    outliers: 0.1,
    nKV: 2,
    nH: 4,
    batch: 2,
    rows: 3,
    pos: 150,
    window: 77,
  },
  {
    // 64-thread kernels: 32 code words per token (8 bits), each thread's two channels in one code word.
    bits: 8,
    hd: 128,
    group: 32,
    buffer: 64,
    rMax: 1,
    outliers: 0.05,
    nKV: 1,
    nH: 1,
    batch: 1,
    rows: 1,
    pos: 200,
    window: 0,
  },
  {
    // 64-thread kernels: three channels per thread in different code words (8 codes per word), the last
    // threads' past the head.
    bits: 4,
    hd: 160,
    group: 64,
    buffer: 64,
    rMax: 2,
    outliers: 0.02,
    nKV: 1,
    nH: 2,
    batch: 1,
    rows: 2,
    pos: 140,
    window: 0,
  },
];
/** The first of the cases only the 64-thread kernels run (the wide one is tested by the others). */
const NARROW_ONLY = cases.length - 2;

/**
 * A cache state at `pos`: the tokens before pos as they would be after compressing each block in turn
 * (compressed part in the store, the rest in the ring). Returns the dense K/V [B, nKV, pos + rows, hd] too.
 */
function cacheAt(l: GearLayout, c: Case, seed: number) {
  const r = rng(seed);
  const n = c.pos + c.rows;
  const dense = [0, 1].map(() => {
    const a = randomArray(r, l.batch * l.nKV * n * l.hd, -1, 1);
    for (let i = 0; i < a.length; i++) a[i] += Math.sin(0.1 * Math.floor(i / l.hd) + (i % l.hd));
    return a;
  });
  const ring = [0, 1].map(() => new Float32Array(l.batch * l.nKV * l.bufCap * l.hd));
  const store = new Uint32Array(l.words);
  const put = (t: number) => {
    for (let bh = 0; bh < l.batch * l.nKV; bh++) {
      for (let k = 0; k < 2; k++) {
        ring[k].set(
          dense[k].subarray((bh * n + t) * l.hd, (bh * n + t + 1) * l.hd),
          (bh * l.bufCap + (t % l.bufCap)) * l.hd,
        );
      }
    }
  };
  // Block by block: append a block to the ring, then compress it (ranks alternate so segments differ).
  const cComp = compressedBefore(c.pos, l.buffer);
  for (let b0 = 0; b0 < cComp; b0 += l.buffer) {
    for (let t = b0; t < b0 + l.buffer; t++) put(t);
    gearCompressRef(
      l,
      store,
      ring[0],
      ring[1],
      b0,
      b0 + l.buffer,
      b0 % (2 * l.buffer) ? Math.min(2, l.rMax) : l.rMax,
      3,
      1,
    );
  }
  for (let t = cComp; t < n; t++) put(t);
  return { dense, ring, store, n };
}

async function runAttention(
  device: GPUDevice,
  ring: Awaited<ReturnType<typeof testGpu>>["ring"],
  p: GearAttentionParams,
  c: Case,
  buffers: { q: GPUBuffer; store: GPUBuffer; rk: GPUBuffer; rv: GPUBuffer },
): Promise<Float32Array> {
  const l = p.layout;
  const outFloats = l.batch * c.rows * c.nH * l.hd;
  const ob = buf(device, "o", new Float32Array(outFloats));
  const list: Dispatch[] = [];
  if (p.split) {
    const prog = await gearAttentionProgram(device, ring, p);
    const merge = await gearMergeProgram(device, ring, p);
    const pb = buf(device, "partials", new Float32Array(gearPartialFloats(p)));
    const splits = Math.floor((c.pos + c.rows - 1) / gearSplitKeys(p)) + 1;
    list.push({
      program: prog,
      group: prog.bind("a", [buffers.q, buffers.store, buffers.rk, buffers.rv, pb]),
      grid: [c.nH, c.rows, l.batch * splits],
    });
    list.push({
      program: merge,
      group: merge.bind("m", [pb, ob]),
      grid: [mergeGroupsX(c.nH, l.hd), c.rows, l.batch],
    });
  } else {
    const prog = await gearAttentionProgram(device, ring, p);
    list.push({
      program: prog,
      group: prog.bind("a", [buffers.q, buffers.store, buffers.rk, buffers.rv, ob]),
      grid: [c.nH, c.rows, l.batch],
    });
  }
  const off = ring.set(0, { pos: c.pos, rows: c.rows, step: 0, srcRing: false, ringIn: 0, logitsRow: 0 });
  ring.flush(device);
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  for (const d of list) encodeDispatch(pass, ring, d, off);
  pass.end();
  device.queue.submit([enc.finish()]);
  return new Float32Array(await readBuffer(device, ob, 0, outFloats * 4));
}

for (const ringDtype of ["f32", "f16"] as const) {
  // [split, wide, tiles per split of the 64-thread kernel]
  const kernels: [boolean, boolean, number][] = [
    [false, false, 1],
    [true, false, 1],
    [true, true, 1],
    [true, false, 3],
  ];
  for (const [split, wide, tiles] of kernels) {
    Deno.test({
      name: `gear attention (${ringDtype} ring${
        split ? `, split-K${wide ? " wide" : ""}${tiles > 1 ? ` ${tiles} tiles per split` : ""} + merge` : ""
      }) matches gearAttentionRef`,
      ignore: SKIP_GPU,
      fn: async () => {
        const { device, ring } = await testGpu();
        for (const [ci, c] of cases.entries()) {
          // The split kernel reads an f16 ring as the f32 one but for its loads: two cases suffice there (each
          // new pipeline takes llvmpipe ~20 s to compile).
          if (split && ringDtype === "f16" && ci !== 0 && ci !== 3) continue;
          if (wide && ci >= NARROW_ONLY) continue;
          // Several tiles per split: the cases with the most tiles (its own pipelines, compiled slowly).
          if (tiles > 1 && ci !== 0 && ci !== 4) continue;
          const l = gearLayout({ ...c, capacity: c.pos + c.rows + 40, maxRows: 8 });
          const { ring: rings, store } = cacheAt(l, c, 7 + ci);
          const [rk, rv] = ringDtype === "f16" ? rings.map(roundF16) : rings;
          const data = (a: Float32Array) =>
            ringDtype === "f16" ? new Uint16Array(new Float16Array(a).buffer) : a;
          const q = randomArray(rng(99 + ci), l.batch * c.rows * c.nH * l.hd, -1, 1);
          const p: GearAttentionParams = {
            layout: l,
            nH: c.nH,
            scale: 0.4,
            window: c.window,
            ringDtype,
            rowsPerSeq: c.rows,
            split,
            wide,
            tilesPerSplit: tiles,
          };
          const got = await runAttention(device, ring, p, c, {
            q: buf(device, "q", q),
            store: buf(device, "store", store),
            rk: buf(device, "rk", data(rk)),
            rv: buf(device, "rv", data(rv)),
          });
          const want = gearAttentionRef(l, store, rk, rv, q, c.rows, c.pos, {
            nH: c.nH,
            scale: 0.4,
            window: c.window,
          });
          const err = relError(got, want);
          assert.ok(err < 2e-5, `${JSON.stringify(c)}: ${err}`);
        }
      },
    });
  }
}

Deno.test({
  name: "gear compress then attention on the GPU matches the CPU reference of both",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const c = cases[0];
    const l = gearLayout({ ...c, capacity: c.pos + c.rows + 40, maxRows: 8 });
    const { ring: rings, n } = cacheAt(l, c, 5);
    // Start from the dense cache: every block goes through the ring and the GPU compress kernel.
    const { dense } = cacheAt(l, c, 5);
    const rkB = buf(device, "rk", new Float32Array(rings[0].length));
    const rvB = buf(device, "rv", new Float32Array(rings[1].length));
    const storeB = buf(device, "store", new Uint32Array(l.words));
    const scratch = buf(device, "scratch", new Float32Array(gearScratchFloats(l)));
    const cpuRing = [new Float32Array(rings[0].length), new Float32Array(rings[1].length)];
    const cpuStore = new Uint32Array(l.words);
    const progs = [
      await gearCompressProgram(device, ring, { layout: l, rank: 4, loops: 3, seed: 3, ringDtype: "f32" }),
      await gearCompressProgram(device, ring, { layout: l, rank: 2, loops: 3, seed: 3, ringDtype: "f32" }),
    ];
    // Calls: one of 70 rows (compresses block 0, rank 4), then single rows (rank 2) up to position pos.
    const calls = [{ pos: 0, rows: 70 }];
    for (let p0 = 70; p0 < c.pos; p0++) calls.push({ pos: p0, rows: 1 });
    let slot = 0;
    for (const call of calls) {
      for (let t = call.pos; t < call.pos + call.rows; t++) {
        for (let bh = 0; bh < l.batch * l.nKV; bh++) {
          for (let k = 0; k < 2; k++) {
            const row = dense[k].subarray((bh * n + t) * l.hd, (bh * n + t + 1) * l.hd);
            cpuRing[k].set(row, (bh * l.bufCap + (t % l.bufCap)) * l.hd);
            device.queue.writeBuffer(k ? rvB : rkB, (bh * l.bufCap + (t % l.bufCap)) * l.hd * 4, row.slice());
          }
        }
      }
      const c0 = compressedBefore(call.pos, l.buffer), c1 = compressedBefore(call.pos + call.rows, l.buffer);
      if (c1 === c0) continue;
      const rank = call.rows > 1 ? 4 : 2;
      gearCompressRef(l, cpuStore, cpuRing[0], cpuRing[1], c0, c1, rank, 3, 3);
      const prog = progs[call.rows > 1 ? 0 : 1];
      const off = ring.set(slot++ % ring.slots, {
        ...call,
        step: 0,
        srcRing: false,
        ringIn: 0,
        logitsRow: 0,
      });
      ring.flush(device);
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      encodeDispatch(pass, ring, {
        program: prog,
        group: prog.bind("c", [storeB, rkB, rvB, scratch]),
        grid: [l.nKV, 2, l.batch],
      }, off);
      pass.end();
      device.queue.submit([enc.finish()]);
      await device.queue.onSubmittedWorkDone();
    }
    for (let t = c.pos; t < n; t++) {
      for (let bh = 0; bh < l.batch * l.nKV; bh++) {
        for (let k = 0; k < 2; k++) {
          const row = dense[k].subarray((bh * n + t) * l.hd, (bh * n + t + 1) * l.hd);
          cpuRing[k].set(row, (bh * l.bufCap + (t % l.bufCap)) * l.hd);
          device.queue.writeBuffer(k ? rvB : rkB, (bh * l.bufCap + (t % l.bufCap)) * l.hd * 4, row.slice());
        }
      }
    }
    const q = randomArray(rng(4), l.batch * c.rows * c.nH * l.hd, -1, 1);
    const p: GearAttentionParams = {
      layout: l,
      nH: c.nH,
      scale: 0.4,
      window: 0,
      ringDtype: "f32",
      rowsPerSeq: c.rows,
      split: true,
    };
    const got = await runAttention(device, ring, p, c, {
      q: buf(device, "q", q),
      store: storeB,
      rk: rkB,
      rv: rvB,
    });
    const want = gearAttentionRef(l, cpuStore, cpuRing[0], cpuRing[1], q, c.rows, c.pos, {
      nH: c.nH,
      scale: 0.4,
      window: 0,
    });
    assert.ok(relError(got, want) < 1e-3, `compressed on the GPU vs the CPU: ${relError(got, want)}`);
    // And it differs from attention over the uncompressed cache (2-bit keys are lossy) but not wildly.
    const kPlain = new Float32Array(l.batch * l.nKV * n * l.hd), vPlain = kPlain.slice();
    kPlain.set(dense[0]);
    vPlain.set(dense[1]);
    const exact = new Float32Array(got.length);
    for (let b = 0; b < l.batch; b++) {
      const o = attentionRef(
        q.subarray(b * c.rows * c.nH * l.hd, (b + 1) * c.rows * c.nH * l.hd),
        kPlain.subarray(b * l.nKV * n * l.hd, (b + 1) * l.nKV * n * l.hd),
        vPlain.subarray(b * l.nKV * n * l.hd, (b + 1) * l.nKV * n * l.hd),
        c.rows,
        Array.from({ length: c.rows }, (_, i) => c.pos + i),
        { nH: c.nH, nKV: l.nKV, hd: l.hd, capacity: n, scale: 0.4, window: 0 },
      );
      exact.set(o, b * o.length);
    }
    const lossy = relError(got, exact);
    assert.ok(lossy > 1e-4 && lossy < 0.5, `error vs the exact cache: ${lossy}`);
  },
});

Deno.test({
  name:
    "a batched step (continuous batching): gear split-K attention and compress per lane at its own position",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const nH = 4, B = 3, hd = 24, scale = 0.4;
    const l = gearLayout({
      batch: B,
      nKV: 2,
      hd,
      capacity: 256,
      bits: 2,
      group: 64,
      buffer: 64,
      rMax: 4,
      outliers: 0.02,
      maxRows: 256,
    });
    // Lane positions of the first step: the tokens of lanes 0 and 2 complete blocks 1 and 2. Rows: lanes 2, 0, 1.
    const P = [127, 70, 191], order = [2, 0, 1], n = 193;
    const r = rng(9);
    const dense = [0, 1].map(() => randomArray(r, B * l.nKV * n * hd, -1, 1));
    const cpuRing = [0, 1].map(() => new Float32Array(B * l.nKV * l.bufCap * hd));
    const cpuStore = new Uint32Array(l.words);
    const rkB = buf(device, "rk", new Float32Array(cpuRing[0].length));
    const rvB = buf(device, "rv", new Float32Array(cpuRing[1].length));
    const storeB = buf(device, "store", new Uint32Array(l.words));
    const scratch = buf(device, "scratch", new Float32Array(gearScratchFloats(l)));
    const put = (b: number, t: number) => {
      for (let h = 0; h < l.nKV; h++) {
        const bh = b * l.nKV + h;
        for (let k = 0; k < 2; k++) {
          const row = dense[k].subarray((bh * n + t) * hd, (bh * n + t + 1) * hd);
          cpuRing[k].set(row, (bh * l.bufCap + (t % l.bufCap)) * hd);
          device.queue.writeBuffer(k ? rvB : rkB, (bh * l.bufCap + (t % l.bufCap)) * hd * 4, row.slice());
        }
      }
    };
    const compress = [4, 2].map((rank) =>
      gearCompressProgram(device, ring, { layout: l, rank, loops: 3, seed: 3, ringDtype: "f32" })
    );
    const [prefillC, decodeC] = await Promise.all(compress);
    const run = async (ds: Dispatch[], off: number) => {
      ring.flush(device);
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      for (const d of ds) encodeDispatch(pass, ring, d, off);
      pass.end();
      device.queue.submit([enc.finish()]);
      await device.queue.onSubmittedWorkDone();
    };
    // Each lane's prompt (tokens 0 .. P − 1) in one unbatched call of its lane: its whole blocks compressed.
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < P[b]; t++) put(b, t);
      gearCompressRef(l, cpuStore, cpuRing[0], cpuRing[1], 0, compressedBefore(P[b], 64), 4, 3, 3, [b]);
      const off = ring.set(0, {
        pos: 0,
        rows: P[b],
        step: 0,
        srcRing: false,
        ringIn: 0,
        logitsRow: 0,
        lane: b,
      });
      await run([{
        program: prefillC,
        group: prefillC.bind("c", [storeB, rkB, rvB, scratch]),
        grid: [l.nKV, 2, 1],
      }], off);
    }
    // Each lane's compressed tokens [0, compressedBefore(pos)) in the GPU's store stand for nearly what the
    // reference's do (relative RMS of the difference; a code rounded the other way moves an entry by a step),
    // and every lane's segment table is the reference's.
    const checkStore = (gpuStore: Uint32Array, pos: readonly number[]) => {
      for (let b = 0; b < B; b++) {
        const c = compressedBefore(pos[b], 64);
        for (let h = 0; h < l.nKV; h++) {
          for (const kind of [0, 1] as const) {
            const err = relRmsError(
              gearReconstructRef(l, gpuStore, kind, b, h, 0, c),
              gearReconstructRef(l, cpuStore, kind, b, h, 0, c),
            );
            assert.ok(err < 2e-2, `lane ${b} head ${h} kind ${kind}: rms ${err}`);
          }
        }
        const seg = (s: Uint32Array) =>
          Array.from(s.subarray(l.off.seg + b * l.nBlk, l.off.seg + b * l.nBlk + 4));
        assert.deepEqual(seg(gpuStore), seg(cpuStore), `segment table of lane ${b}`);
      }
    };
    const p: GearAttentionParams = {
      layout: l,
      nH,
      scale,
      window: 0,
      ringDtype: "f32",
      rowsPerSeq: 1,
      split: true,
    };
    // The first step runs the wide split kernel, the second the 64-thread one.
    const attns = [
      await gearAttentionProgram(device, ring, { ...p, wide: true }),
      await gearAttentionProgram(device, ring, p),
    ];
    const merge = await gearMergeProgram(device, ring, p);
    const parts = buf(device, "partials", new Float32Array(gearPartialFloats(p)));
    const ob = buf(device, "o", new Float32Array(B * nH * hd));
    // Two batched steps: each appends one token per lane, attends, then compresses the blocks it completed.
    for (let step = 0; step < 2; step++) {
      const pos = P.map((p0) => p0 + step);
      for (let b = 0; b < B; b++) put(b, pos[b]);
      const q = randomArray(r, B * nH * hd, -1, 1);
      const qB = buf(device, "q", q);
      const off = ring.set(1, {
        pos: 0,
        rows: B,
        step: 0,
        srcRing: false,
        ringIn: 0,
        logitsRow: 0,
        batch: order.map((b) => ({ pos: pos[b], lane: b, ringIn: 0, step: 0 })),
      });
      const splits = Math.floor(Math.max(...pos) / 64) + 1;
      const attn = attns[step];
      await run([
        { program: attn, group: attn.bind("a", [qB, storeB, rkB, rvB, parts]), grid: [nH, B, splits] },
        { program: merge, group: merge.bind("m", [parts, ob]), grid: [mergeGroupsX(nH, hd), B, 1] },
      ], off);
      const got = new Float32Array(await readBuffer(device, ob, 0, B * nH * hd * 4));
      // The attention is checked against the reference on the store the GPU compressed (the GPU's compression
      // rounds a few codes the other way than the reference's, which alone moves outputs by ~1.5e-3 on some
      // GPUs); that store is checked against the reference's below.
      const gpuStore = new Uint32Array(await readBuffer(device, storeB, 0, l.words * 4));
      checkStore(gpuStore, pos);
      order.forEach((b, row) => {
        // The reference for lane b alone: its q row at its lane's place of a [B, 1, nH, hd] query.
        const qFull = new Float32Array(B * nH * hd);
        qFull.set(q.subarray(row * nH * hd, (row + 1) * nH * hd), b * nH * hd);
        const want = gearAttentionRef(l, gpuStore, cpuRing[0], cpuRing[1], qFull, 1, pos[b], {
          nH,
          scale,
          window: 0,
        }, [b]).subarray(b * nH * hd, (b + 1) * nH * hd);
        const err = relError(got.subarray(row * nH * hd, (row + 1) * nH * hd), want);
        assert.ok(err < 1e-3, `step ${step}, row ${row} (lane ${b} at ${pos[b]}): ${err}`);
      });
      for (let b = 0; b < B; b++) {
        const c0 = compressedBefore(pos[b], 64), c1 = compressedBefore(pos[b] + 1, 64);
        if (c1 > c0) gearCompressRef(l, cpuStore, cpuRing[0], cpuRing[1], c0, c1, 2, 3, 3, [b]);
      }
      await run([{
        program: decodeC,
        group: decodeC.bind("c", [storeB, rkB, rvB, scratch]),
        grid: [l.nKV, 2, B],
      }], off);
    }
    // After the second step's compress: each lane's blocks, and its own segment table (lane 0 read block 1,
    // compressed by the first step, in the second step's attention).
    checkStore(new Uint32Array(await readBuffer(device, storeB, 0, l.words * 4)), P.map((p0) => p0 + 2));
  },
});

Deno.test("the wide split-K GEAR kernel refuses heads wider than GEAR_WIDE_MAX_HD (decode then uses the other)", () => {
  const shape = { bits: 2, group: 64, buffer: 64, rMax: 2, outliers: 0.02, nKV: 1, batch: 1, maxRows: 4 };
  const p = (hd: number): GearAttentionParams => ({
    layout: gearLayout({ ...shape, hd, capacity: 256 }),
    nH: 1,
    scale: 0.1,
    window: 0,
    ringDtype: "f32",
    rowsPerSeq: 1,
    split: true,
    wide: true,
  });
  assert.throws(() => gearAttentionWgsl(p(GEAR_WIDE_MAX_HD + 8)), RangeError);
  assert.ok(gearAttentionWgsl(p(GEAR_WIDE_MAX_HD)).includes("@workgroup_size(256)"));
  assert.ok(gearAttentionWgsl({ ...p(GEAR_WIDE_MAX_HD + 8), wide: false }).includes("@workgroup_size(64)"));
});
