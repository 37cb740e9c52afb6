import assert from "node:assert/strict";
import { SseStream } from "./sse.ts";

Deno.test("SseStream frames events, splits multi-line data and refuses line breaks in names", async () => {
  const sse = new SseStream({ keepAliveMs: 0 });
  let refused: unknown;
  const res = sse.response(async (sink) => {
    await sink.send({ a: "x\ny" }, "token");
    await sink.send("line 1\nline 2");
    try {
      await sink.send("x", "bad\nname");
    } catch (e) {
      refused = e;
    }
  });
  assert.equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
  assert.equal(await res.text(), 'event: token\ndata: {"a":"x\\ny"}\n\ndata: line 1\ndata: line 2\n\n');
  assert.ok(refused instanceof TypeError);
});

Deno.test("SseStream sends keep-alive comments while the producer is quiet", async () => {
  const sse = new SseStream({ keepAliveMs: 20 });
  const res = sse.response(async (sink) => {
    await new Promise((r) => setTimeout(r, 120));
    await sink.send("late");
  });
  const text = await res.text();
  assert.match(text, /^(: ping\n\n)+data: late\n\n$/);
});

Deno.test("SseStream applies backpressure and aborts its signal when the reader cancels", async () => {
  const sse = new SseStream({ keepAliveMs: 0, highWaterMark: 2 });
  let sent = 0;
  let finished = false;
  const res = sse.response(async (sink) => {
    for (let i = 0; i < 100 && !sink.signal.aborted; i++) {
      await sink.send(String(i));
      sent++;
    }
    finished = true;
  });
  await new Promise((r) => setTimeout(r, 30));
  assert.ok(sent <= 3, `the producer waits for the reader (sent ${sent})`);
  const reader = res.body!.getReader();
  await reader.read();
  await new Promise((r) => setTimeout(r, 10));
  assert.ok(sent <= 4);
  assert.equal(sse.signal.aborted, false);
  await reader.cancel("gone");
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(sse.signal.aborted, true);
  assert.equal(finished, true, "the producer saw the abort and ended");
  assert.ok(sent < 100);
});
