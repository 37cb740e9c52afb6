import assert from "node:assert/strict";
import type { QkNorm } from "../engine/config.ts";
import { ropeTables } from "../engine/config.ts";
import { rmsNormRef } from "./cpu/rms_norm.ts";
import { ropeRef } from "./cpu/rope.ts";
import { qkRopeProgram } from "./qk_rope.ts";
import { buf, randomArray, relError, rng, roundF16, runAndRead, SKIP_GPU, testGpu } from "./test_util.ts";
import { readBuffer } from "./gpu.ts";

/** The default rope's cos/sin for `positions` positions and the kernel's table [positions, hd] (cos, then sin). */
function ropeTable(hd: number, positions: number) {
  const rope = {
    theta: 1e4,
    type: "default" as const,
    factor: 1,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 1,
  };
  const { cos, sin } = ropeTables(rope, hd, positions);
  const half = hd / 2;
  const table = new Float32Array(positions * hd);
  for (let p = 0; p < positions; p++) {
    table.set(cos.subarray(p * half, (p + 1) * half), p * hd);
    table.set(sin.subarray(p * half, (p + 1) * half), p * hd + half);
  }
  return { cos, sin, table };
}

const cases: {
  nH: number;
  nKV: number;
  hd: number;
  norm: QkNorm;
  clip: number;
  rows: number;
  pos: number;
  /** A ring cache of this many slots (positions past it wrap). */
  ring?: number;
}[] = [
  { nH: 4, nKV: 2, hd: 16, norm: "none", clip: 0, rows: 3, pos: 0 },
  { nH: 4, nKV: 2, hd: 24, norm: "per_head", clip: 0, rows: 2, pos: 5 },
  { nH: 6, nKV: 6, hd: 8, norm: "full", clip: 0.7, rows: 4, pos: 2 },
  { nH: 2, nKV: 1, hd: 130, norm: "per_head", clip: 0, rows: 1, pos: 9 },
  { nH: 4, nKV: 2, hd: 16, norm: "per_head", clip: 0, rows: 4, pos: 13, ring: 8 },
];

for (const kvDtype of ["f32", "f16"] as const) {
  Deno.test({
    name: `qkRope (${kvDtype} cache) matches norm + clip + ropeRef and appends to the cache`,
    ignore: SKIP_GPU,
    fn: async () => {
      const { device, ring } = await testGpu();
      const r = rng(11);
      for (const c of cases) {
        const { nH, nKV, hd, rows, pos } = c;
        const qDim = nH * hd, kvDim = nKV * hd, qkvDim = qDim + 2 * kvDim;
        const positionsTable = pos + rows + 3, cap = c.ring ?? positionsTable;
        const qkv = randomArray(r, rows * qkvDim, -2, 2);
        const qn = randomArray(r, c.norm === "full" ? qDim : hd, 0.5, 1.5);
        const kn = randomArray(r, c.norm === "full" ? kvDim : hd, 0.5, 1.5);
        const { cos, sin, table } = ropeTable(hd, positionsTable);
        const prog = await qkRopeProgram(device, ring, {
          nH,
          nKV,
          hd,
          capacity: cap,
          ring: c.ring !== undefined,
          qkNorm: c.norm,
          eps: 1e-6,
          clip: c.clip,
          kvDtype,
        });
        const qb = buf(device, "q", new Float32Array(rows * qDim));
        const cacheBytes = nKV * cap * hd * (kvDtype === "f16" ? 2 : 4);
        const kb = buf(device, "k", new Uint8Array(cacheBytes)),
          vb = buf(device, "v", new Uint8Array(cacheBytes));
        const nw = new Float32Array([...qn, ...kn]);
        const group = prog.bind("t", [
          buf(device, "qkv", qkv),
          buf(device, "rope", table),
          buf(device, "nw", nw),
          qb,
          kb,
          vb,
        ]);
        const got = new Float32Array(
          await runAndRead(
            device,
            ring,
            [{ program: prog, group, grid: [nH + nKV, rows, 1] }],
            { rows, pos },
            qb,
            rows * qDim * 4,
          ),
        );
        // Reference.
        const q = new Float32Array(rows * qDim),
          k = new Float32Array(rows * kvDim),
          v = new Float32Array(rows * kvDim);
        for (let t = 0; t < rows; t++) {
          q.set(qkv.subarray(t * qkvDim, t * qkvDim + qDim), t * qDim);
          k.set(qkv.subarray(t * qkvDim + qDim, t * qkvDim + qDim + kvDim), t * kvDim);
          v.set(qkv.subarray(t * qkvDim + qDim + kvDim, (t + 1) * qkvDim), t * kvDim);
        }
        if (c.norm === "per_head") {
          rmsNormRef(q, qn, 1e-6, rows * nH, hd, q);
          rmsNormRef(k, kn, 1e-6, rows * nKV, hd, k);
        } else if (c.norm === "full") {
          rmsNormRef(q, qn, 1e-6, rows, qDim, q);
          rmsNormRef(k, kn, 1e-6, rows, kvDim, k);
        }
        if (c.clip > 0) {
          for (const a of [q, k, v]) {
            for (let i = 0; i < a.length; i++) a[i] = Math.min(c.clip, Math.max(-c.clip, a[i]));
          }
        }
        const positions = Array.from({ length: rows }, (_, i) => pos + i);
        ropeRef(q, rows, nH, hd, positions, cos, sin);
        ropeRef(k, rows, nKV, hd, positions, cos, sin);
        assert.ok(relError(got, q) < 1e-5, `q ${JSON.stringify(c)}: ${relError(got, q)}`);
        const read = async (b: GPUBuffer) => {
          const raw = await readBuffer(device, b, 0, cacheBytes);
          return kvDtype === "f16" ? new Float32Array(new Float16Array(raw)) : new Float32Array(raw);
        };
        const kc = await read(kb), vc = await read(vb);
        const round = (a: Float32Array) => (kvDtype === "f16" ? roundF16(a) : a);
        const kr = round(k), vr = round(v);
        for (let t = 0; t < rows; t++) {
          for (let h = 0; h < nKV; h++) {
            for (let i = 0; i < hd; i++) {
              const at = (h * cap + (pos + t) % cap) * hd + i, src = (t * nKV + h) * hd + i;
              assert.ok(
                Math.abs(kc[at] - kr[src]) <= 2e-3 * Math.abs(kr[src]) + 1e-5,
                `k cache ${JSON.stringify(c)} at ${at}`,
              );
              assert.ok(Math.abs(vc[at] - vr[src]) <= 1e-6, `v cache ${JSON.stringify(c)} at ${at}`);
            }
          }
        }
      }
    },
  });
}

Deno.test({
  name: "qkRope, batched: each row is roped at its own position and appended to its own lane of the cache",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const r = rng(12);
    const nH = 4, nKV = 2, hd = 16, cap = 12, lanes = 3;
    const qDim = nH * hd, kvDim = nKV * hd, qkvDim = qDim + 2 * kvDim;
    const batch = [{ lane: 1, pos: 7 }, { lane: 2, pos: 0 }, { lane: 0, pos: 11 }];
    const rows = batch.length;
    const qkv = randomArray(r, rows * qkvDim, -2, 2);
    const { cos, sin, table } = ropeTable(hd, cap);
    const prog = await qkRopeProgram(device, ring, {
      nH,
      nKV,
      hd,
      capacity: cap,
      qkNorm: "none",
      eps: 1e-6,
      clip: 0,
      kvDtype: "f32",
    });
    const cacheFloats = lanes * nKV * cap * hd;
    const qb = buf(device, "q", new Float32Array(rows * qDim));
    const kb = buf(device, "k", new Float32Array(cacheFloats)),
      vb = buf(device, "v", new Float32Array(cacheFloats));
    const group = prog.bind("t", [
      buf(device, "qkv", qkv),
      buf(device, "rope", table),
      buf(device, "nw", new Float32Array(4)),
      qb,
      kb,
      vb,
    ]);
    const gotQ = new Float32Array(
      await runAndRead(
        device,
        ring,
        [{ program: prog, group, grid: [nH + nKV, rows, 1] }],
        { rows, batch: batch.map((b) => ({ pos: b.pos, lane: b.lane, ringIn: 0, step: 0 })) },
        qb,
        rows * qDim * 4,
      ),
    );
    const kc = new Float32Array(await readBuffer(device, kb, 0, cacheFloats * 4));
    const vc = new Float32Array(await readBuffer(device, vb, 0, cacheFloats * 4));
    const written = new Set<number>();
    batch.forEach((b, t) => {
      const q = qkv.slice(t * qkvDim, t * qkvDim + qDim);
      const k = qkv.slice(t * qkvDim + qDim, t * qkvDim + qDim + kvDim);
      const v = qkv.subarray(t * qkvDim + qDim + kvDim, (t + 1) * qkvDim);
      ropeRef(q, 1, nH, hd, [b.pos], cos, sin);
      ropeRef(k, 1, nKV, hd, [b.pos], cos, sin);
      assert.ok(relError(gotQ.subarray(t * qDim, (t + 1) * qDim), q) < 1e-5, `q of row ${t}`);
      for (let h = 0; h < nKV; h++) {
        for (let i = 0; i < hd; i++) {
          const at = ((b.lane * nKV + h) * cap + b.pos) * hd + i;
          written.add(at);
          assert.ok(Math.abs(kc[at] - k[h * hd + i]) <= 1e-5, `k of row ${t} at ${at}`);
          assert.equal(vc[at], v[h * hd + i], `v of row ${t} at ${at}`);
        }
      }
    });
    // No other cache entry was touched.
    kc.forEach((x, i) => written.has(i) || assert.equal(x, 0, `k cache entry ${i}`));
  },
});
