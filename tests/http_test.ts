/**
 * HTTP tests: every route and the error envelope through `app.request()` on a stand-in model, and the
 * `main.ts serve` command end to end on the olmoe fixture over real HTTP.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { HTTPException } from "hono/http-exception";
import { z } from "zod";
import type { ModelConfig } from "../engine/config.ts";
import { ContextOverflowError, GpuError, ModelDisposedError } from "../engine/errors.ts";
import type { Model, ModelTokenizer } from "../engine/types.ts";
import { createApp, mapError } from "../routes/mod.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SANITIZE = { sanitizeOps: true, sanitizeResources: true } as const;

/** A model that answers nothing: the routes under test only read its backend, dtype and config. */
function standInModel(): Model {
  return {
    config: { architecture: "olmoe" } as ModelConfig,
    tokenizer: {} as ModelTokenizer,
    backend: "webgpu",
    dtype: "f16",
    lastStats: undefined,
    logits: () => Promise.reject(new Error("Not used in these tests")),
    generate: () => Promise.reject(new Error("Not used in these tests")),
    stream: () => {
      throw new Error("Not used in these tests");
    },
    dispose: () => Promise.resolve(),
  };
}

function assertEnvelope(body: unknown, code: number, type: string): string {
  const error = (body as { error: Record<string, unknown> }).error;
  assert.deepEqual(Object.keys(error).sort(), ["code", "message", "param", "type"]);
  assert.equal(error.code, code);
  assert.equal(error.type, type);
  assert.equal(typeof error.message, "string");
  return error.message as string;
}

Deno.test("GET /health reports the model id, backend and dtype", SANITIZE, async () => {
  const app = createApp(standInModel(), { modelId: "tiny-olmoe" });
  const res = await app.request("/health");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
  assert.deepEqual(await res.json(), { status: "ok", model: "tiny-olmoe", backend: "webgpu", dtype: "f16" });
});

Deno.test(
  "createApp() names the model after its architecture when no modelId is given",
  SANITIZE,
  async () => {
    const res = await createApp(standInModel()).request("/health");
    assert.equal((await res.json()).model, "olmoe");
  },
);

Deno.test("GET /v1/models lists the one model in the OpenAI shape", SANITIZE, async () => {
  const app = createApp(standInModel(), { modelId: "tiny-olmoe", created: 1_700_000_000 });
  const res = await app.request("/v1/models");
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {
    object: "list",
    data: [{ id: "tiny-olmoe", object: "model", created: 1_700_000_000, owned_by: "edgemix" }],
  });
});

Deno.test("GET /v1/models/:id returns the model, also for ids with a slash", SANITIZE, async () => {
  for (const id of ["tiny-olmoe", "allenai/OLMoE-1B-7B-0924"]) {
    const app = createApp(standInModel(), { modelId: id, created: 42 });
    const res = await app.request(`/v1/models/${id}`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { id, object: "model", created: 42, owned_by: "edgemix" });
  }
});

Deno.test("GET /v1/models/:id is a 404 envelope for another model", SANITIZE, async () => {
  const app = createApp(standInModel(), { modelId: "tiny-olmoe" });
  const res = await app.request("/v1/models/gpt-4");
  assert.equal(res.status, 404);
  const message = assertEnvelope(await res.json(), 404, "not_found_error");
  assert.equal(message, 'Cannot find model "gpt-4": this server serves "tiny-olmoe"');
});

Deno.test("unknown routes and methods are 404 envelopes", SANITIZE, async () => {
  const app = createApp(standInModel());
  for (
    const [method, path] of [["GET", "/"], ["GET", "/v1/nothing"], ["POST", "/health"], [
      "DELETE",
      "/v1/models",
    ]]
  ) {
    const res = await app.request(path, { method });
    assert.equal(res.status, 404, `${method} ${path}`);
    assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
    const message = assertEnvelope(await res.json(), 404, "not_found_error");
    assert.equal(message, `Cannot ${method} ${path}: no such route`);
  }
});

Deno.test("createApp() rejects an empty modelId and a negative created", () => {
  assert.throws(() => createApp(standInModel(), { modelId: "" }), TypeError);
  assert.throws(() => createApp(standInModel(), { created: -1 }), RangeError);
});

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
      "invalid_request_error",
      null,
    ],
    [
      "HTTPException 400",
      () => new HTTPException(400, { message: "Malformed JSON in request body" }),
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
    ["ModelDisposedError", () => new ModelDisposedError(), 503, "server_error", null],
    [
      "GpuError",
      () => new GpuError("Cannot run the decoder: the GPU device was lost"),
      503,
      "server_error",
      null,
    ],
  ];
  for (const [name, make, status, type, param] of cases) {
    await t.step(name, async () => {
      const err = make() as Error;
      const app = createApp(standInModel());
      app.get("/throw", () => {
        throw err;
      });
      const res = await app.request("/throw");
      assert.equal(res.status, status);
      const body = await res.json();
      const message = assertEnvelope(body, status, type);
      assert.equal(body.error.param, param);
      if (param === null) assert.equal(message, err.message);
      else assert.match(message, /^messages\.0: /);
    });
  }
});

Deno.test("a malformed JSON body is a 400 envelope", SANITIZE, async () => {
  const app = createApp(standInModel());
  app.post("/echo", async (c) => c.json(await c.req.json()));
  const res = await app.request("/echo", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "{not json",
  });
  assert.equal(res.status, 400);
  assert.match(
    assertEnvelope(await res.json(), 400, "invalid_request_error"),
    /^Malformed JSON in request body: /,
  );
});

Deno.test("unexpected errors are a generic 500 that leaks no message or stack", SANITIZE, async () => {
  const app = createApp(standInModel());
  app.get("/boom", () => {
    throw new Error("Secret detail /home/user/.cache");
  });
  const logged: unknown[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => logged.push(...args);
  let res;
  try {
    res = await app.request("/boom");
  } finally {
    console.error = original;
  }
  assert.equal(res.status, 500);
  const text = await res.text();
  assert.doesNotMatch(text, /Secret|\.cache|at /);
  assert.equal(assertEnvelope(JSON.parse(text), 500, "server_error"), "Internal server error");
  assert.equal((logged[0] as Error).message, "Secret detail /home/user/.cache", "the server logs the error");
});

Deno.test("mapError() treats thrown non-errors as 500", () => {
  assert.deepEqual(mapError("a string"), {
    status: 500,
    body: { error: { message: "Internal server error", type: "server_error", param: null, code: 500 } },
  });
});

// --- the command line -------------------------------------------------------------------------------------

const PERMISSIONS = ["--allow-net", "--allow-read", "--allow-write", "--allow-env", "--allow-sys"];

function mainCommand(args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", ...PERMISSIONS, "main.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

Deno.test("main.ts --help prints the usage and exits 0", SANITIZE, async () => {
  const { code, stdout } = await mainCommand(["--help"]).output();
  assert.equal(code, 0);
  assert.match(new TextDecoder().decode(stdout), /^Usage: main\.ts serve/);
});

Deno.test(
  "main.ts with an unknown command or a bad flag prints the usage to stderr and exits 2",
  SANITIZE,
  async () => {
    for (
      const args of [["launch"], [], ["serve", "--port", "http"], ["serve", "--backend", "tpu"], [
        "serve",
        "--nope",
      ]]
    ) {
      const { code, stdout, stderr } = await mainCommand(args).output();
      assert.equal(code, 2, args.join(" "));
      assert.equal(stdout.length, 0);
      assert.match(new TextDecoder().decode(stderr), /^edgemix: .+\n\nUsage: main\.ts serve/);
    }
  },
);

Deno.test("main.ts serve answers over HTTP and exits cleanly on SIGTERM", SANITIZE, async () => {
  const child = mainCommand(["serve", "--port", "0", "--backend", "cpu"]).spawn();
  // The test must not hang if the server never listens or never stops.
  const killer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdout = "";
  try {
    let base: string | undefined;
    while (!base) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`The server exited before listening:\n${stdout}\n${await stderr}`);
      stdout += value;
      base = /listening on (http:\/\/127\.0\.0\.1:\d+\/)/.exec(stdout)?.[1];
    }
    assert.match(stdout, /\(model olmoe, backend cpu, dtype f32\)/);

    const health = await fetch(new URL("health", base));
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: "ok", model: "olmoe", backend: "cpu", dtype: "f32" });

    const models = await fetch(new URL("v1/models", base));
    assert.equal(models.status, 200);
    const list = await models.json();
    assert.equal(list.object, "list");
    assert.deepEqual(list.data.map((m: { id: string }) => m.id), ["olmoe"]);

    const missing = await fetch(new URL("v1/completions", base));
    assert.equal(missing.status, 404);
    assertEnvelope(await missing.json(), 404, "not_found_error");

    child.kill("SIGTERM");
    for (let r = await reader.read(); !r.done; r = await reader.read()) stdout += r.value;
    const status = await child.status;
    assert.deepEqual([status.code, status.signal], [0, null], `${stdout}\n${await stderr}`);
    assert.match(stdout, /received SIGTERM, shutting down\nedgemix: stopped\n$/);
  } finally {
    clearTimeout(killer);
    await reader.cancel().catch(() => {});
    await stderr;
    await child.status;
  }
});
