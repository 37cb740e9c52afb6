/**
 * The LLMLingua-2 token classifier: an ONNX `*ForTokenClassification` model and its tokenizer, run by
 * transformers.js (`@huggingface/transformers`) on ONNX Runtime.
 *
 * Two ONNX Runtime builds, chosen explicitly: "native" is transformers.js's Node build, which loads
 * `onnxruntime-node` (a Node-API addon: Deno needs `--allow-ffi` and a `node_modules` directory); "wasm" is its
 * web build with `onnxruntime-web`'s WebAssembly backend, loaded from the files in `node_modules` (no CDN), which
 * runs where native addons cannot (single-threaded: Deno cannot start ORT's blob-URL workers). "auto" takes the
 * native one when it loads and the WebAssembly one otherwise. Both can be used in one process. The web build can
 * also run the model on the GPU: device "webgpu" selects `onnxruntime-web`'s WebGPU execution provider, on
 * Deno's `navigator.gpu` (the adapter the engine uses).
 *
 * A model is a directory in transformers.js layout (`config.json`, `tokenizer.json`, `tokenizer_config.json`,
 * `onnx/model.onnx` and, past 2 GB, `onnx/model.onnx_data`) or a Hugging Face repo id with that layout,
 * downloaded into the Hugging Face cache by {@linkcode resolveModelSource}.
 *
 * @module
 */

import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { type HubOptions, resolveModelSource } from "../engine/hub.ts";
import { ModelDisposedError, ModelLoadError } from "../engine/errors.ts";
import type { EncodedChunk, LinguaTokenizer, TokenizerFamily } from "./lingua_algorithm.ts";
import { HfLinguaTokenizer } from "./lingua_tokenizer.ts";

/** Which ONNX Runtime build runs the model. */
export type ClassifierBackend = "native" | "wasm" | "auto";

/**
 * Execution provider. Native build: "cpu", "cuda" (needs ORT's CUDA provider library installed next to the addon)
 * or "webgpu" (where the addon was built with it). WebAssembly build: "cpu" (WebAssembly) or "webgpu"
 * (`onnxruntime-web`'s WebGPU provider on `navigator.gpu`).
 */
export type NativeDevice = "cpu" | "cuda" | "webgpu";

/** Weights variant, as transformers.js names them: the file is `onnx/model{suffix}.onnx`. */
export type ClassifierDtype = "fp32" | "fp16" | "q8" | "int8" | "uint8" | "q4" | "q4f16" | "bnb4";

/** The classifier could not be loaded: a file is missing or unusable, or no ONNX Runtime build can run here. */
export class CompressorLoadError extends ModelLoadError {
  /** Makes the error. */
  constructor(message: string, options?: { file?: string; cause?: unknown }) {
    super(message, options);
    this.name = "CompressorLoadError";
  }
}

/** Options of {@linkcode loadTokenClassifier}. */
export interface TokenClassifierOptions {
  /** ONNX Runtime build; default "auto" (native when it loads, else WebAssembly). */
  backend?: ClassifierBackend;
  /**
   * Execution provider; default "cpu". The WebAssembly build runs "cpu" as WebAssembly and "webgpu" on
   * `navigator.gpu`; it cannot run "cuda" (a CompressorLoadError).
   */
  device?: NativeDevice;
  /** Weights variant; default "fp32". */
  dtype?: ClassifierDtype;
  /** Threads of the native build's operators; default ONNX Runtime's (all cores). */
  threads?: number;
  /** Most chunks per model call; default 50 (the reference's `max_batch_size`). */
  maxBatchSize?: number;
  /** Most tokens per model call, padding included; default 16384. */
  maxBatchTokens?: number;
  /** Tokenizer family; default from `tokenizer.json` (WordPiece: "bert"; Unigram or Metaspace: "xlmr"). */
  family?: TokenizerFamily;
  /** Download options for a repo id (cache directory, revision, token, offline, progress). */
  hub?: HubOptions;
  /** Show a progress line on stderr while classifying many chunks, when stderr is a terminal; default true. */
  progress?: boolean;
}

/** The classifier's raw output for one chunk. */
export interface ChunkLogits {
  /** Logits, row-major; a float16 model's are widened. */
  data: Float32Array; // (seq, labels) float32
  /** Number of labels per position (2 for LLMLingua-2: 0 drop, 1 keep). */
  labels: number;
}

/** A loaded classifier: tokenizer, model, and the keep-probability function the algorithm calls. */
export interface TokenClassifier {
  /** The local directory the model was loaded from. */
  readonly dir: string;
  /** The ONNX Runtime build in use. */
  readonly backend: "native" | "wasm";
  /** The execution provider in use: the native build's, "wasm" (WebAssembly) or "webgpu" (web build on the GPU). */
  readonly device: NativeDevice | "wasm";
  /** The tokenizer, in the form the algorithm uses. */
  readonly tokenizer: LinguaTokenizer;
  /** `softmax(logits)[..., 1]` at every position of every chunk, batched through the model. */
  keepProbabilities(chunks: readonly EncodedChunk[]): Promise<Float32Array[]>;
  /** The model's raw logits at every position of every chunk, batched like {@linkcode keepProbabilities}. */
  logits(chunks: readonly EncodedChunk[]): Promise<ChunkLogits[]>;
  /** Releases the ONNX Runtime session. */
  dispose(): Promise<void>;
}

// --- the parts of transformers.js used here (both builds have the same API) ---------------------------------------

interface TfTensor {
  type: string;
  data: Float32Array;
  dims: number[];
  to?(type: string): TfTensor;
  dispose?(): void;
}
interface TfModel {
  (inputs: Record<string, unknown>): Promise<{ logits: TfTensor }>;
  dispose(): Promise<unknown>;
}
interface TfModule {
  env: Record<string, unknown> & {
    backends: { onnx: Record<string, unknown> & { wasm?: Record<string, unknown> } };
  };
  LogLevel: Record<string, number>;
  Tensor: new (type: string, data: BigInt64Array, dims: number[]) => unknown;
  AutoModelForTokenClassification: {
    from_pretrained(id: string, options: Record<string, unknown>): Promise<TfModel>;
  };
}

const SUFFIX: Record<ClassifierDtype, string> = {
  fp32: "",
  fp16: "_fp16",
  q8: "_quantized",
  int8: "_int8",
  uint8: "_uint8",
  q4: "_q4",
  q4f16: "_q4f16",
  bnb4: "_bnb4",
};

let nativeBuild: Promise<TfModule> | undefined;
let wasmBuild: Promise<TfModule> | undefined;

/**
 * Loads a token-classification model and its tokenizer.
 *
 * @param source a model directory, or a Hugging Face repo id (`owner/name[@revision]`) in transformers.js layout
 * @param options backend, device, dtype, batching, download options
 * @returns the classifier
 * @throws {CompressorLoadError} when a file is missing or unusable, or the requested backend cannot load
 * @throws {ModelSourceError} when `source` is neither a directory nor a repo id (from the hub module)
 *
 * @example
 * ```ts ignore
 * import { loadTokenClassifier } from "./token_classifier.ts";
 * const clf = await loadTokenClassifier("fixtures/compressor/xlmr", { backend: "wasm" });
 * await clf.dispose();
 * ```
 */
export async function loadTokenClassifier(
  source: string,
  options: TokenClassifierOptions = {},
): Promise<TokenClassifier> {
  const dtype = options.dtype ?? "fp32";
  if (!(dtype in SUFFIX)) {
    throw new TypeError(`Cannot load dtype "${dtype}": use one of ${Object.keys(SUFFIX)}`);
  }
  const backendChoice = options.backend ?? "auto";
  if (!["native", "wasm", "auto"].includes(backendChoice)) {
    throw new TypeError(`Cannot use backend "${backendChoice}": use "native", "wasm" or "auto"`);
  }
  const device = options.device ?? "cpu";
  if (!["cpu", "cuda", "webgpu"].includes(device)) {
    throw new TypeError(`Cannot use device "${device}": use "cpu", "cuda" or "webgpu"`);
  }
  const maxBatchSize = positiveInt(options.maxBatchSize ?? 50, "maxBatchSize");
  const maxBatchTokens = positiveInt(options.maxBatchTokens ?? 16384, "maxBatchTokens");
  const threads = options.threads === undefined ? undefined : positiveInt(options.threads, "threads");

  const dir = resolve(
    await resolveModelSource(source, { ...options.hub, files: (name) => isClassifierFile(name, dtype) }),
  );
  const onnxFile = join(dir, "onnx", `model${SUFFIX[dtype]}.onnx`);
  let tokenizer: HfLinguaTokenizer;
  try {
    tokenizer = await HfLinguaTokenizer.load(dir, { family: options.family });
  } catch (e) {
    throw new CompressorLoadError(`Cannot load the classifier's tokenizer in ${dir}: ${message(e)}`, {
      cause: e,
    });
  }
  if (!(await isFile(onnxFile))) {
    throw new CompressorLoadError(
      `Cannot load the classifier in ${dir}: there is no onnx/model${
        SUFFIX[dtype]
      }.onnx (export the model to ONNX, ` +
        `see docs/compression.md)`,
      { file: onnxFile },
    );
  }
  const externalChunks = await countExternalData(onnxFile);

  const { tf, backend } = await loadBuild(backendChoice);
  // The web build's provider: WebAssembly on the CPU, or WebGPU.
  const runOn = backend === "native" ? device : device === "webgpu" ? "webgpu" : "wasm";
  if (backend === "wasm" && device === "cuda") {
    throw new CompressorLoadError(
      'Cannot run the classifier on device "cuda" with the WebAssembly ONNX Runtime: it runs "cpu" or "webgpu" ' +
        "(the native build, onnxruntime-node, did not load or was not chosen)",
    );
  }
  if (runOn === "webgpu" && backend === "wasm" && !("gpu" in navigator)) {
    throw new CompressorLoadError(
      'Cannot run the classifier on device "webgpu": this runtime has no navigator.gpu (WebGPU)',
    );
  }
  let model: TfModel;
  try {
    const sessionOptions: Record<string, unknown> = { graphOptimizationLevel: "all" };
    if (threads !== undefined && backend === "native") sessionOptions.intraOpNumThreads = threads;
    model = await tf.AutoModelForTokenClassification.from_pretrained(dir, {
      local_files_only: true,
      device: runOn,
      dtype,
      session_options: sessionOptions,
      ...(externalChunks > 0 ? { use_external_data_format: externalChunks } : {}),
    });
  } catch (e) {
    throw new CompressorLoadError(
      `Cannot load the classifier in ${dir} (${backend} backend): ${message(e)}`,
      {
        cause: e,
      },
    );
  }
  return new OnnxTokenClassifier({
    dir,
    backend,
    device: runOn,
    tokenizer,
    model,
    tf,
    padId: tokenizer.padTokenId,
    maxBatchSize,
    maxBatchTokens,
    progress: options.progress ?? true,
  });
}

/**
 * Whether a repo file is one the classifier needs: configs, tokenizer files, and the ONNX weights of `dtype`.
 *
 * @param name the file's path in the repo
 * @param dtype the weights variant
 * @returns true for files to download
 *
 * @example
 * ```ts
 * import { isClassifierFile } from "./token_classifier.ts";
 * isClassifierFile("onnx/model.onnx", "fp32"); // true
 * ```
 */
export function isClassifierFile(name: string, dtype: ClassifierDtype): boolean {
  if (["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"].includes(name)) {
    return true;
  }
  const base = `onnx/model${SUFFIX[dtype]}.onnx`;
  return name === base || name === `${base}_data` || (name.startsWith(`${base}_data_`) && /_\d+$/.test(name));
}

// --- model ----------------------------------------------------------------------------------------------------

interface ClassifierParts {
  dir: string;
  backend: "native" | "wasm";
  device: NativeDevice | "wasm";
  tokenizer: HfLinguaTokenizer;
  model: TfModel;
  tf: TfModule;
  padId: number;
  maxBatchSize: number;
  maxBatchTokens: number;
  progress: boolean;
}

class OnnxTokenClassifier implements TokenClassifier {
  readonly dir: string;
  readonly backend: "native" | "wasm";
  readonly device: NativeDevice | "wasm";
  readonly tokenizer: HfLinguaTokenizer;
  readonly #p: ClassifierParts;
  #disposed = false;

  constructor(parts: ClassifierParts) {
    this.#p = parts;
    this.dir = parts.dir;
    this.backend = parts.backend;
    this.device = parts.device;
    this.tokenizer = parts.tokenizer;
  }

  keepProbabilities(chunks: readonly EncodedChunk[]): Promise<Float32Array[]> {
    return this.#batched(chunks, (data, row, len, labels) => {
      const p = new Float32Array(len); // (seq,) float32: softmax(logits)[..., 1]
      for (let t = 0; t < len; t++) p[t] = softmaxAt(data, (row + t) * labels, labels, 1);
      return p;
    });
  }

  logits(chunks: readonly EncodedChunk[]): Promise<ChunkLogits[]> {
    return this.#batched(chunks, (data, row, len, labels) => ({
      data: data.slice(row * labels, (row + len) * labels),
      labels,
    }));
  }

  /**
   * Runs the chunks through the model in batches of similar length and reads each chunk's result with `read`
   * (its logits start at row `row` of `data`, `len` rows of `labels`), in the chunks' order.
   */
  async #batched<T>(
    chunks: readonly EncodedChunk[],
    read: (data: Float32Array, row: number, len: number, labels: number) => T,
  ): Promise<T[]> {
    if (this.#disposed) throw new ModelDisposedError();
    const { maxBatchSize, maxBatchTokens } = this.#p;
    const out = new Array<T>(chunks.length);
    // Longest first, so that each batch pads little; results go back to their chunk's place.
    const order = chunks.map((_, i) => i).sort((a, b) => chunks[b].ids.length - chunks[a].ids.length);
    const progress = this.#p.progress ? chunkProgress(chunks.length) : undefined;
    let done = 0;
    for (let at = 0; at < order.length;) {
      const seq = chunks[order[at]].ids.length;
      const size = Math.max(1, Math.min(maxBatchSize, Math.floor(maxBatchTokens / Math.max(seq, 1))));
      const batch = order.slice(at, at + size);
      await this.#run(batch.map((i) => chunks[i]), seq, (data, labels) => {
        batch.forEach((i, b) => (out[i] = read(data, b * seq, chunks[i].ids.length, labels)));
      });
      at += batch.length;
      done += batch.length;
      progress?.(done);
    }
    return out;
  }

  /**
   * One model call on chunks padded to `seq` tokens (right padding with the pad id, attention mask 0 there);
   * `read` gets the logits, (batch, seq, labels) float32, before their tensor is released.
   */
  async #run(
    batch: readonly EncodedChunk[],
    seq: number,
    read: (data: Float32Array, labels: number) => void,
  ): Promise<void> {
    const { tf, padId, tokenizer } = this.#p;
    const n = batch.length;
    const ids = new BigInt64Array(n * seq); // (batch, seq) int64
    const mask = new BigInt64Array(n * seq); // (batch, seq) int64
    // Written as int32 halves (little-endian, non-negative values): no BigInt per token.
    const ids32 = new Int32Array(ids.buffer);
    const mask32 = new Int32Array(mask.buffer);
    const vocab = tokenizer.vocabSize;
    const unk = tokenizer.unkTokenId;
    for (let b = 0; b < n; b++) {
      const c = batch[b];
      const row = b * seq;
      for (let t = 0; t < seq; t++) {
        if (t < c.ids.length) {
          const id = c.ids[t];
          ids32[2 * (row + t)] = id >= vocab ? unk : id;
          mask32[2 * (row + t)] = c.mask[t];
        } else {
          ids32[2 * (row + t)] = padId;
        }
      }
    }
    const result = await this.#p.model({
      input_ids: new tf.Tensor("int64", ids, [n, seq]),
      attention_mask: new tf.Tensor("int64", mask, [n, seq]),
    });
    // (batch, seq, labels) float32; a float16 model's logits are widened first.
    const logits = result.logits.type === "float32" || !result.logits.to
      ? result.logits
      : result.logits.to("float32");
    try {
      if (logits.type !== "float32") throw new Error(`Cannot read the classifier's ${logits.type} logits`);
      const labels = logits.dims[2];
      if (logits.dims.length !== 3 || logits.dims[0] !== n || logits.dims[1] !== seq || labels < 2) {
        throw new Error(
          `Cannot read the classifier output: logits of shape [${logits.dims}] for a batch [${n}, ${seq}]`,
        );
      }
      read(logits.data, labels);
    } finally {
      if (logits !== result.logits) result.logits.dispose?.();
      logits.dispose?.();
    }
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    await this.#p.model.dispose();
  }
}

/** `softmax(x[off .. off+n])[k]` in float32 steps, as torch computes it. */
function softmaxAt(x: Float32Array, off: number, n: number, k: number): number {
  let max = -Infinity;
  for (let j = 0; j < n; j++) if (x[off + j] > max) max = x[off + j];
  let sum = 0;
  for (let j = 0; j < n; j++) sum = Math.fround(sum + Math.fround(Math.exp(Math.fround(x[off + j] - max))));
  return Math.fround(Math.fround(Math.exp(Math.fround(x[off + k] - max))) / sum);
}

// --- ONNX Runtime builds -------------------------------------------------------------------------------------

/** Loads the transformers.js build for `choice`: the Node one (native ORT) or the web one (ORT WebAssembly). */
async function loadBuild(choice: ClassifierBackend): Promise<{ tf: TfModule; backend: "native" | "wasm" }> {
  if (choice !== "wasm") {
    const ffi = await Deno.permissions.query({ name: "ffi" });
    if (ffi.state === "granted") {
      try {
        return { tf: await loadNative(), backend: "native" };
      } catch (e) {
        if (choice === "native") {
          throw new CompressorLoadError(
            `Cannot load the native ONNX Runtime (onnxruntime-node): ${message(e)}`,
            {
              cause: e,
            },
          );
        }
      }
    } else if (choice === "native") {
      throw new CompressorLoadError(
        "Cannot load the native ONNX Runtime: it is a Node-API addon and Deno runs without --allow-ffi " +
          '(grant it, or use backend "wasm")',
      );
    }
  }
  try {
    return { tf: await loadWasm(), backend: "wasm" };
  } catch (e) {
    throw new CompressorLoadError(
      `Cannot load the WebAssembly ONNX Runtime (onnxruntime-web): ${message(e)}`,
      {
        cause: e,
      },
    );
  }
}

function loadNative(): Promise<TfModule> {
  nativeBuild ??= import("@huggingface/transformers").then((m) => m as unknown as TfModule);
  nativeBuild.catch(() => (nativeBuild = undefined));
  return nativeBuild;
}

function loadWasm(): Promise<TfModule> {
  wasmBuild ??= (async () => {
    // The web build of the same package: found next to the Node build that the import map resolves to.
    const nodeBuild = import.meta.resolve("@huggingface/transformers");
    const tf = (await import(new URL("transformers.web.js", nodeBuild).href)) as TfModule;
    const ortDist = dirname(createRequire(nodeBuild).resolve("onnxruntime-web"));
    const env = tf.env;
    // This module instance is ours alone: configure it for local files only.
    env.allowLocalModels = true;
    env.allowRemoteModels = false;
    env.useBrowserCache = false;
    env.useFSCache = false;
    env.useCustomCache = false;
    env.logLevel = tf.LogLevel.ERROR;
    env.fetch = localFetch;
    const wasm = env.backends.onnx.wasm!;
    wasm.numThreads = 1;
    wasm.wasmPaths = {
      mjs: pathToFileURL(join(ortDist, "ort-wasm-simd-threaded.asyncify.mjs")).href,
      wasm: pathToFileURL(join(ortDist, "ort-wasm-simd-threaded.asyncify.wasm")).href,
    };
    return tf;
  })();
  wasmBuild.catch(() => (wasmBuild = undefined));
  return wasmBuild;
}

/**
 * The web build reads every file through `env.fetch`: serve local paths and file URLs from disk. The WebAssembly
 * factory script is refused on purpose: transformers.js would turn it into a blob URL, which Deno cannot import
 * from npm code; refused, ONNX Runtime imports it from its file URL itself.
 */
async function localFetch(input: string | URL): Promise<Response> {
  const s = String(input);
  if (s.endsWith(".mjs")) return new Response(null, { status: 404, statusText: "Not Found" });
  const path = s.startsWith("file:") ? new URL(s) : s.startsWith("/") ? s : undefined;
  if (path === undefined) return new Response(null, { status: 404, statusText: `Not a local file: ${s}` });
  try {
    const data = await Deno.readFile(path);
    return new Response(data, { status: 200, headers: { "content-length": String(data.byteLength) } });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      return new Response(null, { status: 404, statusText: "Not Found" });
    }
    throw e;
  }
}

// --- files ----------------------------------------------------------------------------------------------------

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** Number of external-data files (`model.onnx_data`, `model.onnx_data_1`, ...) next to the model. */
async function countExternalData(onnxFile: string): Promise<number> {
  let n = 0;
  while (await isFile(`${onnxFile}_data${n === 0 ? "" : `_${n}`}`)) n++;
  return n;
}

function positiveInt(n: number, name: string): number {
  if (!Number.isInteger(n) || n < 1) {
    throw new RangeError(`Cannot use ${name} ${n}: it must be a positive integer`);
  }
  return n;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A "classifying n/N chunks" line on stderr, drawn only when stderr is a terminal and there is work to wait for. */
function chunkProgress(total: number): ((done: number) => void) | undefined {
  if (total < 8 || !Deno.stderr.isTerminal()) return undefined;
  const start = performance.now();
  const enc = new TextEncoder();
  let last = 0;
  return (done) => {
    const now = performance.now();
    if (done < total && now - last < 200) return;
    last = now;
    const secs = ((now - start) / 1000).toFixed(1);
    Deno.stderr.writeSync(
      enc.encode(`\r\x1b[Kclassifying ${done}/${total} chunks  ${secs}s${done === total ? "\n" : ""}`),
    );
  };
}
