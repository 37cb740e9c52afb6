import assert from "node:assert/strict";
import { gearCompressRef, gearReconstructRef, unpackHalves } from "./cpu/gear.ts";
import { gearCompressProgram, gearScratchFloats } from "./gear_compress.ts";
import { type GearLayout, gearLayout } from "./gear_layout.ts";
import { encodeDispatch, readBuffer } from "./gpu.ts";
import { buf, randomArray, rng, roundF16, SKIP_GPU, testGpu } from "./test_util.ts";

/** Ring contents with a low-rank trend and a few large entries, as real keys have. */
function ringData(l: GearLayout, seed: number): Float32Array {
  const r = rng(seed);
  const a = randomArray(r, l.batch * l.nKV * l.bufCap * l.hd, -1, 1);
  for (let i = 0; i < a.length; i++) {
    const t = Math.floor(i / l.hd), c = i % l.hd;
    a[i] += 1.5 * Math.sin(0.21 * t + c) + (r(0, 1) < 0.01 ? 6 * r(-1, 1) : 0);
  }
  return a;
}

const cases = [
  { bits: 2, hd: 24, group: 64, buffer: 64, rMax: 4, outliers: 0.02, rank: 4, nKV: 2, batch: 2 },
  { bits: 4, hd: 16, group: 32, buffer: 64, rMax: 2, outliers: 0, rank: 2, nKV: 1, batch: 1 },
  { bits: 8, hd: 32, group: 64, buffer: 128, rMax: 0, outliers: 0, rank: 0, nKV: 2, batch: 3 },
  { bits: 2, hd: 128, group: 128, buffer: 128, rMax: 4, outliers: 0.05, rank: 2, nKV: 1, batch: 1 },
];

for (const ringDtype of ["f32", "f16"] as const) {
  Deno.test({
    name: `gear compress (${ringDtype} ring) matches gearCompressRef on random shapes`,
    ignore: SKIP_GPU,
    fn: async () => {
      const { device, ring } = await testGpu();
      for (const [ci, c] of cases.entries()) {
        const l = gearLayout({ ...c, capacity: 3 * c.buffer, maxRows: 2 * c.buffer });
        let rk = ringData(l, 40 + ci), rv = ringData(l, 80 + ci);
        if (ringDtype === "f16") {
          rk = roundF16(rk);
          rv = roundF16(rv);
        }
        const data = (a: Float32Array) =>
          ringDtype === "f16" ? new Uint16Array(new Float16Array(a).buffer) : a;
        const prog = await gearCompressProgram(device, ring, {
          layout: l,
          rank: c.rank,
          loops: 3,
          seed: 9,
          ringDtype,
        });
        const sb = buf(device, "store", new Uint32Array(l.words));
        const group = prog.bind("c", [
          sb,
          buf(device, "rk", data(rk)),
          buf(device, "rv", data(rv)),
          buf(device, "scratch", new Float32Array(gearScratchFloats(l))),
        ]);
        // Two calls: a multi-row one completing 1 block (pos 0, rows buffer + 5), then a single row completing
        // the second (pos 2·buffer − 1).
        const steps = [{ pos: 0, rows: l.buffer + 5 }, { pos: 2 * l.buffer - 1, rows: 1 }];
        const offs = steps.map((s, i) =>
          ring.set(i, { ...s, step: 0, srcRing: false, ringIn: 0, logitsRow: 0 })
        );
        ring.flush(device);
        const enc = device.createCommandEncoder();
        const pass = enc.beginComputePass();
        for (const off of offs) {
          encodeDispatch(pass, ring, { program: prog, group, grid: [l.nKV, 2, l.batch] }, off);
        }
        pass.end();
        device.queue.submit([enc.finish()]);
        const got = new Uint32Array(await readBuffer(device, sb, 0, l.words * 4));
        const want = new Uint32Array(l.words);
        gearCompressRef(l, want, rk, rv, 0, l.buffer, c.rank, 3, 9);
        gearCompressRef(l, want, rk, rv, l.buffer, 2 * l.buffer, c.rank, 3, 9);
        const n = 2 * l.buffer;
        // Scales and mins: equal up to one f16 step.
        for (
          const [at, len] of [[l.off.parK, l.off.parV - l.off.parK], [l.off.parV, l.off.qK - l.off.parV]]
        ) {
          for (let i = at; i < at + len; i++) {
            const [gs, gm] = unpackHalves(got[i]), [ws, wm] = unpackHalves(want[i]);
            assert.ok(Math.abs(gs - ws) <= 1e-3 * Math.abs(ws) + 1e-7, `${JSON.stringify(c)} scale ${i}`);
            assert.ok(Math.abs(gm - wm) <= 1e-3 * Math.abs(wm) + 1e-7, `${JSON.stringify(c)} min ${i}`);
          }
        }
        // Codes: all but rare rounding ties equal.
        let diff = 0, total = 0;
        for (let i = l.off.codesK; i < l.off.parK; i++) {
          const g = got[i], w = want[i];
          for (let e = 0; e < 32; e += c.bits) {
            total++;
            if (((g >>> e) & (2 ** c.bits - 1)) !== ((w >>> e) & (2 ** c.bits - 1))) diff++;
          }
        }
        assert.ok(
          diff <= Math.max(2, total * 1e-3),
          `${JSON.stringify(c)}: ${diff} of ${total} codes differ`,
        );
        assert.deepEqual(
          Array.from(got.subarray(l.off.seg, l.off.seg + 2)),
          [0, 1],
          "segment table: one segment per call",
        );
        // The reconstructions agree closely, and are closer to the input than plain quantization would be.
        for (let b = 0; b < l.batch; b++) {
          for (let h = 0; h < l.nKV; h++) {
            for (const kind of [0, 1] as const) {
              const g = gearReconstructRef(l, got, kind, b, h, 0, n);
              const w = gearReconstructRef(l, want, kind, b, h, 0, n);
              const src = kind === 0 ? rk : rv;
              let dgw = 0, err = 0, norm = 0;
              for (let t = 0; t < n; t++) {
                for (let ch = 0; ch < l.hd; ch++) {
                  const x = src[((b * l.nKV + h) * l.bufCap + t) * l.hd + ch];
                  dgw += (g[t * l.hd + ch] - w[t * l.hd + ch]) ** 2;
                  err += (w[t * l.hd + ch] - x) ** 2;
                  norm += x * x;
                }
              }
              // Relative RMS difference: a code that rounds the other way at a tie moves one entry by a step.
              dgw = Math.sqrt(dgw / norm);
              assert.ok(dgw < 5e-3, `${JSON.stringify(c)} b${b} h${h} kind ${kind}: rms |gpu − ref| ${dgw}`);
              const rel = Math.sqrt(err / norm);
              assert.ok(
                rel < [0, 0, 0.45, 0, 0.09, 0, 0, 0, 0.006][c.bits],
                `relative error ${rel} for ${c.bits} bits`,
              );
            }
          }
        }
      }
    },
  });
}
