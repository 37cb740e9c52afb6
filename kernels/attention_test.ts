import assert from "node:assert/strict";
import { attentionRef } from "./cpu/attention.ts";
import { attentionCombineProgram, attentionProgram, partialFloats } from "./attention.ts";
import { mergeGroupsX } from "./split_merge.ts";
import { buf, randomArray, relError, rng, roundF16, runAndRead, SKIP_GPU, testGpu } from "./test_util.ts";

const cases = [
  { nH: 4, nKV: 2, hd: 16, rows: 1, pos: 0, window: 0 },
  { nH: 4, nKV: 4, hd: 24, rows: 5, pos: 70, window: 0 },
  { nH: 8, nKV: 2, hd: 128, rows: 2, pos: 130, window: 0 },
  { nH: 2, nKV: 1, hd: 8, rows: 3, pos: 100, window: 33 },
];

for (const kvDtype of ["f32", "f16"] as const) {
  Deno.test({
    name: `attention (${kvDtype} cache) matches attentionRef on random shapes`,
    ignore: SKIP_GPU,
    fn: async () => {
      const { device, ring } = await testGpu();
      const r = rng(21);
      for (const c of cases) {
        const cap = c.pos + c.rows + 2;
        const q = randomArray(r, c.rows * c.nH * c.hd, -1, 1);
        let k = randomArray(r, c.nKV * cap * c.hd, -1, 1), v = randomArray(r, c.nKV * cap * c.hd, -1, 1);
        if (kvDtype === "f16") {
          k = roundF16(k);
          v = roundF16(v);
        }
        const data = (
          a: Float32Array,
        ) => (kvDtype === "f16" ? new Uint16Array(new Float16Array(a).buffer) : a);
        const prog = await attentionProgram(device, ring, {
          nH: c.nH,
          nKV: c.nKV,
          hd: c.hd,
          capacity: cap,
          scale: 0.3,
          window: c.window,
          kvDtype,
        });
        const ob = buf(device, "o", new Float32Array(c.rows * c.nH * c.hd));
        const group = prog.bind("t", [
          buf(device, "q", q),
          buf(device, "k", data(k)),
          buf(device, "v", data(v)),
          ob,
        ]);
        const got = new Float32Array(
          await runAndRead(
            device,
            ring,
            [{ program: prog, group, grid: [c.nH, c.rows, 1] }],
            { rows: c.rows, pos: c.pos },
            ob,
            c.rows * c.nH * c.hd * 4,
          ),
        );
        const positions = Array.from({ length: c.rows }, (_, i) => c.pos + i);
        const ref = attentionRef(q, k, v, c.rows, positions, { ...c, capacity: cap, scale: 0.3 });
        const err = relError(got, ref);
        assert.ok(err < 1e-5, `${JSON.stringify(c)}: ${err}`);
      }
    },
  });
}

for (const kvDtype of ["f32", "f16"] as const) {
  Deno.test({
    name: `split-K attention + merge (${kvDtype} cache) matches attentionRef`,
    ignore: SKIP_GPU,
    fn: async () => {
      const { device, ring } = await testGpu();
      const r = rng(22);
      // The last case has more splits (258) than a merge workgroup has threads, and a head width that is not a
      // multiple of the merge's channel block.
      // Splits of several key tiles (160: two and a half) run the online softmax across tiles.
      for (
        const [c, split] of [
          ...cases.map((c) => [c, 64] as const),
          [{ nH: 4, nKV: 2, hd: 32, rows: 1, pos: 300, window: 100 }, 64],
          [{ nH: 2, nKV: 1, hd: 40, rows: 1, pos: 16500, window: 0 }, 64],
          [cases[2], 160],
          [{ nH: 4, nKV: 2, hd: 32, rows: 1, pos: 300, window: 100 }, 160],
        ] as const
      ) {
        const cap = c.pos + c.rows + 70;
        const q = randomArray(r, c.rows * c.nH * c.hd, -1, 1);
        let k = randomArray(r, c.nKV * cap * c.hd, -1, 1), v = randomArray(r, c.nKV * cap * c.hd, -1, 1);
        if (kvDtype === "f16") {
          k = roundF16(k);
          v = roundF16(v);
        }
        const data = (
          a: Float32Array,
        ) => (kvDtype === "f16" ? new Uint16Array(new Float16Array(a).buffer) : a);
        const params = {
          nH: c.nH,
          nKV: c.nKV,
          hd: c.hd,
          capacity: cap,
          scale: 0.3,
          window: c.window,
          kvDtype,
          split,
        };
        const prog = await attentionProgram(device, ring, params);
        const comb = await attentionCombineProgram(device, ring, params);
        const ns = Math.ceil(cap / split);
        const pb = buf(device, "partials", new Float32Array(c.rows * c.nH * ns * partialFloats(c.hd)));
        const ob = buf(device, "o", new Float32Array(c.rows * c.nH * c.hd));
        const splits = Math.floor((c.pos + c.rows - 1) / split) + 1;
        const got = new Float32Array(
          await runAndRead(
            device,
            ring,
            [
              {
                program: prog,
                group: prog.bind("t", [
                  buf(device, "q", q),
                  buf(device, "k", data(k)),
                  buf(device, "v", data(v)),
                  pb,
                ]),
                grid: [c.nH, c.rows, splits],
              },
              { program: comb, group: comb.bind("c", [pb, ob]), grid: [mergeGroupsX(c.nH, c.hd), c.rows, 1] },
            ],
            { rows: c.rows, pos: c.pos },
            ob,
            c.rows * c.nH * c.hd * 4,
          ),
        );
        const positions = Array.from({ length: c.rows }, (_, i) => c.pos + i);
        const ref = attentionRef(q, k, v, c.rows, positions, { ...c, capacity: cap, scale: 0.3 });
        const err = relError(got, ref);
        assert.ok(err < 1e-5, `${JSON.stringify(c)}: ${err}`);
      }
    },
  });
}

Deno.test({
  name: "split-K attention + merge, batched: each row attends over its own lane of the cache (attentionRef)",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const r = rng(23);
    const nH = 4, nKV = 2, hd = 16, cap = 200, split = 64, lanes = 3, window = 0;
    // Rows (sequences) at different positions, lanes out of order: split counts differ per row.
    const batch = [{ lane: 2, pos: 150 }, { lane: 0, pos: 3 }, { lane: 1, pos: 64 }];
    const rows = batch.length;
    const q = randomArray(r, rows * nH * hd, -1, 1);
    const k = randomArray(r, lanes * nKV * cap * hd, -1, 1),
      v = randomArray(r, lanes * nKV * cap * hd, -1, 1);
    const params = { nH, nKV, hd, capacity: cap, scale: 0.3, window, kvDtype: "f32" as const, split };
    const prog = await attentionProgram(device, ring, params);
    const comb = await attentionCombineProgram(device, ring, params);
    const ns = Math.ceil(cap / split);
    const pb = buf(device, "partials", new Float32Array(rows * nH * ns * partialFloats(hd)));
    const ob = buf(device, "o", new Float32Array(rows * nH * hd));
    const splits = Math.max(...batch.map((b) => Math.floor(b.pos / split) + 1));
    const got = new Float32Array(
      await runAndRead(
        device,
        ring,
        [
          {
            program: prog,
            group: prog.bind("t", [buf(device, "q", q), buf(device, "k", k), buf(device, "v", v), pb]),
            grid: [nH, rows, splits],
          },
          { program: comb, group: comb.bind("c", [pb, ob]), grid: [mergeGroupsX(nH, hd), rows, 1] },
        ],
        { rows, batch: batch.map((b) => ({ pos: b.pos, lane: b.lane, ringIn: 0, step: 0 })) },
        ob,
        rows * nH * hd * 4,
      ),
    );
    const laneSize = nKV * cap * hd;
    batch.forEach((b, i) => {
      const ref = attentionRef(
        q.subarray(i * nH * hd, (i + 1) * nH * hd),
        k.subarray(b.lane * laneSize, (b.lane + 1) * laneSize),
        v.subarray(b.lane * laneSize, (b.lane + 1) * laneSize),
        1,
        [b.pos],
        { nH, nKV, hd, capacity: cap, scale: 0.3, window },
      );
      const err = relError(got.subarray(i * nH * hd, (i + 1) * nH * hd), ref);
      assert.ok(err < 1e-5, `row ${i} (lane ${b.lane}, pos ${b.pos}): ${err}`);
    });
  },
});
