import assert from "node:assert/strict";
import { isCommitConflict, RetriesExhausted, withCommitRetry } from "./retry.ts";

// Messages as LanceDB's JS binding raised them in this project's concurrency test and in lancedb issues.
const CONFLICTS = [
  "lance error: Retryable commit conflict for version 18: This Rewrite transaction was preempted by concurrent " +
  "transaction Update at version 18. Please retry.",
  "Commit conflict for version 8: Failed to commit the transaction after 5 retries.",
  "There was a concurrent commit that conflicts with this one and it cannot be automatically resolved.",
];

Deno.test("isCommitConflict: recognises LanceDB commit conflicts and nothing else", () => {
  for (const m of CONFLICTS) assert.equal(isCommitConflict(new Error(m)), true, m);
  assert.equal(isCommitConflict(new Error("Table 'chunks' was not found")), false);
  assert.equal(isCommitConflict(new Error("Invalid user input: no such column")), false);
  assert.equal(isCommitConflict("Retryable commit conflict"), false); // not an Error
});

Deno.test("withCommitRetry: retries conflicts with beforeRetry, then succeeds", async () => {
  let calls = 0;
  let reloads = 0;
  const result = await withCommitRetry(() => {
    calls++;
    return calls < 3 ? Promise.reject(new Error(CONFLICTS[0])) : Promise.resolve("done");
  }, { baseDelayMs: 1, beforeRetry: () => Promise.resolve(void reloads++) });
  assert.equal(result, "done");
  assert.equal(calls, 3);
  assert.equal(reloads, 2);
});

Deno.test("withCommitRetry: other errors propagate at once; exhausted retries say how many attempts", async () => {
  let calls = 0;
  await assert.rejects(
    () => withCommitRetry(() => Promise.reject(new TypeError(`bad ${++calls}`)), { baseDelayMs: 1 }),
    /bad 1/,
  );
  assert.equal(calls, 1);
  calls = 0;
  await assert.rejects(
    () =>
      withCommitRetry(() => Promise.reject(new Error(CONFLICTS[1] + ` #${++calls}`)), {
        attempts: 4,
        baseDelayMs: 1,
      }),
    (e: unknown) =>
      e instanceof RetriesExhausted && e.attempts === 4 && /#4/.test((e.cause as Error).message),
  );
  assert.equal(calls, 4);
  await assert.rejects(() => withCommitRetry(() => Promise.resolve(1), { attempts: 0 }), RangeError);
});
