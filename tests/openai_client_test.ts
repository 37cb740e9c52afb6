/**
 * End to end with the official `openai` npm client against a real `Deno.serve` on a random local port:
 * completions with and without streaming, errors as typed client exceptions, a disconnect that frees its
 * sequence within 1 s, 429 under overload, request-smuggling and header abuse on the raw socket, and one run on
 * WebGPU.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";
import { GpuError } from "../engine/errors.ts";
import { loadModel } from "../engine/model.ts";
import type { Model } from "../engine/types.ts";
import { createPipeline, type Pipeline } from "../pipeline.ts";
import { type AppOptions, createApp } from "../routes/mod.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const FIXTURE = `${ROOT}fixtures/models/olmoe`;
const SANITIZE = { sanitizeOps: true, sanitizeResources: true } as const;
const model = await loadModel(FIXTURE, { backend: "cpu" });
const MESSAGES = [{ role: "system" as const, content: "Be brief." }, {
  role: "user" as const,
  content: "Hi there",
}];

/** Serves `pipeline` on 127.0.0.1:0 for the duration of `fn`. */
async function withServer(
  pipeline: Pipeline,
  options: AppOptions,
  fn: (base: string, client: OpenAI) => Promise<void>,
): Promise<void> {
  const app = createApp(pipeline, { modelId: "olmoe", keepAliveMs: 0, ...options });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, app.fetch);
  const base = `http://127.0.0.1:${server.addr.port}`;
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: options.apiKey ?? "unused", maxRetries: 0 });
  try {
    await fn(base, client);
  } finally {
    await server.shutdown();
  }
}

/** The greedy answer the model itself gives to `messages`, as text. */
async function greedy(m: Model, messages: typeof MESSAGES, maxTokens: number): Promise<string> {
  const tok = m.tokenizer;
  const ids = tok.encode(tok.applyChatTemplate(messages), { addSpecialTokens: false });
  return tok.decode(await m.generate(ids, { maxTokens, temperature: 0 }), { skipSpecialTokens: true });
}

async function waitFor(what: string, ok: () => boolean, ms: number): Promise<number> {
  const t0 = performance.now();
  while (!ok()) {
    if (performance.now() - t0 > ms) throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
  return performance.now() - t0;
}

Deno.test(
  "the openai client lists models and completes chats, with and without streaming",
  SANITIZE,
  async () => {
    const p = createPipeline({ model });
    await withServer(p, {}, async (_base, client) => {
      const models = await client.models.list();
      assert.deepEqual(models.data.map((m) => m.id), ["olmoe"]);
      assert.equal((await client.models.retrieve("olmoe")).owned_by, "edgemix");

      const expected = await greedy(model, MESSAGES, 16);
      const completion = await client.chat.completions.create({
        model: "olmoe",
        messages: MESSAGES,
        max_tokens: 16,
        temperature: 0,
        seed: 3,
      });
      assert.equal(completion.object, "chat.completion");
      assert.equal(completion.choices[0].message.content, expected);
      assert.equal(
        completion.usage!.total_tokens,
        completion.usage!.prompt_tokens + completion.usage!.completion_tokens,
      );

      const stream = await client.chat.completions.create({
        model: "olmoe",
        messages: MESSAGES,
        max_tokens: 16,
        stream: true,
        stream_options: { include_usage: true },
      });
      let content = "";
      let role: string | undefined;
      let finish: string | null | undefined;
      let usage;
      for await (const chunk of stream) {
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices[0];
        if (!choice) continue;
        role ??= choice.delta.role;
        content += choice.delta.content ?? "";
        finish = choice.finish_reason ?? finish;
      }
      assert.equal(role, "assistant");
      assert.equal(content, expected);
      assert.equal(finish, completion.choices[0].finish_reason);
      assert.deepEqual(usage, completion.usage);
    });
  },
);

Deno.test("the openai client sees errors as its typed exceptions", SANITIZE, async () => {
  const p = createPipeline({ model, maxConcurrency: 1, queue: 0, defaults: { maxTokens: 400 } });
  await withServer(p, {}, async (_base, client) => {
    const bad = await client.chat.completions.create({ model: "olmoe", messages: MESSAGES, temperature: 5 })
      .catch((e) => e);
    assert.ok(bad instanceof OpenAI.BadRequestError, String(bad));
    assert.equal(bad.status, 400);
    assert.equal(bad.param, "temperature");
    const missing = await client.chat.completions.create({ model: "gpt-4", messages: MESSAGES }).catch((e) =>
      e
    );
    assert.ok(missing instanceof OpenAI.NotFoundError);
    // Hold the only sequence with a stream, then overload.
    const holder = await client.chat.completions.create({ model: "olmoe", messages: MESSAGES, stream: true });
    const busy = await client.chat.completions.create({ model: "olmoe", messages: MESSAGES }).catch((e) => e);
    assert.ok(busy instanceof OpenAI.RateLimitError, String(busy));
    assert.ok(Number(busy.headers.get("retry-after")) >= 1);
    holder.controller.abort();
  });
  await withServer(createPipeline({ model }), { apiKey: "right" }, async (base) => {
    const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: "wrong", maxRetries: 0 });
    const denied = await wrong.models.list().catch((e) => e);
    assert.ok(denied instanceof OpenAI.AuthenticationError);
    const right = new OpenAI({ baseURL: `${base}/v1`, apiKey: "right", maxRetries: 0 });
    assert.equal((await right.models.list()).data.length, 1);
  });
});

Deno.test(
  "a GPU lost mid-stream reaches the client as an APIError, and the sequence is freed",
  SANITIZE,
  async () => {
    // Fault injection around the real model: the device is lost after the first token.
    const lost = new Proxy(model, {
      get(target, key) {
        if (key === "stream") {
          return async function* (ids: readonly number[], o?: Parameters<Model["stream"]>[1]) {
            for await (const t of target.stream(ids, o)) {
              yield t;
              throw new GpuError("Cannot run the decoder: the GPU device was lost");
            }
          };
        }
        const v = Reflect.get(target, key, target);
        return typeof v === "function" ? v.bind(target) : v;
      },
    });
    const p = createPipeline({ model: lost, defaults: { maxTokens: 50 } });
    await withServer(p, {}, async (_base, client) => {
      const stream = await client.chat.completions.create({
        model: "olmoe",
        messages: MESSAGES,
        stream: true,
      });
      const chunks: unknown[] = [];
      let error: unknown;
      try {
        for await (const chunk of stream) chunks.push(chunk);
      } catch (e) {
        error = e;
      }
      assert.ok(chunks.length >= 1, "the role chunk came first");
      assert.ok(error instanceof OpenAI.APIError, String(error));
      assert.match((error as Error).message, /GPU device was lost/);
      assert.equal(p.scheduler.active, 0);
    });
  },
);

Deno.test("a client that disconnects mid-stream frees its sequence within 1 s", SANITIZE, async () => {
  const p = createPipeline({ model, maxConcurrency: 1, defaults: { maxTokens: 480 } });
  await withServer(p, {}, async (base, client) => {
    const ctl = new AbortController();
    const res = await fetch(`${base}/ask`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ question: "Tell me everything", stream: true }),
      signal: ctl.signal,
    });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while ((text.match(/event: token/g) ?? []).length < 3) text += (await reader.read()).value;
    assert.equal(p.scheduler.active, 1);
    ctl.abort();
    await reader.cancel().catch(() => {});
    const freed = await waitFor("the sequence to be freed", () => p.scheduler.active === 0, 1000);
    assert.ok(freed < 1000, `freed after ${freed} ms`);
    assert.equal(p.kvCacheBytes(), 0);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /^edgemix_requests_finished_total\{finish_reason="abort"\} 1$/m);
    // The next request gets the sequence at once.
    const next = await client.chat.completions.create({ model: "olmoe", messages: MESSAGES, max_tokens: 2 });
    assert.equal(next.choices.length, 1);
  });
});

Deno.test("the openai client's own abort frees the sequence too", SANITIZE, async () => {
  const p = createPipeline({ model, maxConcurrency: 1, defaults: { maxTokens: 480 } });
  await withServer(p, {}, async (_base, client) => {
    const stream = await client.chat.completions.create({ model: "olmoe", messages: MESSAGES, stream: true });
    let n = 0;
    for await (const _ of stream) if (++n === 4) break; // break aborts the request
    await waitFor("the sequence to be freed", () => p.scheduler.active === 0, 1000);
  });
});

Deno.test(
  "over real HTTP: 429 with Retry-After when the queue is full, then service resumes",
  SANITIZE,
  async () => {
    const p = createPipeline({ model, maxConcurrency: 1, queue: 1, defaults: { maxTokens: 480 } });
    await withServer(p, {}, async (base, client) => {
      const open = () =>
        fetch(`${base}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ messages: MESSAGES, stream: true }),
        });
      const a = await open(), b = await open();
      assert.deepEqual([a.status, b.status], [200, 200]);
      assert.deepEqual([p.scheduler.active, p.scheduler.waiting], [1, 1]);
      const c = await open();
      assert.equal(c.status, 429);
      assert.ok(Number(c.headers.get("retry-after")) >= 1);
      assert.equal((await c.json()).error.type, "rate_limit_error");
      await a.body!.cancel();
      await b.body!.cancel();
      await waitFor("both sequences to end", () => p.scheduler.active + p.scheduler.waiting === 0, 2000);
      const ok = await client.chat.completions.create({ model: "olmoe", messages: MESSAGES, max_tokens: 1 });
      assert.equal(ok.choices.length, 1);
    });
  },
);

/** Sends raw bytes and returns what the server answers before closing (or within 2 s). */
async function rawHttp(port: number, request: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(request));
    const buf = new Uint8Array(4096);
    const timer = setTimeout(() => conn.close(), 2000);
    let out = "";
    try {
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) break;
        out += new TextDecoder().decode(buf.subarray(0, n));
        if (/\r\n\r\n/.test(out)) break;
      }
    } finally {
      clearTimeout(timer);
    }
    return out;
  } finally {
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
}

Deno.test("request smuggling and header abuse are refused on the raw socket", SANITIZE, async () => {
  const p = createPipeline({ model });
  const app = createApp(p, { modelId: "olmoe", bodyLimitBytes: 1024 });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, app.fetch);
  const port = server.addr.port;
  try {
    const body = '{"question":"' + "x".repeat(4000) + '"}';
    const chunked =
      `POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n` +
      `Connection: close\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
    assert.match(await rawHttp(port, chunked), /^HTTP\/1\.1 413 /);
    const both = `POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n` +
      `Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n${
        body.length.toString(16)
      }\r\n${body}\r\n0\r\n\r\n`;
    const answer = await rawHttp(port, both);
    assert.match(answer, /^(HTTP\/1\.1 (400|413) |$)/, "refused or closed, never served");
    const header = `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${
      "a".repeat(64 * 1024)
    }\r\nConnection: close\r\n\r\n`;
    assert.match(await rawHttp(port, header), /^(HTTP\/1\.1 (400|431) |$)/, "refused or closed");
    const ok = await fetch(`http://127.0.0.1:${port}/health`);
    assert.equal(ok.status, 200, "still serving");
    await ok.body?.cancel();
  } finally {
    await server.shutdown();
  }
});

Deno.test({
  name: "end to end on WebGPU: the openai client gets the model's greedy answer",
  ignore: Deno.env.get("EDGEMIX_SKIP_GPU_TESTS") === "1",
  ...SANITIZE,
  fn: async () => {
    const gpu = await loadModel(FIXTURE, { backend: "webgpu" });
    try {
      const expected = await greedy(gpu, MESSAGES, 8);
      await withServer(createPipeline({ model: gpu }), {}, async (_base, client) => {
        const completion = await client.chat.completions.create({
          model: "olmoe",
          messages: MESSAGES,
          max_tokens: 8,
        });
        assert.equal(completion.choices[0].message.content, expected);
        const health = await (await fetch(`${_base}/health`)).json();
        assert.equal(health.backend, "webgpu");
      });
    } finally {
      await gpu.dispose();
    }
  },
});
