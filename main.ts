/**
 * The edgemix command line. `main.ts serve` listens at once (`GET /health` answers 503 while the model loads),
 * loads the model and the optional stages, and serves until SIGINT or SIGTERM; then it refuses new requests,
 * lets in-flight ones finish and disposes the model.
 *
 * Every flag has an environment variable: `--max-concurrency` is `EDGEMIX_MAX_CONCURRENCY`; a flag wins over
 * its variable.
 *
 * ```sh
 * deno run --allow-net --allow-read --allow-write --allow-env --allow-sys main.ts serve --port 8080
 * ```
 *
 * @module
 */

import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { GpuError, ModelLoadError } from "./engine/errors.ts";
import { KV_CACHE_MODES, type KvCacheMode } from "./engine/kv/kv_options.ts";
import { resolveModelSource } from "./engine/hub.ts";
import { DEFAULT_LFD_ALPHA, type LfdOptions, resolveLfdOptions } from "./engine/lfd.ts";
import { loadModel } from "./engine/model.ts";
import { MAX_BATCH_ROWS } from "./kernels/gpu.ts";
import type { Backend, DType, Model } from "./engine/types.ts";
import {
  createPipeline,
  FeatureUnavailableError,
  type Pipeline,
  type PromptCompressor,
  type RetrievalGate,
  type RetrievalMode,
  type Retriever,
} from "./pipeline.ts";
import { loadCompressor } from "./retrieval/compress.ts";
import { readGate, RetrievalGate as Gate } from "./retrieval/gate.ts";
import {
  DEFAULT_DOCUMENTS,
  defaultDbDir,
  ensureIngested,
  ingestedMarker,
} from "./retrieval/knowledge_base.ts";
import { type KnowledgeStore, openStore } from "./retrieval/store.ts";
import { createApp } from "./routes/app.ts";

/**
 * The model `serve` (and `deno task eval`) uses without `--model`: the reader trained by
 * `tools/train_reader.py` on the synthetic world of fixtures/world (a 12.6M-parameter Mixtral, f16).
 */
export const DEFAULT_MODEL: string = fileURLToPath(new URL("./fixtures/models/reader", import.meta.url));

/** The prompt compressor `serve` loads: the LLMLingua-2 classifier trained by `tools/train_compressor.py`. */
export const DEFAULT_COMPRESSOR: string = fileURLToPath(
  new URL("./fixtures/compressor/default", import.meta.url),
);

const USAGE = `Usage: main.ts serve [options]

Serve a Mixture-of-Experts model over HTTP: POST /ask, POST /v1/chat/completions, GET /v1/models,
POST /documents, DELETE /documents/:id, GET /documents/search, GET /health, GET /metrics.
Every option can also be set by its environment variable (--max-concurrency: EDGEMIX_MAX_CONCURRENCY).

Server:
  --host HOST             interface to listen on (default 127.0.0.1)
  --port N                port to listen on, 0 picks a free one (default 8080)
  --api-key-env NAME      environment variable holding the API key; when it is set, every route but
                          /health needs "Authorization: Bearer <key>" (default EDGEMIX_API_KEY)
  --max-concurrency N     sequences generating at once (default 4)
  --queue N               requests waiting for a sequence; more get 429 (default 64)
  --timeout S             seconds a request may take before 504 / finish_reason "length" (default 300)
  --cors-origin LIST      comma-separated origins allowed to call the API from a browser
Model:
  --model SRC             checkpoint directory or Hugging Face repo id (owner/name[@revision])
                          (default: the bundled fixtures/models/reader, a 12.6M-parameter Mixtral
                          trained on the synthetic world of fixtures/world)
  --backend B             auto, webgpu or cpu (default auto: WebGPU when an adapter exists)
  --dtype D               f32 or f16 on WebGPU (default: f16 on hardware GPUs, f32 otherwise)
  --context N             positions the KV cache holds (default: the model's, at most 4096)
  --kv-cache K            f16, f32 (plain), quant, gear-l or gear (default: plain in the model's dtype)
  --int8-experts on|off   WebGPU, quantized checkpoints: the experts' mat-vecs round their inputs to int8
                          per block of 32 (default on; off: f32 inputs, a little slower)
Pipeline defaults (requests may override them):
  --db URI                document store (a LanceDB directory or object-store URI), or none (default: the
                          default knowledge base $EDGEMIX_HOME/db, else ~/.cache/edgemix/db, which the
                          first start fills with the bundled world's documents; needs --allow-ffi)
  --retrieval M           auto, always or never (default auto: as the gate says, or always with a store)
  --top-k N               passages to retrieve (default 4)
  --compression-rate R    compress the context to this share of its tokens, in (0, 1], or off (default off;
                          the compressor is loaded anyway, so a request may ask for compression)
  --compressor SRC        LLMLingua-2 token classifier: an ONNX model directory or Hugging Face repo id
                          (default: the bundled fixtures/compressor/default, trained on the world)
  --compressor-device D   cpu or webgpu: run the classifier on the CPU (ONNX Runtime, native or WebAssembly)
                          or on the GPU (onnxruntime-web's WebGPU provider) (default cpu)
  --lfd L                 layer fused decoding of answers read from context: off, auto or a layer index
                          (default off)
  --lfd-alpha A           weight of the fused layer's logits (default 0.1)
  --max-tokens N          most tokens of an answer (default 256)
  --temperature T         sampling temperature, 0 is greedy (default 0)
  -h, --help              print this help

Example:
  EDGEMIX_API_KEY=secret deno task serve --model allenai/OLMoE-1B-7B-0924 --port 8080`;

/** What the command line asks for. */
interface ServeCommand {
  model: string;
  host: string;
  port: number;
  backend: Backend | "auto";
  dtype: DType | undefined;
  context: number | undefined;
  kvCache: KvCacheMode | undefined;
  /** `--int8-experts off`: the packed experts read f32 inputs (LoadModelOptions.int8Experts). */
  int8Experts: boolean;
  /** The store given with --db; undefined for the default knowledge base or with `--db none`. */
  db: string | undefined;
  /** `--db none`: no store at all. */
  noDb: boolean;
  apiKeyEnv: string;
  apiKeyEnvGiven: boolean;
  maxConcurrency: number;
  queue: number;
  timeoutSeconds: number;
  corsOrigins: string[];
  retrieval: RetrievalMode;
  topK: number;
  compressionRate: number | false;
  /** The compressor of --compressor; undefined for the bundled one. */
  compressor: string | undefined;
  compressorDevice: "cpu" | "webgpu";
  lfd: LfdOptions | undefined;
  maxTokens: number;
  temperature: number;
}

/** Thrown for a command line that cannot be run; main prints it with the usage and exits 2. */
class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

const FLAGS = [
  "model",
  "host",
  "port",
  "backend",
  "dtype",
  "context",
  "kv-cache",
  "int8-experts",
  "db",
  "api-key-env",
  "max-concurrency",
  "queue",
  "timeout",
  "cors-origin",
  "retrieval",
  "top-k",
  "compression-rate",
  "compressor",
  "compressor-device",
  "lfd",
  "lfd-alpha",
  "max-tokens",
  "temperature",
] as const;
type Flag = typeof FLAGS[number];

/** The environment variable of a flag: `--max-concurrency` → `EDGEMIX_MAX_CONCURRENCY`. */
function envName(flag: Flag): string {
  return `EDGEMIX_${flag.toUpperCase().replace(/-/g, "_")}`;
}

function parseCommand(args: string[], env: (name: string) => string | undefined): ServeCommand | "help" {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        ...Object.fromEntries(FLAGS.map((f) => [f, { type: "string" as const }])),
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
  /** The flag's value, else its environment variable's; `where` names the source in messages. */
  const get = (flag: Flag): { value: string; where: string } | undefined => {
    const v = (values as Record<string, string | boolean | undefined>)[flag];
    if (typeof v === "string") return { value: v, where: `--${flag}` };
    const e = env(envName(flag));
    return e === undefined || e === "" ? undefined : { value: e, where: envName(flag) };
  };
  const choice = <T extends string>(flag: Flag, options: readonly T[], fallback: T): T => {
    const v = get(flag);
    if (!v) return fallback;
    if (!(options as readonly string[]).includes(v.value)) {
      throw new UsageError(
        `Invalid ${v.where} ${JSON.stringify(v.value)}: expected ${options.slice(0, -1).join(", ")} or ${
          options.at(-1)
        }`,
      );
    }
    return v.value as T;
  };
  const integer = (flag: Flag, min: number, max: number, fallback: number): number => {
    const v = get(flag);
    if (!v) return fallback;
    const n = Number(v.value);
    if (!/^\d+$/.test(v.value) || n < min || n > max) {
      throw new UsageError(
        `Invalid ${v.where} ${JSON.stringify(v.value)}: expected an integer from ${min} to ${max}`,
      );
    }
    return n;
  };
  const number = (flag: Flag, ok: (n: number) => boolean, expected: string, fallback: number): number => {
    const v = get(flag);
    if (!v) return fallback;
    const n = Number(v.value);
    if (v.value.trim() === "" || !Number.isFinite(n) || !ok(n)) {
      throw new UsageError(`Invalid ${v.where} ${JSON.stringify(v.value)}: expected ${expected}`);
    }
    return n;
  };
  const dtype = get("dtype");
  if (dtype && dtype.value !== "f32" && dtype.value !== "f16") {
    throw new UsageError(`Invalid ${dtype.where} ${JSON.stringify(dtype.value)}: expected f32 or f16`);
  }
  const apiKeyEnv = get("api-key-env");
  if (apiKeyEnv && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(apiKeyEnv.value)) {
    throw new UsageError(
      `Invalid ${apiKeyEnv.where} ${JSON.stringify(apiKeyEnv.value)}: not a variable name`,
    );
  }
  const rate = get("compression-rate");
  let compressionRate: number | false = false;
  if (rate && rate.value !== "off") {
    compressionRate = number("compression-rate", (n) => n > 0 && n <= 1, "a number in (0, 1] or off", 1);
  }
  const lfdFlag = get("lfd");
  let lfd: LfdOptions | undefined;
  if (lfdFlag && lfdFlag.value !== "off") {
    const layer = lfdFlag.value === "auto" ? "auto" : integer("lfd", 0, 4096, 0);
    lfd = { layer, alpha: number("lfd-alpha", Number.isFinite, "a number", DEFAULT_LFD_ALPHA) };
  }
  return {
    lfd,
    model: get("model")?.value ?? DEFAULT_MODEL,
    host: get("host")?.value ?? "127.0.0.1",
    port: integer("port", 0, 65535, 8080),
    backend: choice("backend", ["auto", "webgpu", "cpu"] as const, "auto"),
    dtype: dtype?.value as DType | undefined,
    context: get("context") ? integer("context", 2, 2 ** 24, 0) : undefined,
    kvCache: get("kv-cache") ? choice("kv-cache", KV_CACHE_MODES, "f32") : undefined,
    int8Experts: choice("int8-experts", ["on", "off"] as const, "on") === "on",
    db: get("db")?.value === "none" ? undefined : get("db")?.value,
    noDb: get("db")?.value === "none",
    apiKeyEnv: apiKeyEnv?.value ?? "EDGEMIX_API_KEY",
    apiKeyEnvGiven: apiKeyEnv !== undefined,
    maxConcurrency: integer("max-concurrency", 1, 4096, 4),
    queue: integer("queue", 0, 1_000_000, 64),
    timeoutSeconds: number("timeout", (n) => n > 0 && n <= 86_400, "seconds in (0, 86400]", 300),
    corsOrigins: (get("cors-origin")?.value ?? "").split(",").map((s) => s.trim()).filter(Boolean),
    retrieval: choice("retrieval", ["auto", "always", "never"] as const, "auto"),
    topK: integer("top-k", 1, 1000, 4),
    compressionRate,
    compressor: get("compressor")?.value,
    compressorDevice: choice("compressor-device", ["cpu", "webgpu"] as const, "cpu"),
    maxTokens: integer("max-tokens", 1, 2 ** 24, 256),
    temperature: number("temperature", (n) => n >= 0 && n <= 2, "a number in [0, 2]", 0),
  };
}

/** The model id a source is served under: the last path segment of a directory or repo id. */
function modelIdOf(source: string): string {
  return basename(source.replace(/[\\/]+$/, "")) || source;
}

function urlOf(addr: Deno.NetAddr): string {
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  return `http://${host}:${addr.port}/`;
}

/** Factories of the optional stages (the store, the gate beside the model, the compressor). */
interface StageFactories {
  /** Opens the store: the one of `--db`, or the default knowledge base (filled on first start). */
  openStore?: () => Promise<Retriever> | Retriever;
  /** The store is the default knowledge base: when it fails, serve without retrieval (with a warning). */
  storeOptional?: boolean;
  loadGate?: (model: Model) => Promise<RetrievalGate> | RetrievalGate;
  loadCompressor?: () => Promise<PromptCompressor> | PromptCompressor;
  /** No `--compression-rate` asked for the compressor: when it fails, serve without it (with a warning). */
  compressorOptional?: boolean;
}

/** The default knowledge base of a command without `--db`: its directory and load marker, or why there is none. */
type DefaultKnowledgeBase = { dir: string; marker: string } | { unavailable: string };

/** The default knowledge base, or undefined when the command names a store (`--db URI`) or none (`--db none`). */
function defaultKnowledgeBase(cmd: ServeCommand): DefaultKnowledgeBase | undefined {
  if (cmd.db !== undefined || cmd.noDb) return undefined;
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    return {
      unavailable: "the document store (LanceDB) is a native addon and Deno runs without --allow-ffi " +
        "(deno task serve grants it)",
    };
  }
  try {
    const dir = defaultDbDir();
    return { dir, marker: ingestedMarker(dir) };
  } catch (e) {
    return { unavailable: e instanceof Error ? e.message : String(e) };
  }
}

/**
 * Opens the default knowledge base at `dir` and, on first start (no marker of a complete load, or an empty
 * store), ingests the bundled world documents into it, with progress on stderr.
 */
async function openDefaultStore(dir: string, marker: string): Promise<KnowledgeStore> {
  await Deno.mkdir(dir, { recursive: true });
  const store = await openStore(dir);
  try {
    try {
      await Deno.stat(DEFAULT_DOCUMENTS);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      console.error(`edgemix: ${DEFAULT_DOCUMENTS} is missing: the knowledge base ${dir} is used as it is`);
      return store;
    }
    const t0 = performance.now();
    const terminal = Deno.stderr.isTerminal();
    const draw = (line: string) => Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[K${line}`));
    const result = await ensureIngested(store, DEFAULT_DOCUMENTS, marker, {
      onStart: (total) =>
        console.error(
          `edgemix: first start: ingesting ${total} documents of ${DEFAULT_DOCUMENTS} into ${dir}`,
        ),
      onProgress: (done, total) => terminal && draw(`edgemix: ingested ${done}/${total} documents`),
      onIndexing: () => terminal && draw("edgemix: indexing…"),
    });
    if (result.ingested) {
      if (terminal) draw("");
      console.error(
        `edgemix: ingested ${result.documents} documents (${result.chunks} chunks) in ` +
          `${((performance.now() - t0) / 1000).toFixed(1)} s`,
      );
    }
    console.log(`edgemix: knowledge base ${dir} (${result.documents} documents)`);
    return store;
  } catch (e) {
    await store.close();
    throw e;
  }
}

/**
 * The compressor `serve` loads: `--compressor`, else {@linkcode DEFAULT_COMPRESSOR}, or the library's default
 * when that is absent; on the GPU with `--compressor-device webgpu`.
 */
async function loadServeCompressor(cmd: ServeCommand): Promise<PromptCompressor> {
  const options = cmd.compressorDevice === "webgpu"
    ? { backend: "wasm" as const, device: "webgpu" as const }
    : {};
  if (cmd.compressor !== undefined) return await loadCompressor(cmd.compressor, options);
  try {
    await Deno.stat(DEFAULT_COMPRESSOR);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return await loadCompressor(undefined, options);
    throw e;
  }
  return await loadCompressor(DEFAULT_COMPRESSOR, options);
}

/**
 * The stages the command asks for: the store of `--db` (by default the default knowledge base, filled with the
 * bundled world's documents on first start; none with `--db none`) and the retrieval gate (fitted by
 * `deno task gate-fit` as gate.json beside the model; without one, `auto` retrieves), and the LLMLingua-2
 * compressor (always loaded; required when `--compression-rate` sets a default rate, or `--compressor` or
 * `--compressor-device webgpu` asks for one).
 *
 * @throws {FeatureUnavailableError} for a combination that cannot work.
 */
function findStages(cmd: ServeCommand, kb: DefaultKnowledgeBase | undefined): StageFactories {
  const defaultDir = kb && "dir" in kb ? kb : undefined;
  if (cmd.retrieval === "always" && cmd.db === undefined && !defaultDir) {
    throw new FeatureUnavailableError(
      "Cannot use --retrieval always without --db: there is nothing to search" +
        (kb && "unavailable" in kb ? ` (no default knowledge base: ${kb.unavailable})` : ""),
    );
  }
  const found: StageFactories = {};
  if (cmd.db !== undefined || defaultDir) {
    const uri = cmd.db;
    found.openStore = uri !== undefined
      ? () => openStore(uri)
      : () => openDefaultStore(defaultDir!.dir, defaultDir!.marker);
    found.storeOptional = uri === undefined && cmd.retrieval !== "always";
    found.loadGate = async () => {
      const path = join(await resolveModelSource(cmd.model), "gate.json");
      try {
        return new Gate(await readGate(path));
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return new Gate();
        throw e;
      }
    };
  }
  found.loadCompressor = () => loadServeCompressor(cmd);
  // A compressor asked for by name or device must load; the bundled one on the CPU is optional without a rate.
  found.compressorOptional = cmd.compressionRate === false && cmd.compressor === undefined &&
    cmd.compressorDevice === "cpu";
  return found;
}

/** Runs an optional stage's factory: its failure becomes a warning and the stage is left out. */
async function optional<T>(
  what: string,
  optional: boolean,
  make: () => Promise<T> | T,
): Promise<T | undefined> {
  try {
    return await make();
  } catch (e) {
    if (!optional) throw e;
    console.error(`edgemix: serving without ${what}: ${e instanceof Error ? e.message : String(e)}`);
    return undefined;
  }
}

/** Loads the model and the stages, and composes the pipeline. */
async function buildPipeline(cmd: ServeCommand, factories: StageFactories): Promise<Pipeline> {
  const model = await loadModel(cmd.model, {
    backend: cmd.backend,
    dtype: cmd.dtype,
    contextLength: cmd.context,
    kvCache: cmd.kvCache === undefined ? undefined : { mode: cmd.kvCache },
    // Off only when asked: the option is a webgpu one (the cpu backend refuses `true`).
    ...(cmd.int8Experts ? {} : { int8Experts: false }),
    // The concurrent sequences decode together on the GPU (continuous batching), up to the kernels' row limit.
    batch: Math.min(cmd.maxConcurrency, MAX_BATCH_ROWS),
  });
  // A fixed --lfd layer must exist in this model: fail at start, not on every answer.
  if (cmd.lfd) {
    try {
      resolveLfdOptions(cmd.lfd, model.config.numLayers);
    } catch (e) {
      await model.dispose();
      throw new RangeError(`Invalid --lfd: ${(e as Error).message}`);
    }
  }
  try {
    const store = factories.openStore
      ? await optional("a knowledge base", factories.storeOptional === true, factories.openStore)
      : undefined;
    const gate = store && factories.loadGate ? await factories.loadGate(model) : undefined;
    const compressor = factories.loadCompressor
      ? await optional("a prompt compressor", factories.compressorOptional === true, factories.loadCompressor)
      : undefined;
    return createPipeline({
      model,
      store,
      gate,
      compressor,
      maxConcurrency: cmd.maxConcurrency,
      queue: cmd.queue,
      contextLength: cmd.context,
      defaults: {
        retrieval: cmd.retrieval,
        topK: cmd.topK,
        compressionRate: cmd.compressionRate,
        lfd: cmd.lfd,
        maxTokens: cmd.maxTokens,
        temperature: cmd.temperature,
        timeoutMs: Math.round(cmd.timeoutSeconds * 1000),
      },
    });
  } catch (e) {
    await model.dispose();
    throw e;
  }
}

async function serve(cmd: ServeCommand): Promise<number> {
  const modelId = modelIdOf(cmd.model);
  let apiKey: string | undefined = Deno.env.get(cmd.apiKeyEnv);
  if (apiKey === "") apiKey = undefined;
  if (cmd.apiKeyEnvGiven && apiKey === undefined) {
    throw new FeatureUnavailableError(
      `Cannot protect the API: --api-key-env names ${cmd.apiKeyEnv}, which is not set or empty`,
    );
  }
  const kb = defaultKnowledgeBase(cmd);
  const factories = findStages(cmd, kb);
  if (kb && "unavailable" in kb) {
    console.error(`edgemix: no default knowledge base: ${kb.unavailable}; serving without retrieval`);
  }

  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  const stop = Promise.withResolvers<Deno.Signal>();
  const onSignal = (signal: Deno.Signal) => () => stop.resolve(signal);
  const listeners = signals.map((signal) => [signal, onSignal(signal)] as const);
  for (const [signal, fn] of listeners) Deno.addSignalListener(signal, fn);

  console.log(`edgemix: loading ${cmd.model} (backend ${cmd.backend})`);
  const loading = buildPipeline(cmd, factories);
  loading.catch(() => {});
  const app = createApp(loading, { modelId, apiKey, corsOrigins: cmd.corsOrigins });

  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname: cmd.host,
      port: cmd.port,
      onListen: (addr) => console.log(`edgemix: listening on ${urlOf(addr)} (loading the model)`),
    }, app.fetch);
  } catch (e) {
    for (const [signal, fn] of listeners) Deno.removeSignalListener(signal, fn);
    await loading.then((p) => p.model.dispose(), () => {});
    if (e instanceof Error) e.message = `Cannot listen on ${cmd.host}:${cmd.port}: ${e.message}`;
    throw e;
  }

  const first = await Promise.race([
    stop.promise.then((signal) => ({ signal })),
    loading.then((pipeline) => ({ pipeline }), (error: unknown) => ({ error })),
  ]);
  if ("error" in first) {
    for (const [signal, fn] of listeners) Deno.removeSignalListener(signal, fn);
    await server.shutdown();
    throw first.error;
  }
  if ("pipeline" in first) {
    const { model } = first.pipeline;
    const auth = apiKey === undefined ? "no API key" : `API key from ${cmd.apiKeyEnv}`;
    console.log(`edgemix: ready (model ${modelId}, backend ${model.backend}, dtype ${model.dtype}, ${auth})`);
  }
  const signal = "signal" in first ? first.signal : await stop.promise;
  console.log(`edgemix: received ${signal}, shutting down`);
  // A second signal during the graceful shutdown ends the process at once.
  for (const [sig, fn] of listeners) {
    Deno.removeSignalListener(sig, fn);
    Deno.addSignalListener(sig, () => Deno.exit(1));
  }
  // New requests get 503 and queued ones leave; running generations finish, then the model is freed.
  const pipeline = await loading.catch(() => undefined);
  pipeline?.close();
  await server.shutdown();
  await pipeline?.model.dispose();
  console.log("edgemix: stopped");
  return 0;
}

async function main(args: string[]): Promise<number> {
  let cmd;
  try {
    cmd = parseCommand(args, (name) => Deno.env.get(name));
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
    e instanceof FeatureUnavailableError ||
    e instanceof Deno.errors.AddrInUse || e instanceof Deno.errors.AddrNotAvailable ||
    e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable ||
    (e instanceof Error && (e.name === "ModelSourceError" || e.name === "DownloadError"));
}

if (import.meta.main) Deno.exit(await main(Deno.args));
