import assert from "node:assert/strict";
import { readBuffer } from "./gpu.ts";
import { GpuKeepAwake } from "./keep_awake.ts";
import { SKIP_GPU, testGpu } from "./test_util.ts";

const count = async (device: GPUDevice, k: GpuKeepAwake) => {
  await device.queue.onSubmittedWorkDone();
  return new Uint32Array(await readBuffer(device, k.counter, 0, 4))[0];
};

Deno.test({
  name: "GpuKeepAwake dispatches on its interval until stopped; warmUp runs when stale or forced",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device } = await testGpu();
    const k = new GpuKeepAwake(device, 20);
    assert.equal(k.stale, true, "never warmed up");
    await new Promise((r) => setTimeout(r, 300));
    const a = await count(device, k);
    assert.ok(a >= 3, `expected several dispatches in 300 ms at 20 ms, got ${a}`);
    await k.warmUp(50);
    assert.equal(k.stale, false);
    const b = await count(device, k);
    assert.ok(b > a + 1, `the warm-up dispatched ${b - a}`);
    await k.warmUp(50); // not stale: nothing runs
    const c = await count(device, k);
    assert.ok(c - b < 10, `a warm-up ran while fresh: ${c - b}`);
    // A busy main thread (no ticks for a second) makes it stale again.
    const t0 = performance.now();
    while (performance.now() - t0 < 1000) { /* busy */ }
    assert.equal(k.stale, true);
    k.stop();
    k.stop();
    assert.equal(k.running, false);
    const d = await count(device, k);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(await count(device, k), d, "no dispatch after stop()");
  },
});

Deno.test({
  name:
    "GpuKeepAwake: ticks missed while the GPU was busy (noteBusy) do not make it stale; earlier staleness stays",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device } = await testGpu();
    const k = new GpuKeepAwake(device, 20);
    try {
      k.noteBusy(performance.now());
      assert.equal(k.stale, true, "never warmed up: still stale");
      await k.warmUp(50);
      const block = () => {
        const t0 = performance.now();
        while (performance.now() - t0 < 1000) { /* the main thread blocked, as in a readback */ }
      };
      // The wait reported before any tick ran.
      let since = performance.now();
      block();
      assert.equal(k.stale, true, "a second without ticks");
      k.noteBusy(since);
      assert.equal(k.stale, false);
      // A tick runs first and finds the gap; the report clears it.
      since = performance.now();
      block();
      await new Promise((r) => setTimeout(r, 60));
      assert.equal(k.stale, true);
      k.noteBusy(since);
      assert.equal(k.stale, false);
      // Staleness from before the busy period stays.
      block();
      await new Promise((r) => setTimeout(r, 60));
      k.noteBusy(performance.now());
      assert.equal(k.stale, true);
    } finally {
      k.stop();
    }
  },
});

Deno.test({
  name: "GpuKeepAwake rejects a non-positive interval",
  ignore: SKIP_GPU,
  fn: async () => {
    const { device } = await testGpu();
    assert.throws(() => new GpuKeepAwake(device, 0), RangeError);
    assert.throws(() => new GpuKeepAwake(device, Number.NaN), RangeError);
  },
});
