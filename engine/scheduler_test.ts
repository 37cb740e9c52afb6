import assert from "node:assert/strict";
import { DeadlineExceededError, QueueFullError, Scheduler, SchedulerClosedError } from "./scheduler.ts";

/** Whether `p` has settled after the pending microtasks ran. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(() => done = true, () => done = true);
  await new Promise((r) => setTimeout(r, 0));
  return done;
}

Deno.test("Scheduler admits maxConcurrency at once, queues up to `queue`, refuses the rest", async () => {
  const s = new Scheduler({ maxConcurrency: 2, queue: 2 });
  const a = s.reserve(), b = s.reserve();
  assert.equal(await settled(a.ready), true);
  assert.equal(await settled(b.ready), true);
  const c = s.reserve(), d = s.reserve();
  assert.deepEqual([s.active, s.waiting], [2, 2]);
  assert.equal(await settled(c.ready), false);
  let err: unknown;
  try {
    s.reserve();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof QueueFullError);
  assert.ok(err.retryAfterSeconds >= 1);
  assert.match(err.message, /all 2 sequences are busy and 2 requests are already waiting/);
  // Slots pass to the queue in arrival order.
  a.release();
  assert.equal(await settled(c.ready), true);
  assert.equal(await settled(d.ready), false);
  a.release(); // idempotent: does not free a second slot
  assert.deepEqual([s.active, s.waiting], [2, 1]);
  b.release();
  assert.equal(await settled(d.ready), true);
  c.release();
  d.release();
  assert.deepEqual([s.active, s.waiting, s.admitted], [0, 0, 4]);
});

Deno.test("Scheduler: a queued request that aborts leaves the queue and never gets a slot", async () => {
  const s = new Scheduler({ maxConcurrency: 1, queue: 4 });
  const a = s.reserve();
  const ctl = new AbortController();
  const b = s.reserve({ signal: ctl.signal });
  const c = s.reserve();
  ctl.abort(new Error("client left"));
  await assert.rejects(b.ready, /client left/);
  assert.equal(s.waiting, 1);
  a.release();
  await c.ready;
  assert.equal(s.active, 1, "the slot went to c, not to the aborted b");
  b.release();
  assert.equal(s.active, 1);
  c.release();
  assert.throws(() => s.reserve({ signal: ctl.signal }), /client left/);
});

Deno.test("Scheduler: releasing a queued reservation leaves the queue", async () => {
  const s = new Scheduler({ maxConcurrency: 1, queue: 1 });
  const a = s.reserve();
  const b = s.reserve();
  b.release();
  await assert.rejects(b.ready, { name: "AbortError" });
  assert.equal(s.waiting, 0);
  a.release();
  assert.equal(s.active, 0);
});

Deno.test("Scheduler: a queued request past its deadline fails and leaves the queue", async () => {
  const s = new Scheduler({ maxConcurrency: 1, queue: 1 });
  const a = s.reserve();
  const t0 = performance.now();
  const b = s.reserve({ deadline: Date.now() + 30 });
  await assert.rejects(b.ready, DeadlineExceededError);
  assert.ok(performance.now() - t0 >= 25);
  assert.ok(b.queuedMs >= 25);
  assert.equal(s.waiting, 0);
  a.release();
  assert.equal(s.active, 0);
});

Deno.test("Scheduler.close() fails waiting requests and refuses new ones; running ones keep their slot", async () => {
  const s = new Scheduler({ maxConcurrency: 1, queue: 1 });
  const a = s.reserve();
  const b = s.reserve();
  s.close();
  await assert.rejects(b.ready, SchedulerClosedError);
  assert.throws(() => s.reserve(), SchedulerClosedError);
  assert.deepEqual([s.active, s.closed], [1, true]);
  a.release();
  assert.equal(s.active, 0);
});

Deno.test("Scheduler: Retry-After grows with the queue and the time slots are held", async () => {
  const s = new Scheduler({ maxConcurrency: 1, queue: 0 });
  const a = s.reserve();
  await new Promise((r) => setTimeout(r, 30));
  a.release();
  const fast = s.retryAfterSeconds();
  assert.equal(fast, 1);
  const q = new Scheduler({ maxConcurrency: 1, queue: 100 });
  const held = q.reserve();
  for (let i = 0; i < 10; i++) q.reserve();
  assert.equal(
    q.retryAfterSeconds(),
    11,
    "11 requests ahead of one slot held ~1 s each (the initial estimate)",
  );
  q.close();
  held.release();
});

Deno.test("Scheduler rejects bad sizes", () => {
  assert.throws(() => new Scheduler({ maxConcurrency: 0, queue: 1 }), RangeError);
  assert.throws(() => new Scheduler({ maxConcurrency: 1.5, queue: 1 }), RangeError);
  assert.throws(() => new Scheduler({ maxConcurrency: 1, queue: -1 }), RangeError);
});
