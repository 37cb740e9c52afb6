import assert from "node:assert/strict";
import { createProgress, formatDuration, formatProgressLine, type ProgressEvent } from "./progress.ts";

function recorder(): { events: ProgressEvent[]; sink: { onProgress(e: ProgressEvent): void } } {
  const events: ProgressEvent[] = [];
  return { events, sink: { onProgress: (e) => events.push({ ...e }) } };
}

Deno.test("progress sends a sink every forward update and one finished event", () => {
  const { events, sink } = recorder();
  const p = createProgress("model.safetensors", 300, { sink });
  p.update(0);
  p.update(100);
  p.update(100);
  p.update(250);
  p.update(300);
  p.done();
  p.done();
  p.update(400);
  assert.deepEqual(events.map((e) => e.done), [0, 100, 250, 300, 300]);
  assert.deepEqual(events.map((e) => e.finished), [false, false, false, false, true]);
  assert.ok(events.every((e) => e.label === "model.safetensors" && e.total === 300));
});

Deno.test("progress events never go back when a transfer restarts, and take a total learned later", () => {
  const { events, sink } = recorder();
  const p = createProgress("f", undefined, { sink });
  p.update(50);
  p.update(0, 200);
  p.update(40, 200);
  p.update(120, 200);
  p.done();
  assert.deepEqual(events.map((e) => e.done), [50, 120, 120]);
  assert.equal(events[0].total, undefined);
  assert.equal(events.at(-1)!.total, 200);
  assert.equal(events.at(-1)!.finished, true);
});

Deno.test("progress without a sink and disabled is a silent no-op", () => {
  const p = createProgress("f", 10, { enabled: false });
  p.update(5);
  p.done();
});

Deno.test("formatProgressLine shows percent, a bar, MiB, rate and ETA", () => {
  const MiB = 1024 * 1024;
  const line = formatProgressLine("model.safetensors", 5 * MiB, 20 * MiB, 2.5 * MiB);
  assert.equal(line, "model.safetensors   25%  [#####---------------]  5.0/20.0 MiB  2.5 MiB/s  ETA 6s");
  assert.equal(formatProgressLine("x", 3 * MiB, undefined, 0), "x  3.0 MiB");
  assert.equal(
    formatProgressLine("x", 4 * MiB, 4 * MiB, MiB),
    "x  100%  [####################]  4.0/4.0 MiB  1.0 MiB/s",
  );
  const long = formatProgressLine("a/".repeat(40) + "model.safetensors", 0, 1, 0);
  assert.ok(long.startsWith("…") && long.includes("model.safetensors"));
});

Deno.test("formatDuration uses seconds, minutes or hours", () => {
  assert.equal(formatDuration(0.2), "1s");
  assert.equal(formatDuration(59), "59s");
  assert.equal(formatDuration(185), "3m05s");
  assert.equal(formatDuration(3720), "1h02m");
});
