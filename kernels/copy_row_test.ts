import assert from "node:assert/strict";
import { copyLastRowProgram, copyLastRowRef } from "./copy_row.ts";
import { buf, randomArray, rng, runAndRead, SKIP_GPU, testGpu } from "./test_util.ts";

Deno.test({
  name: "copyLastRow copies row st.rows − 1 exactly, for random shapes",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device, ring } = await testGpu();
    const r = rng(91);
    for (const [rows, n] of [[1, 64], [7, 300], [3, 1]]) {
      const src = randomArray(r, rows * n);
      const prog = await copyLastRowProgram(device, ring, n);
      const dst = buf(device, "dst", new Float32Array(n));
      const got = new Float32Array(
        await runAndRead(
          device,
          ring,
          [{
            program: prog,
            group: prog.bind("t", [buf(device, "src", src), dst]),
            grid: [Math.ceil(n / 256), 1, 1],
          }],
          { rows },
          dst,
          n * 4,
        ),
      );
      assert.deepEqual(got, copyLastRowRef(src, rows, n), `[${rows}, ${n}]`);
    }
  },
});
