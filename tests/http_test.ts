/**
 * HTTP tests: every route, the error envelope and the bad inputs of the test plan (edge-and-reliability.md C.3)
 * through `app.request()` on the olmoe fixture (CPU backend), and the `main.ts serve` command end to end.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { HTTPException } from "hono/http-exception";
import { z } from "zod";
import { ContextOverflowError, GpuError, ModelDisposedError } from "../engine/errors.ts";
import { loadModel } from "../engine/model.ts";
import { DeadlineExceededError, QueueFullError, SchedulerClosedError } from "../engine/scheduler.ts";
import {
  createPipeline,
  DocumentStoreError,
  FeatureUnavailableError,
  type Pipeline,
  PromptTooLongError,
} from "../pipeline.ts";
import { createApp, mapError } from "../routes/mod.ts";
import { MemoryRetriever } from "./stage_doubles.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SANITIZE = { sanitizeOps: true, sanitizeResources: true } as const;
const model = await loadModel(`${ROOT}fixtures/models/olmoe`, { backend: "cpu" });

function pipeline(o: Partial<Parameters<typeof createPipeline>[0]> = {}): Pipeline {
  return createPipeline({ model, defaults: { maxTokens: 8 }, ...o });
}

function assertEnvelope(body: unknown, code: number, type: string): string {
  const error = (body as { error: Record<string, unknown> }).error;
  assert.ok(error, `an error envelope: ${JSON.stringify(body)}`);
  const keys = Object.keys(error).sort();
  assert.deepEqual(keys.filter((k) => !k.startsWith("n_")), ["code", "message", "param", "type"]);
  assert.equal(error.code, code);
  assert.equal(error.type, type);
  assert.equal(typeof error.message, "string");
  return error.message as string;
}

function post(
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
): RequestInit & { path: string } {
  return {
    path,
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" || body instanceof Uint8Array ? body as BodyInit : JSON.stringify(body),
  };
}

async function send(app: ReturnType<typeof createApp>, r: RequestInit & { path: string }): Promise<Response> {
  const { path, ...init } = r;
  return await app.request(path, init);
}

/** The events of an SSE body: `event` (undefined for data-only events) and the raw `data`. */
function parseSse(text: string): { event?: string; data: string }[] {
  assert.ok(text.endsWith("\n\n"), "the stream ends with a complete event");
  return text.slice(0, -2).split("\n\n").filter((b) => !b.startsWith(":")).map((block) => {
    const lines = block.split("\n");
    const event = lines.find((l) => l.startsWith("event: "))?.slice(7);
    const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
    assert.ok(
      lines.every((l) => /^(event|data): /.test(l)),
      `well-formed event block ${JSON.stringify(block)}`,
    );
    return { event, data };
  });
}

// --- health, models, routing ----------------------------------------------------------------------------

Deno.test("GET /health reports the model id, backend and dtype", SANITIZE, async () => {
  const app = createApp(pipeline(), { modelId: "tiny-olmoe" });
  const res = await app.request("/health");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
  assert.deepEqual(await res.json(), { status: "ok", model: "tiny-olmoe", backend: "cpu", dtype: "f32" });
  assert.equal((await (await createApp(pipeline()).request("/health")).json()).model, "olmoe");
});

Deno.test(
  "every route answers 503 while the model loads, after a failed load and while draining",
  SANITIZE,
  async () => {
    const loading = Promise.withResolvers<Pipeline>();
    const app = createApp(loading.promise, { modelId: "olmoe" });
    for (const r of [{ path: "/health" }, post("/ask", { question: "hi" })]) {
      const res = await send(app, r as RequestInit & { path: string });
      assert.equal(res.status, 503);
      assert.equal(assertEnvelope(await res.json(), 503, "server_error"), "Loading model");
    }
    assert.match(await (await app.request("/metrics")).text(), /edgemix_requests_running 0/);
    loading.resolve(pipeline());
    await loading.promise;
    assert.equal((await app.request("/health")).status, 200);
    assert.equal((await send(app, post("/ask", { question: "hi", max_tokens: 1 }))).status, 200);
    (await loading.promise).close();
    const draining = await app.request("/health");
    assert.equal(draining.status, 503);
    assert.equal(assertEnvelope(await draining.json(), 503, "server_error"), "The server is shutting down");
    assert.equal((await send(app, post("/ask", { question: "hi" }))).status, 503);

    const failed = createApp(Promise.reject(new Error("no weights")), { modelId: "olmoe" });
    await new Promise((r) => setTimeout(r, 0));
    const res = await failed.request("/health");
    assert.equal(res.status, 503);
    assert.equal(assertEnvelope(await res.json(), 503, "server_error"), "The model failed to load");
    assert.throws(() => createApp(loading.promise), TypeError, "a promise needs a modelId");
  },
);

Deno.test("GET /v1/models lists the one model; /v1/models/:id finds it or 404s", SANITIZE, async () => {
  const app = createApp(pipeline(), { modelId: "allenai/OLMoE-1B-7B-0924", created: 1_700_000_000 });
  const card = {
    id: "allenai/OLMoE-1B-7B-0924",
    object: "model",
    created: 1_700_000_000,
    owned_by: "edgemix",
  };
  assert.deepEqual(await (await app.request("/v1/models")).json(), { object: "list", data: [card] });
  assert.deepEqual(await (await app.request("/v1/models/allenai/OLMoE-1B-7B-0924")).json(), card);
  const res = await app.request("/v1/models/gpt-4");
  assert.equal(res.status, 404);
  assert.equal(
    assertEnvelope(await res.json(), 404, "not_found_error"),
    'Cannot find model "gpt-4": this server serves "allenai/OLMoE-1B-7B-0924"',
  );
});

Deno.test(
  "unknown routes are 404 envelopes; a known route with another method is 405 with Allow",
  SANITIZE,
  async () => {
    const app = createApp(pipeline());
    for (const [method, path] of [["GET", "/"], ["GET", "/v1/nothing"], ["PUT", "/nope"]]) {
      const res = await app.request(path, { method });
      assert.equal(res.status, 404, `${method} ${path}`);
      assert.equal(
        assertEnvelope(await res.json(), 404, "not_found_error"),
        `Cannot ${method} ${path}: no such route`,
      );
    }
    for (
      const [method, path, allow] of [["POST", "/health", "GET, HEAD"], ["GET", "/ask", "POST"], [
        "DELETE",
        "/v1/models",
        "GET, HEAD",
      ]]
    ) {
      const res = await app.request(path, { method });
      assert.equal(res.status, 405, `${method} ${path}`);
      assert.equal(res.headers.get("allow"), allow);
      assertEnvelope(await res.json(), 405, "invalid_request_error");
    }
  },
);

Deno.test("createApp() rejects a model, an empty modelId and a negative created", () => {
  assert.throws(() => createApp(model as unknown as Pipeline), TypeError);
  assert.throws(() => createApp(pipeline(), { modelId: "" }), TypeError);
  assert.throws(() => createApp(pipeline(), { created: -1 }), RangeError);
});

Deno.test("createApp() mounts inside another Hono app", SANITIZE, async () => {
  const { Hono } = await import("hono");
  const parent = new Hono().get("/", (c) => c.text("parent"));
  parent.route("/llm", createApp(pipeline(), { modelId: "olmoe" }));
  assert.equal(await (await parent.request("/")).text(), "parent");
  assert.equal((await parent.request("/llm/health")).status, 200);
  const res = await parent.request("/llm/ask", post("/", { question: "hi", max_tokens: 2 }));
  assert.equal(res.status, 200);
  assert.equal((await res.json()).usage.completion_tokens <= 2, true);
});

// --- the error mapper -----------------------------------------------------------------------------------

Deno.test("errors thrown by routes map to their status and envelope", SANITIZE, async (t) => {
  const schema = z.object({ messages: z.array(z.string()) });
  const cases: [string, () => unknown, number, string, string | null][] = [
    [
      "RangeError",
      () => new RangeError("Cannot generate: maxTokens must be positive"),
      400,
      "invalid_request_error",
      null,
    ],
    [
      "TypeError",
      () => new TypeError("Cannot generate: stop must be an array"),
      400,
      "invalid_request_error",
      null,
    ],
    [
      "ContextOverflowError",
      () => new ContextOverflowError("Cannot generate: 5000 tokens exceed the context of 4096"),
      400,
      "exceed_context_size_error",
      null,
    ],
    [
      "HTTPException 400",
      () => new HTTPException(400, { message: "Malformed JSON" }),
      400,
      "invalid_request_error",
      null,
    ],
    [
      "HTTPException 401",
      () => new HTTPException(401, { message: "Unauthorized" }),
      401,
      "authentication_error",
      null,
    ],
    [
      "HTTPException with a zod cause",
      () => new HTTPException(400, { cause: schema.safeParse({ messages: [1] }).error }),
      400,
      "invalid_request_error",
      "messages.0",
    ],
    [
      "FeatureUnavailableError",
      () => new FeatureUnavailableError("No store", "retrieval"),
      422,
      "invalid_request_error",
      "retrieval",
    ],
    ["QueueFullError", () => new QueueFullError("Busy", 3), 429, "rate_limit_error", null],
    ["ModelDisposedError", () => new ModelDisposedError(), 503, "server_error", null],
    [
      "GpuError",
      () => new GpuError("Cannot run the decoder: the GPU device was lost"),
      503,
      "server_error",
      null,
    ],
    ["SchedulerClosedError", () => new SchedulerClosedError(), 503, "server_error", null],
    ["DeadlineExceededError", () => new DeadlineExceededError("Too slow"), 504, "server_error", null],
  ];
  for (const [name, make, status, type, param] of cases) {
    await t.step(name, async () => {
      const err = make() as Error;
      const app = createApp(pipeline());
      app.get("/throw", () => {
        throw err;
      });
      const res = await app.request("/throw");
      assert.equal(res.status, status);
      const body = await res.json();
      const message = assertEnvelope(body, status, type);
      assert.equal(body.error.param, param);
      if (name.includes("zod")) assert.match(message, /^messages\.0: /);
      else assert.equal(message, err.message);
      if (status === 429) assert.equal(res.headers.get("retry-after"), "3");
    });
  }
  const mapped = mapError(new PromptTooLongError(900, 512));
  assert.equal(mapped.status, 400);
  assert.deepEqual({ ...mapped.body.error, message: "" }, {
    message: "",
    type: "exceed_context_size_error",
    param: null,
    code: 400,
    n_prompt_tokens: 900,
    n_ctx: 512,
  });
});

Deno.test(
  "unexpected errors are a generic 500 that leaks no message or stack; store errors are 503",
  SANITIZE,
  async () => {
    const app = createApp(pipeline());
    app.get("/boom", () => {
      throw new Error("Secret detail /home/user/.cache");
    });
    app.get("/store", () => {
      throw new DocumentStoreError("Cannot search the documents: the document store failed", {
        cause: new Error("/srv/lance: permission denied"),
      });
    });
    const logged: unknown[] = [];
    const original = console.error;
    console.error = (...args: unknown[]) => logged.push(...args);
    let res, store;
    try {
      res = await app.request("/boom");
      store = await app.request("/store");
    } finally {
      console.error = original;
    }
    assert.equal(res.status, 500);
    const text = await res.text();
    assert.doesNotMatch(text, /Secret|\.cache|at /);
    assert.equal(assertEnvelope(JSON.parse(text), 500, "server_error"), "Internal server error");
    assert.equal(
      (logged[0] as Error).message,
      "Secret detail /home/user/.cache",
      "the server logs the error",
    );
    assert.equal(store.status, 503);
    assert.doesNotMatch(await store.text(), /srv/);
    assert.ok(
      logged.some((l) => l instanceof Error && /permission denied/.test(l.message)),
      "the cause is logged",
    );
    assert.deepEqual(mapError("a string"), {
      status: 500,
      body: { error: { message: "Internal server error", type: "server_error", param: null, code: 500 } },
    });
  },
);

// --- /ask -----------------------------------------------------------------------------------------------

Deno.test("POST /ask answers with retrieval, gate, compression, usage and timings", SANITIZE, async () => {
  const store = new MemoryRetriever([{ id: "router", text: "The router picks experts." }]);
  const app = createApp(pipeline({ store }));
  const res = await send(app, post("/ask", { question: "What does the router pick?", max_tokens: 5 }));
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.deepEqual(Object.keys(body).sort(), [
    "answer",
    "compression",
    "finish_reason",
    "gate",
    "retrieved",
    "timings",
    "usage",
  ]);
  assert.equal(typeof body.answer, "string");
  assert.deepEqual(body.retrieved, [{ id: "router", score: 0.4, chunk: 0 }], "2 of the 5 question words");
  assert.deepEqual(body.gate, { p: null, decision: "retrieve" });
  assert.ok(body.compression.origin_tokens > 0);
  assert.ok(body.usage.completion_tokens <= 5 && body.usage.prompt_tokens > 0);
  assert.ok(body.timings.total_ms >= body.timings.ttft_ms);
});

Deno.test("POST /ask with stream: meta, token events, then exactly one done", SANITIZE, async () => {
  const app = createApp(pipeline(), { keepAliveMs: 0 });
  const res = await send(app, post("/ask", { question: "Stream please", max_tokens: 12, stream: true }));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
  assert.equal(res.headers.get("cache-control"), "no-cache");
  const events = parseSse(await res.text());
  assert.equal(events[0].event, "meta");
  const meta = JSON.parse(events[0].data);
  assert.deepEqual(Object.keys(meta).sort(), ["compression", "gate", "prompt_tokens", "retrieved"]);
  const tokens = events.slice(1, -1);
  assert.ok(tokens.length > 0 && tokens.every((e) => e.event === "token"));
  const done = events.at(-1)!;
  assert.equal(done.event, "done");
  const final = JSON.parse(done.data);
  assert.equal(tokens.map((e) => JSON.parse(e.data).text).join(""), final.answer);
  assert.equal(final.usage.prompt_tokens, meta.prompt_tokens);
  assert.ok(["stop", "length"].includes(final.finish_reason));
  // The same greedy answer without streaming.
  const plain = await send(app, post("/ask", { question: "Stream please", max_tokens: 12 })).then((r) =>
    r.json()
  );
  assert.equal(plain.answer, final.answer);
});

Deno.test("POST /ask: an error after the stream started is one JSON error event", SANITIZE, async () => {
  const store = new MemoryRetriever([{ id: "a", text: "x" }]);
  store.failWith = new Error("disk gone");
  const app = createApp(pipeline({ store }), { keepAliveMs: 0 });
  const original = console.error;
  console.error = () => {};
  let events;
  try {
    const res = await send(app, post("/ask", { question: "x", stream: true }));
    assert.equal(res.status, 200);
    events = parseSse(await res.text());
  } finally {
    console.error = original;
  }
  assert.equal(events.length, 1);
  assert.equal(events[0].event, "error");
  assertEnvelope(JSON.parse(events[0].data), 503, "server_error");
});

Deno.test(
  "POST /ask: a prompt over the context is 400 exceed_context_size_error, also with stream",
  SANITIZE,
  async () => {
    const app = createApp(pipeline({ contextLength: 512 }));
    for (const stream of [false, true]) {
      const res = await send(app, post("/ask", { question: "word ".repeat(600), stream }));
      assert.equal(res.status, 400);
      assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
      const body = await res.json();
      assertEnvelope(body, 400, "exceed_context_size_error");
      assert.equal(body.error.n_ctx, 512);
      assert.ok(body.error.n_prompt_tokens > 512);
    }
  },
);

Deno.test("POST /ask: 422 for a stage this server lacks", SANITIZE, async () => {
  const app = createApp(pipeline());
  for (
    const [body, param] of [[{ question: "q", retrieval: "always" }, "retrieval"], [{
      question: "q",
      compression: { rate: 0.5 },
    }, "compression"]] as const
  ) {
    const res = await send(app, post("/ask", body));
    assert.equal(res.status, 422);
    assert.equal((await res.json()).error.param, param);
  }
});

Deno.test("POST /ask: 429 with Retry-After when the queue is full", SANITIZE, async () => {
  const p = pipeline({ maxConcurrency: 1, queue: 0, defaults: { maxTokens: 50 } });
  const app = createApp(p, { keepAliveMs: 0 });
  const first = await send(app, post("/ask", { question: "hold", stream: true }));
  const res = await send(app, post("/ask", { question: "refused" }));
  assert.equal(res.status, 429);
  assert.ok(Number(res.headers.get("retry-after")) >= 1);
  assertEnvelope(await res.json(), 429, "rate_limit_error");
  await first.text();
  assert.equal((await send(app, post("/ask", { question: "admitted", max_tokens: 1 }))).status, 200);
  assert.match(
    await (await app.request("/metrics")).text(),
    /^edgemix_requests_rejected_total\{reason="queue_full"\} 1$/m,
  );
});

// --- /v1/chat/completions -------------------------------------------------------------------------------

Deno.test("POST /v1/chat/completions answers in the OpenAI shape", SANITIZE, async () => {
  const app = createApp(pipeline(), { modelId: "olmoe" });
  const res = await send(
    app,
    post("/v1/chat/completions", {
      model: "olmoe",
      messages: [{ role: "system", content: "Be brief." }, {
        role: "user",
        content: [{ type: "text", text: "Hi" }],
      }],
      max_tokens: 6,
      temperature: 0,
      seed: 7,
    }),
  );
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.match(body.id, /^chatcmpl-/);
  assert.equal(body.object, "chat.completion");
  assert.equal(body.model, "olmoe");
  assert.equal(body.choices.length, 1);
  assert.equal(body.choices[0].message.role, "assistant");
  assert.ok(["stop", "length"].includes(body.choices[0].finish_reason));
  assert.equal(body.usage.total_tokens, body.usage.prompt_tokens + body.usage.completion_tokens);
  const unknown = await send(
    app,
    post("/v1/chat/completions", { model: "gpt-4", messages: [{ role: "user", content: "x" }] }),
  );
  assert.equal(unknown.status, 404);
});

Deno.test(
  "POST /v1/chat/completions streams a role chunk, content, finish, usage, then [DONE]",
  SANITIZE,
  async () => {
    const app = createApp(pipeline(), { modelId: "olmoe", keepAliveMs: 0 });
    const res = await send(
      app,
      post("/v1/chat/completions", {
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 10,
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    assert.equal(res.status, 200);
    const events = parseSse(await res.text());
    assert.ok(events.every((e) => e.event === undefined), "data-only events");
    assert.equal(events.at(-1)!.data, "[DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data));
    const ids = new Set(chunks.map((c) => c.id)), created = new Set(chunks.map((c) => c.created));
    assert.equal(ids.size, 1);
    assert.equal(created.size, 1);
    assert.deepEqual(chunks[0].choices[0], {
      index: 0,
      delta: { role: "assistant", content: "" },
      finish_reason: null,
      logprobs: null,
    });
    const usage = chunks.at(-1);
    assert.deepEqual(usage.choices, []);
    const finish = chunks.at(-2);
    assert.deepEqual(finish.choices[0].delta, {});
    assert.ok(["stop", "length"].includes(finish.choices[0].finish_reason));
    const content = chunks.slice(1, -2).map((c) => c.choices[0].delta.content).join("");
    const plain = await send(
      app,
      post("/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }], max_tokens: 10 }),
    )
      .then((r) => r.json());
    assert.equal(content, plain.choices[0].message.content);
    assert.equal(usage.usage.completion_tokens, plain.usage.completion_tokens);
  },
);

Deno.test(
  "POST /v1/chat/completions honours stop strings: the answer ends before them",
  SANITIZE,
  async () => {
    const app = createApp(pipeline(), { modelId: "olmoe" });
    const ask = (stop?: string) =>
      send(
        app,
        post("/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }], max_tokens: 20, stop }),
      )
        .then((r) => r.json());
    const full = (await ask()).choices[0].message.content as string;
    const cut = full.slice(3, 5);
    assert.ok(cut.length === 2, `the fixture's answer is long enough: ${JSON.stringify(full)}`);
    const stopped = await ask(cut);
    assert.equal(stopped.choices[0].message.content, full.slice(0, full.indexOf(cut)));
    assert.equal(stopped.choices[0].finish_reason, "stop");
  },
);

// --- documents ------------------------------------------------------------------------------------------

Deno.test("document routes add, search and delete through the store", SANITIZE, async () => {
  const store = new MemoryRetriever();
  const app = createApp(pipeline({ store }));
  const add = await send(
    app,
    post("/documents", {
      documents: [{ id: "kv", text: "keys and values", metadata: { lang: "en" } }, {
        id: "router",
        text: "experts",
      }],
    }),
  );
  assert.equal(add.status, 201);
  assert.deepEqual(await add.json(), { object: "list", added: 2, ids: ["kv", "router"] });
  const search = await app.request("/documents/search?q=keys+values&k=1&mode=fts");
  assert.equal(search.status, 200);
  assert.deepEqual((await search.json()).data.map((h: { id: string }) => h.id), ["kv"]);
  const del = await app.request("/documents/kv", { method: "DELETE" });
  assert.deepEqual([del.status, await del.json()], [200, { id: "kv", deleted: true }]);
  const again = await app.request("/documents/kv", { method: "DELETE" });
  assert.equal(again.status, 404);
  assertEnvelope(await again.json(), 404, "not_found_error");
  for (const q of ["", "?q=", "?q=x&k=0", "?q=x&k=2.5", "?q=x&mode=sql"]) {
    const bad = await app.request(`/documents/search${q}`);
    assert.equal(bad.status, 400, q);
  }
  // ".." is resolved by URL parsing (no route); encoded traversal and odd ids are refused before the store.
  assert.equal((await app.request("/documents/..", { method: "DELETE" })).status, 404);
  for (const id of ["%2e%2e%2fetc%2fpasswd", "..%2F..", "a%00b", "x".repeat(300)]) {
    const bad = await app.request(`/documents/${id}`, { method: "DELETE" });
    assert.equal(bad.status, 400, id);
    assert.equal((await bad.json()).error.param, "ids.0");
  }
  assert.deepEqual([...store.docs.keys()], ["router"]);
  const noStore = createApp(pipeline());
  const res = await send(noStore, post("/documents", { documents: [{ id: "a", text: "b" }] }));
  assert.equal(res.status, 422);
});

// --- auth -----------------------------------------------------------------------------------------------

Deno.test("with an API key every route but /health needs Authorization: Bearer", SANITIZE, async () => {
  const app = createApp(pipeline(), { apiKey: "s3cret-Key" });
  assert.equal((await app.request("/health")).status, 200);
  const cases: [string, Record<string, string>][] = [
    ["/v1/models", {}],
    ["/v1/models", { authorization: "Bearer wrong" }],
    ["/v1/models", { authorization: "Bearer S3CRET-KEY" }],
    ["/v1/models", { authorization: "Basic s3cret-Key" }],
    ["/v1/models?api_key=s3cret-Key", {}],
    ["/metrics", {}],
  ];
  for (const [path, headers] of cases) {
    const res = await app.request(path, { headers });
    assert.equal(res.status, 401, `${path} ${JSON.stringify(headers)}`);
    assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="edgemix"');
    assertEnvelope(await res.json(), 401, "authentication_error");
  }
  const ask = await send(app, post("/ask", { question: "hi" }));
  assert.equal(ask.status, 401, "checked before the body is read");
  const ok = await app.request("/v1/models", { headers: { authorization: "Bearer s3cret-Key" } });
  assert.equal(ok.status, 200);
});

// --- bad inputs (edge-and-reliability.md C.3) ------------------------------------------------------------

Deno.test("bad inputs get their status and the server keeps serving", SANITIZE, async (t) => {
  const app = createApp(pipeline({ contextLength: 512 }), {
    modelId: "olmoe",
    bodyLimitBytes: 64 * 1024,
    corsOrigins: ["https://app.example"],
  });
  const chat = (extra: Record<string, unknown>) => ({
    messages: [{ role: "user", content: "hi" }],
    ...extra,
  });
  const expect = async (name: string, r: RequestInit & { path: string }, status: number, param?: string) => {
    const res = await send(app, r);
    assert.equal(res.status, status, `${name}: ${await res.clone().text()}`);
    const body = await res.json();
    assertEnvelope(body, status, body.error.type);
    if (param !== undefined) assert.equal(body.error.param, param, name);
  };
  await t.step("B-01 malformed JSON", async () => {
    for (
      const body of [
        '{"question": "hi"',
        '{"question": "hi",}',
        "{'question': 'hi'}",
        '{"question": NaN}',
        '{"t": Infinity}',
        "",
      ]
    ) {
      await expect(JSON.stringify(body), post("/ask", body), 400);
    }
  });
  await t.step("B-02 wrong top-level shape", async () => {
    for (const body of ["null", '"string"', "[123]", "[{}]", "{}"]) {
      await expect(body, post("/ask", body), 400);
    }
    await expect("missing question", post("/ask", { q: "hi" }), 400, "question");
    for (
      const messages of [null, "string", [123], [{}], [{ role: 123 }], [{ role: "system", content: 123 }], []]
    ) {
      await expect(JSON.stringify(messages), post("/v1/chat/completions", { messages }), 400);
    }
  });
  await t.step("B-03 wrong field types are not coerced", async () => {
    await expect("question: 123", post("/ask", { question: 123 }), 400, "question");
    await expect('stream: "yes"', post("/ask", { question: "q", stream: "yes" }), 400, "stream");
    await expect(
      'temperature: "0.5"',
      post("/ask", { question: "q", temperature: "0.5" }),
      400,
      "temperature",
    );
    await expect("top_k: 2.5", post("/ask", { question: "q", top_k: 2.5 }), 400, "top_k");
  });
  await t.step("B-04 numbers at the edges", async () => {
    const cases: [Record<string, unknown> | string, string][] = [
      [{ temperature: -1 }, "temperature"],
      ['{"messages":[{"role":"user","content":"hi"}],"temperature":1e999}', "temperature"],
      [{ top_p: 0 }, "top_p"],
      [{ top_p: 1.5 }, "top_p"],
      [{ top_k: -5 }, "top_k"],
      [{ max_tokens: 0 }, "max_tokens"],
      [{ max_tokens: -1 }, "max_tokens"],
      [{ max_tokens: 1e12 }, "max_tokens"],
      ['{"messages":[{"role":"user","content":"hi"}],"seed":18446744073709551615}', "seed"],
    ];
    for (const [extra, param] of cases) {
      await expect(
        param,
        post("/v1/chat/completions", typeof extra === "string" ? extra : chat(extra)),
        400,
        param,
      );
    }
  });
  await t.step(
    "B-05 unknown fields are ignored; a duplicate key is validated by its last value",
    async () => {
      const res = await send(
        app,
        post("/v1/chat/completions", chat({ max_tokens: 1, frobnicate: true, user: "u1" })),
      );
      assert.equal(res.status, 200);
      await res.json();
      await expect(
        "duplicate",
        post(
          "/v1/chat/completions",
          '{"messages":[{"role":"user","content":"hi"}],"max_tokens":1,"max_tokens":-5}',
        ),
        400,
        "max_tokens",
      );
    },
  );
  await t.step("B-06 bodies over the limit are 413, with Content-Length and chunked", async () => {
    const big = JSON.stringify({ question: "x".repeat(70 * 1024) });
    await expect("content-length", post("/ask", big), 413);
    const chunks = new TextEncoder().encode(big);
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < chunks.length; i += 8192) c.enqueue(chunks.subarray(i, i + 8192));
        c.close();
      },
    });
    const res = await app.request(
      "/ask",
      {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: stream,
        duplex: "half",
      } as RequestInit,
    );
    assert.equal(res.status, 413);
    assertEnvelope(await res.json(), 413, "invalid_request_error");
  });
  await t.step("B-07 a prompt over the context: 400 with n_prompt_tokens and n_ctx", async () => {
    await expect(
      "long",
      post("/v1/chat/completions", {
        messages: [{ role: "user", content: "word ".repeat(600) }],
        stream: true,
      }),
      400,
    );
  });
  await t.step("B-08 empty, whitespace-only and zero-width-only questions", async () => {
    for (const question of ["", "   \n\t", "\u200B\u200D\uFEFF"]) {
      const res = await send(app, post("/ask", { question }));
      assert.equal(res.status, 400);
      const body = await res.json();
      assert.equal(body.error.message, "question cannot be empty");
      assert.equal(body.error.param, "question");
    }
  });
  await t.step("B-09 invalid UTF-8 bytes are 400", async () => {
    for (const bytes of [[0x7b, 0xff, 0x7d], [0x22, 0xc0, 0xaf, 0x22], [0x22, 0xe2, 0x82]]) {
      await expect(String(bytes), post("/ask", new Uint8Array(bytes) as Uint8Array<ArrayBuffer>), 400);
    }
  });
  await t.step("B-10 lone surrogates are 400; NUL, RTL overrides and emoji sequences are text", async () => {
    await expect("lone surrogate", post("/ask", '{"question":"a\\ud800b"}'), 400, "question");
    const res = await send(
      app,
      post("/ask", { question: "a\u0000b \u202Eevil\u202C 👩‍👩‍👧 e\u0301\u0301\u0301", max_tokens: 2 }),
    );
    assert.equal(res.status, 200);
    await res.json();
  });
  await t.step("B-13 path traversal in model names and document ids", async () => {
    for (const model of ["../../etc/passwd", "%2e%2e%2f", "..\\\\x", "/etc/passwd", "file://../x"]) {
      await expect(model, post("/v1/chat/completions", chat({ model })), 404);
    }
    const res = await app.request("/v1/models/..%2F..%2Fetc%2Fpasswd");
    assert.equal(res.status, 404);
  });
  await t.step("B-15 wrong method, wrong content type, CORS preflight", async () => {
    const get = await app.request("/v1/chat/completions");
    assert.equal(get.status, 405);
    await expect(
      "form",
      post("/ask", "question=hi", { "content-type": "application/x-www-form-urlencoded" }),
      415,
    );
    const preflight = await app.request("/ask", {
      method: "OPTIONS",
      headers: { origin: "https://app.example", "access-control-request-method": "POST" },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get("access-control-allow-origin"), "https://app.example");
    const other = await app.request("/ask", {
      method: "OPTIONS",
      headers: { origin: "https://evil.example", "access-control-request-method": "POST" },
    });
    assert.equal(other.headers.get("access-control-allow-origin"), null);
  });
  await t.step("B-16 oversized arrays and nesting", async () => {
    await expect(
      "1000 stops",
      post("/v1/chat/completions", chat({ stop: Array.from({ length: 1000 }, (_, i) => `s${i}`) })),
      400,
      "stop",
    );
    await expect("n: 5", post("/v1/chat/completions", chat({ n: 5 })), 400, "n");
    await expect(
      "documents: 65",
      post("/ask", { question: "q", documents: Array(65).fill("d") }),
      400,
      "documents",
    );
    await expect("deep nesting", post("/ask", "[".repeat(10_000) + "]".repeat(10_000)), 400);
    await expect(
      "deep field",
      post("/ask", `{"question":1,"x":${"[".repeat(10_000)}${"]".repeat(10_000)}}`),
      400,
      "question",
    );
    await expect(
      "presence_penalty",
      post("/v1/chat/completions", chat({ presence_penalty: 1.5 })),
      400,
      "presence_penalty",
    );
  });
  await t.step("the server keeps serving", async () => {
    const res = await send(app, post("/v1/chat/completions", chat({ max_tokens: 2 })));
    assert.equal(res.status, 200);
    assert.equal((await res.json()).object, "chat.completion");
    const metrics = await (await app.request("/metrics")).text();
    assert.doesNotMatch(metrics, /status="500"/);
  });
});

// --- metrics --------------------------------------------------------------------------------------------

Deno.test(
  "GET /metrics exposes requests, latency, first-token time, throughput, queue, KV, gate and compression",
  SANITIZE,
  async () => {
    const store = new MemoryRetriever([{ id: "a", text: "alpha beta gamma" }]);
    const compressor = {
      compress: (c: string[], o: { rate: number }) =>
        Promise.resolve({
          text: c.join(" "),
          originTokens: 10,
          compressedTokens: 5,
          ratio: 0.5,
          rate: o.rate,
        }),
    };
    const app = createApp(pipeline({ store, compressor, defaults: { maxTokens: 6 } }));
    const ask = await send(app, post("/ask", { question: "alpha?", compression: { rate: 0.5 } }));
    assert.equal(ask.status, 200);
    await ask.json();
    const res = await app.request("/metrics");
    assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    const text = await res.text();
    for (
      const line of [
        /^edgemix_info\{model="olmoe",backend="cpu",dtype="f32"\} 1$/m,
        /^edgemix_http_requests_total\{method="POST",route="\/ask",status="200"\} 1$/m,
        /^edgemix_http_request_duration_seconds_count\{method="POST",route="\/ask"\} 1$/m,
        /^edgemix_time_to_first_token_seconds_count 1$/m,
        /^edgemix_decode_tokens_per_second_count 1$/m,
        /^edgemix_generation_tokens_total [1-6]$/m,
        /^edgemix_requests_running 0$/m,
        /^edgemix_requests_waiting 0$/m,
        /^edgemix_kv_cache_bytes 0$/m,
        /^edgemix_gate_decisions_total\{decision="retrieve"\} 1$/m,
        /^edgemix_compression_ratio_bucket\{le="0.5"\} 1$/m,
        /^edgemix_requests_finished_total\{finish_reason="(stop|length)"\} 1$/m,
        /^# TYPE edgemix_expert_activations_total counter$/m,
      ]
    ) assert.match(text, line);
  },
);

// --- the command line -----------------------------------------------------------------------------------

const PERMISSIONS = ["--allow-net", "--allow-read", "--allow-write", "--allow-env", "--allow-sys"];

function mainCommand(args: string[], env: Record<string, string> = {}): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", ...PERMISSIONS, "main.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

Deno.test("main.ts --help prints the usage and exits 0", SANITIZE, async () => {
  const { code, stdout } = await mainCommand(["--help"]).output();
  assert.equal(code, 0);
  const text = new TextDecoder().decode(stdout);
  assert.match(text, /^Usage: main\.ts serve/);
  for (
    const flag of [
      "--db",
      "--api-key-env",
      "--max-concurrency",
      "--queue",
      "--kv-cache",
      "--int8-experts",
      "--top-k",
      "--compression-rate",
      "--compressor",
      "--compressor-device",
      "--retrieval",
    ]
  ) {
    assert.ok(text.includes(flag), flag);
  }
});

Deno.test(
  "main.ts with an unknown command or a bad flag or variable prints the usage to stderr and exits 2",
  SANITIZE,
  async () => {
    const cases: [string[], Record<string, string>][] = [
      [["launch"], {}],
      [[], {}],
      [["serve", "--port", "http"], {}],
      [["serve", "--backend", "tpu"], {}],
      [["serve", "--nope"], {}],
      [["serve", "--max-concurrency", "0"], {}],
      [["serve", "--compression-rate", "1.5"], {}],
      [["serve", "--retrieval", "sometimes"], {}],
      [["serve"], { EDGEMIX_QUEUE: "-3" }],
      [["serve"], { EDGEMIX_KV_CACHE: "fancy" }],
      [["serve", "--int8-experts", "maybe"], {}],
      [["serve", "--lfd", "deep"], {}],
      [["serve", "--lfd", "auto", "--lfd-alpha", "much"], {}],
      [["serve", "--compressor-device", "tpu"], {}],
      [["serve"], { EDGEMIX_COMPRESSOR_DEVICE: "cuda" }],
    ];
    for (const [args, env] of cases) {
      const { code, stdout, stderr } = await mainCommand(args, env).output();
      const err = new TextDecoder().decode(stderr);
      assert.equal(code, 2, `${args.join(" ")} ${JSON.stringify(env)}: ${err}`);
      assert.equal(stdout.length, 0);
      assert.match(err, /^edgemix: .+\n\nUsage: main\.ts serve/);
      if (Object.keys(env).length) assert.match(err, new RegExp(`Invalid ${Object.keys(env)[0]} `));
    }
  },
);

Deno.test("main.ts fails clearly for a stage this build lacks, before listening", SANITIZE, async () => {
  const cases: [string[], Record<string, string>, RegExp][] = [
    [["serve", "--retrieval", "always"], {}, /--retrieval always without --db/],
    [["serve", "--api-key-env", "EDGEMIX_TEST_UNSET_KEY"], {}, /EDGEMIX_TEST_UNSET_KEY, which is not set/],
  ];
  // Stages of retrieval/ that this checkout may not have yet: their flags must say so rather than be ignored.
  const retrieval = await import(`${ROOT}retrieval/mod.ts`).catch(() => ({})) as Record<string, unknown>;
  if (typeof retrieval.openStore !== "function") {
    cases.push([
      ["serve", "--db", "/tmp/nowhere"],
      {},
      /--db \/tmp\/nowhere: this build has no document store/,
    ]);
  }
  if (typeof retrieval.loadCompressor !== "function") {
    cases.push([
      ["serve"],
      { EDGEMIX_COMPRESSION_RATE: "0.5" },
      /--compression-rate: this build has no prompt compressor/,
    ]);
  }
  for (const [args, env, message] of cases) {
    const { code, stdout, stderr } = await mainCommand(args, env).output();
    assert.equal(code, 1, args.join(" "));
    assert.doesNotMatch(new TextDecoder().decode(stdout), /listening/);
    assert.match(new TextDecoder().decode(stderr), message);
  }
});

Deno.test(
  "main.ts serve stops with a clear error when the --compressor it names cannot load",
  SANITIZE,
  async () => {
    const missing = `${await Deno.makeTempDir({ prefix: "no_compressor_" })}/missing`;
    try {
      const { code, stderr } = await mainCommand([
        "serve",
        "--port",
        "0",
        "--backend",
        "cpu",
        "--compressor",
        missing,
      ])
        .output();
      const err = new TextDecoder().decode(stderr);
      assert.equal(code, 1, err);
      assert.ok(err.includes(missing), err);
      assert.doesNotMatch(err, /serving without a prompt compressor/);
    } finally {
      await Deno.remove(missing.slice(0, -"/missing".length), { recursive: true });
    }
  },
);

Deno.test(
  "main.ts serve reads flags and variables, answers over HTTP and exits cleanly on SIGTERM",
  SANITIZE,
  async () => {
    // (EDGEMIX_INT8_EXPERTS off: a webgpu kernel option, accepted and passed on as off with any backend.)
    const child = mainCommand(["serve", "--port", "0", "--backend", "cpu"], {
      EDGEMIX_MAX_TOKENS: "3",
      EDGEMIX_API_KEY: "k1",
      EDGEMIX_INT8_EXPERTS: "off",
    }).spawn();
    // The test must not hang if the server never listens or never stops.
    const killer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    const stderr = new Response(child.stderr).text();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let stdout = "";
    try {
      let base: string | undefined;
      while (!base || !/ready/.test(stdout)) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`The server exited before it was ready:\n${stdout}\n${await stderr}`);
        stdout += value;
        base = /listening on (http:\/\/127\.0\.0\.1:\d+\/)/.exec(stdout)?.[1];
      }
      assert.match(stdout, /ready \(model reader, backend cpu, dtype f32, API key from EDGEMIX_API_KEY\)/);

      const health = await fetch(new URL("health", base));
      assert.equal(health.status, 200);
      assert.deepEqual(await health.json(), { status: "ok", model: "reader", backend: "cpu", dtype: "f32" });
      const denied = await fetch(new URL("v1/models", base));
      assert.equal(denied.status, 401);
      await denied.body?.cancel();
      const auth = { authorization: "Bearer k1", "content-type": "application/json" };
      const ask = await fetch(new URL("ask", base), {
        method: "POST",
        headers: auth,
        body: '{"question":"hi"}',
      });
      assert.equal(ask.status, 200);
      assert.ok((await ask.json()).usage.completion_tokens <= 3, "EDGEMIX_MAX_TOKENS is the default");

      child.kill("SIGTERM");
      for (let r = await reader.read(); !r.done; r = await reader.read()) stdout += r.value;
      const status = await child.status;
      assert.deepEqual([status.code, status.signal], [0, null], `${stdout}\n${await stderr}`);
      assert.match(stdout, /received SIGTERM, shutting down\nedgemix: stopped\n$/);
    } finally {
      clearTimeout(killer);
      // A failed assertion must not leave the server running (awaiting its status would hang).
      try {
        child.kill("SIGKILL");
      } catch {
        // It has exited.
      }
      await reader.cancel().catch(() => {});
      await stderr;
      await child.status;
    }
  },
);

Deno.test(
  "main.ts refuses an --lfd layer the model does not have, with one line, exit 1",
  SANITIZE,
  async () => {
    const { code, stderr } = await mainCommand(
      ["serve", "--lfd", "7", "--db", "none", "--backend", "cpu", "--port", "0"],
    ).output();
    const err = new TextDecoder().decode(stderr);
    assert.equal(code, 1, err);
    assert.match(err, /edgemix: Invalid --lfd: Cannot use layer fused decoding: layer must be .* got 7\n/);
  },
);
