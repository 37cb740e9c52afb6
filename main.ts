/**
 * The edgemix command line. `main.ts serve` loads a model, builds the HTTP app and serves it until SIGINT or
 * SIGTERM, then shuts down gracefully (in-flight requests finish, the model is disposed).
 *
 * ```sh
 * deno run --allow-net --allow-read --allow-write --allow-env --allow-sys main.ts serve --port 8080
 * ```
 *
 * @module
 */

import { basename } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import type { Backend, DType } from "./engine/types.ts";
import { createApp, GpuError, loadModel, ModelLoadError } from "./mod.ts";

const DEFAULT_MODEL = fileURLToPath(new URL("./fixtures/models/olmoe", import.meta.url));

const USAGE = `Usage: main.ts serve [options]

Serve a Mixture-of-Experts model over HTTP (GET /health, GET /v1/models).

Options:
  --model SRC     checkpoint directory or Hugging Face repo id (owner/name[@revision])
                  (default: the bundled fixtures/models/olmoe, a tiny random-weight model)
  --host HOST     interface to listen on (default 127.0.0.1)
  --port N        port to listen on, 0 picks a free one (default 8080)
  --backend B     auto, webgpu or cpu (default auto: WebGPU when an adapter exists)
  --dtype D       f32 or f16 on WebGPU (default: f16 on hardware GPUs, f32 otherwise)
  --context N     positions the KV cache holds (default: the model's, at most 4096)
  -h, --help      print this help

Example:
  deno task serve --model allenai/OLMoE-1B-7B-0924 --port 8080`;

/** What the command line asks for. */
interface ServeCommand {
  model: string;
  host: string;
  port: number;
  backend: Backend | "auto";
  dtype: DType | undefined;
  context: number | undefined;
}

/** Thrown for a command line that cannot be run; main prints it with the usage and exits 2. */
class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

function parseCommand(args: string[]): ServeCommand | "help" {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        model: { type: "string" },
        host: { type: "string" },
        port: { type: "string" },
        backend: { type: "string" },
        dtype: { type: "string" },
        context: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : String(e));
  }
  const { values, positionals } = parsed;
  if (values.help) return "help";
  if (positionals.length === 0) throw new UsageError("Missing command: expected serve");
  if (positionals[0] !== "serve") throw new UsageError(`Unknown command ${JSON.stringify(positionals[0])}`);
  if (positionals.length > 1) throw new UsageError(`Unexpected argument ${JSON.stringify(positionals[1])}`);
  const backend = values.backend ?? "auto";
  if (backend !== "auto" && backend !== "webgpu" && backend !== "cpu") {
    throw new UsageError(`Invalid --backend ${JSON.stringify(backend)}: expected auto, webgpu or cpu`);
  }
  const dtype = values.dtype;
  if (dtype !== undefined && dtype !== "f32" && dtype !== "f16") {
    throw new UsageError(`Invalid --dtype ${JSON.stringify(dtype)}: expected f32 or f16`);
  }
  return {
    model: values.model ?? DEFAULT_MODEL,
    host: values.host ?? "127.0.0.1",
    port: parseInteger("--port", values.port ?? "8080", 0, 65535),
    backend,
    dtype,
    context: values.context === undefined ? undefined : parseInteger("--context", values.context, 2, 2 ** 24),
  };
}

function parseInteger(flag: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min || n > max) {
    throw new UsageError(
      `Invalid ${flag} ${JSON.stringify(text)}: expected an integer from ${min} to ${max}`,
    );
  }
  return n;
}

/** The model id a source is served under: the last path segment of a directory or repo id. */
function modelIdOf(source: string): string {
  return basename(source.replace(/[\\/]+$/, "")) || source;
}

function urlOf(addr: Deno.NetAddr): string {
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  return `http://${host}:${addr.port}/`;
}

async function serve(cmd: ServeCommand): Promise<number> {
  const modelId = modelIdOf(cmd.model);
  console.log(`edgemix: loading ${cmd.model} (backend ${cmd.backend})`);
  const model = await loadModel(cmd.model, {
    backend: cmd.backend,
    dtype: cmd.dtype,
    contextLength: cmd.context,
  });
  const app = createApp(model, { modelId });

  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  const stop = Promise.withResolvers<Deno.Signal>();
  const onSignal = (signal: Deno.Signal) => () => stop.resolve(signal);
  const listeners = signals.map((signal) => [signal, onSignal(signal)] as const);
  for (const [signal, fn] of listeners) Deno.addSignalListener(signal, fn);

  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname: cmd.host,
      port: cmd.port,
      onListen: (addr) => {
        const what = `model ${modelId}, backend ${model.backend}, dtype ${model.dtype}`;
        console.log(`edgemix: listening on ${urlOf(addr)} (${what})`);
      },
    }, app.fetch);
  } catch (e) {
    for (const [signal, fn] of listeners) Deno.removeSignalListener(signal, fn);
    await model.dispose();
    if (e instanceof Error) e.message = `Cannot listen on ${cmd.host}:${cmd.port}: ${e.message}`;
    throw e;
  }

  const signal = await stop.promise;
  console.log(`edgemix: received ${signal}, shutting down`);
  // A second signal during the graceful shutdown ends the process at once.
  for (const [sig, fn] of listeners) {
    Deno.removeSignalListener(sig, fn);
    Deno.addSignalListener(sig, () => Deno.exit(1));
  }
  await server.shutdown();
  await model.dispose();
  console.log("edgemix: stopped");
  return 0;
}

async function main(args: string[]): Promise<number> {
  let cmd;
  try {
    cmd = parseCommand(args);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`edgemix: ${e.message}\n\n${USAGE}`);
    return 2;
  }
  if (cmd === "help") {
    console.log(USAGE);
    return 0;
  }
  try {
    return await serve(cmd);
  } catch (e) {
    // Expected failures (a missing checkpoint, a busy port) get one line; anything else keeps its stack.
    if (isExpected(e)) console.error(`edgemix: ${e.message}`);
    else console.error("edgemix: cannot serve:", e);
    return 1;
  }
}

function isExpected(e: unknown): e is Error {
  return e instanceof ModelLoadError || e instanceof GpuError || e instanceof RangeError ||
    e instanceof Deno.errors.AddrInUse || e instanceof Deno.errors.AddrNotAvailable ||
    e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable ||
    (e instanceof Error && (e.name === "ModelSourceError" || e.name === "DownloadError"));
}

if (import.meta.main) Deno.exit(await main(Deno.args));
