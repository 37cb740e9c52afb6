/**
 * Sentence embeddings with transformers.js: a feature-extraction model (BERT-like encoder exported to ONNX, in
 * the transformers.js layout: config.json, tokenizer.json, tokenizer_config.json, onnx/model.onnx) from a local
 * directory or a Hugging Face repo id. An embedding is the mean of the last hidden state over the attention mask,
 * L2-normalised, so the dot product of two embeddings is their cosine similarity.
 *
 * Texts longer than the model's limit are truncated the way Hugging Face tokenizers do it: the word pieces are
 * cut and the special tokens ([CLS] … [SEP], <s> … </s>) are kept. (transformers.js's own truncation cuts after
 * the special tokens are added, which drops the closing one.) Under Deno, transformers.js runs on
 * onnxruntime-node, a native addon: it needs `--allow-ffi` and a local `node_modules`.
 *
 * @module
 */

import type {
  DataType,
  PreTrainedModel,
  PreTrainedTokenizer,
  ProgressInfo,
  Tensor,
} from "@huggingface/transformers";
import { dirname, join, resolve } from "node:path";
import { defaultHubCacheDir, parseRepoId } from "../engine/hub.ts";
import { createProgress, type Progress, type ProgressSink } from "../engine/progress.ts";
import { EmbedderError } from "./errors.ts";

/** Turns texts into unit-length vectors; what the knowledge store needs from an embedding model. */
export interface Embedder {
  /** What the embedder was loaded from (a directory or a repo id); stored in the table's metadata. */
  readonly id: string;
  /** Length of every embedding. */
  readonly dim: number;
  /** Embeds `texts`: one Float32Array [dim] per text, in order, each of L2 norm 1 (or all zeros). */
  embed(texts: readonly string[]): Promise<Float32Array[]>;
  /** Frees the model; later calls to `embed` reject. */
  dispose(): Promise<void>;
}

/** Options of {@link loadEmbedder}. */
export interface EmbedderOptions {
  /** Texts per forward pass; default 16. Texts are sorted by length first so a batch pads little. */
  batchSize?: number;
  /** Tokens per text, special tokens included; default the smaller of the tokenizer's and the model's limits. */
  maxTokens?: number;
  /** ONNX weights to load (chooses the file under `onnx/`, e.g. `q8` → `model_quantized.onnx`); default `fp32`. */
  dtype?: DataType;
  /** onnxruntime execution provider; default `cpu`. */
  device?: "cpu" | "cuda" | "webgpu";
  /** Where downloads are cached; default `<Hugging Face home>/transformers.js` (next to the hub cache). */
  cacheDir?: string;
  /** Branch, tag or commit of a repo id (an `@revision` in the source wins); default `main`. */
  revision?: string;
  /** Never download: a repo id must already be in the cache. Default false. */
  offline?: boolean;
  /** Download progress: a sink for events, false for none, true to draw even off a terminal; default terminal only. */
  progress?: boolean | ProgressSink;
}

const DEFAULT_BATCH = 16;

/**
 * Loads a transformers.js feature-extraction model from a local directory or a Hugging Face repo id
 * (`owner/name[@revision]`), and measures its embedding size with one forward pass.
 */
export async function loadEmbedder(source: string, options: EmbedderOptions = {}): Promise<Embedder> {
  if (typeof source !== "string" || source === "") {
    throw new TypeError("loadEmbedder: source must be a non-empty string");
  }
  const batchSize = options.batchSize ?? DEFAULT_BATCH;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
  }
  if (options.maxTokens !== undefined && (!Number.isInteger(options.maxTokens) || options.maxTokens < 2)) {
    throw new RangeError(`maxTokens must be an integer >= 2, got ${options.maxTokens}`);
  }

  let path: string;
  let local: boolean;
  let revision = options.revision;
  if (await isDirectory(source)) {
    path = resolve(source);
    local = true;
  } else {
    const repo = parseRepoId(source);
    if (!repo) {
      throw new EmbedderError(
        `Cannot load the embedder "${source}": it is neither a directory nor a Hugging Face repo id (owner/name)`,
        source,
      );
    }
    path = repo.repo;
    revision = repo.revision ?? revision;
    local = false;
  }

  const progress = downloadProgress(options.progress);
  const common = {
    local_files_only: local || options.offline === true,
    cache_dir: options.cacheDir ?? join(dirname(defaultHubCacheDir()), "transformers.js"),
    revision,
    progress_callback: progress.callback,
  };
  let tokenizer: PreTrainedTokenizer;
  let model: PreTrainedModel;
  let TensorClass: typeof Tensor;
  try {
    // Loaded on first use: transformers.js pulls in onnxruntime-node, a native addon that needs --allow-ffi.
    const { AutoModel, AutoTokenizer, Tensor } = await import("@huggingface/transformers");
    TensorClass = Tensor;
    tokenizer = await AutoTokenizer.from_pretrained(path, common);
    model = await AutoModel.from_pretrained(path, {
      ...common,
      dtype: options.dtype ?? "fp32",
      device: options.device ?? "cpu",
    });
  } catch (cause) {
    throw new EmbedderError(
      `Cannot load the embedder "${source}": ${cause instanceof Error ? cause.message : String(cause)}`,
      source,
      { cause },
    );
  } finally {
    progress.finish();
  }

  const config = model.config as unknown as Record<string, unknown>;
  const limits = [tokenizer.model_max_length, config.max_position_embeddings, options.maxTokens]
    .filter((x): x is number => typeof x === "number" && Number.isFinite(x) && x >= 2 && x < 1e9);
  const maxTokens = limits.length > 0 ? Math.min(...limits) : 512;
  const embedder = new TransformersEmbedder(source, tokenizer, model, TensorClass, batchSize, maxTokens);
  await embedder.measure();
  return embedder;
}

/**
 * Mean over the attention mask of `hidden`, L2-normalised.
 * `hidden` is [batch, seq, dim] row-major f32, `mask` is [batch, seq] (1 = token, 0 = padding); returns `batch`
 * vectors [dim]. A row with no tokens, or whose mean is zero, gives the zero vector.
 */
export function meanPool(
  hidden: Float32Array,
  mask: ArrayLike<number | bigint>,
  batch: number,
  seq: number,
  dim: number,
): Float32Array[] {
  if (hidden.length !== batch * seq * dim) {
    throw new RangeError(`hidden has ${hidden.length} values, expected ${batch}×${seq}×${dim}`);
  }
  if (mask.length !== batch * seq) {
    throw new RangeError(`mask has ${mask.length} values, expected ${batch}×${seq}`);
  }
  const out: Float32Array[] = [];
  for (let b = 0; b < batch; b++) {
    const sum = new Float64Array(dim);
    let count = 0;
    for (let t = 0; t < seq; t++) {
      const m = Number(mask[b * seq + t]);
      if (m === 0) continue;
      count += m;
      const row = (b * seq + t) * dim;
      for (let d = 0; d < dim; d++) sum[d] += m * hidden[row + d];
    }
    const v = new Float32Array(dim);
    if (count > 0) {
      let norm = 0;
      for (let d = 0; d < dim; d++) norm += sum[d] * sum[d];
      norm = Math.sqrt(norm);
      // The mean's 1/count cancels in the normalisation.
      if (norm > 0) { for (let d = 0; d < dim; d++) v[d] = sum[d] / norm; }
    }
    out.push(v);
  }
  return out;
}

class TransformersEmbedder implements Embedder {
  readonly id: string;
  dim = 0;
  #tokenizer: PreTrainedTokenizer;
  #model: PreTrainedModel | undefined;
  #Tensor: typeof Tensor;
  #batchSize: number;
  #maxTokens: number;
  // onnxruntime sessions are not documented as safe for concurrent runs: one forward pass at a time.
  #queue: Promise<unknown> = Promise.resolve();

  constructor(
    id: string,
    tokenizer: PreTrainedTokenizer,
    model: PreTrainedModel,
    tensor: typeof Tensor,
    batchSize: number,
    maxTokens: number,
  ) {
    this.id = id;
    this.#tokenizer = tokenizer;
    this.#model = model;
    this.#Tensor = tensor;
    this.#batchSize = batchSize;
    this.#maxTokens = maxTokens;
  }

  async measure(): Promise<void> {
    const [v] = await this.#forward([this.#encode("dimension probe")]);
    this.dim = v.length;
  }

  async embed(texts: readonly string[]): Promise<Float32Array[]> {
    if (!Array.isArray(texts) || texts.some((t) => typeof t !== "string")) {
      throw new TypeError("embed: texts must be an array of strings");
    }
    const encoded = texts.map((t) => this.#encode(t));
    const order = encoded.map((_, i) => i).sort((a, b) => encoded[a].length - encoded[b].length);
    const out = new Array<Float32Array>(texts.length);
    for (let s = 0; s < order.length; s += this.#batchSize) {
      const batch = order.slice(s, s + this.#batchSize);
      const vectors = await this.#forward(batch.map((i) => encoded[i]));
      batch.forEach((i, j) => out[i] = vectors[j]);
    }
    return out;
  }

  async dispose(): Promise<void> {
    const model = this.#model;
    this.#model = undefined;
    await this.#queue.catch(() => {});
    await model?.dispose();
  }

  /** Token ids with special tokens, truncated to maxTokens while keeping the special tokens. */
  #encode(text: string): number[] {
    const full = this.#tokenizer.encode(text);
    if (full.length <= this.#maxTokens) return full;
    const bare = this.#tokenizer.encode(text, { add_special_tokens: false });
    const prefix = findRun(full, bare);
    if (prefix < 0) return full.slice(0, this.#maxTokens);
    const head = full.slice(0, prefix);
    const tail = full.slice(prefix + bare.length);
    const room = Math.max(0, this.#maxTokens - head.length - tail.length);
    return [...head, ...bare.slice(0, room), ...tail];
  }

  #forward(batch: number[][]): Promise<Float32Array[]> {
    const run = this.#queue.then(() => this.#run(batch));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #run(batch: number[][]): Promise<Float32Array[]> {
    const model = this.#model;
    if (!model) throw new EmbedderError(`The embedder "${this.id}" was disposed`, this.id);
    const seq = Math.max(1, ...batch.map((ids) => ids.length));
    const pad = BigInt(this.#tokenizer.pad_token_id ?? 0);
    const ids = new BigInt64Array(batch.length * seq).fill(pad); // [batch, seq] int64
    const mask = new BigInt64Array(batch.length * seq); // [batch, seq] int64
    batch.forEach((row, b) => {
      row.forEach((id, t) => {
        ids[b * seq + t] = BigInt(id);
        mask[b * seq + t] = 1n;
      });
    });
    let hidden: Tensor;
    try {
      const out = await model({
        input_ids: new this.#Tensor("int64", ids, [batch.length, seq]),
        attention_mask: new this.#Tensor("int64", mask, [batch.length, seq]),
      });
      const h = (out.last_hidden_state ?? out.token_embeddings) as Tensor | undefined;
      if (!h) {
        throw new Error(`the model returned ${Object.keys(out).join(", ")}, not last_hidden_state`);
      }
      hidden = h.to("float32");
    } catch (cause) {
      throw new EmbedderError(
        `The embedder "${this.id}" failed on a batch of ${batch.length}: ${
          cause instanceof Error ? cause.message : String(cause)
        }`,
        this.id,
        { cause },
      );
    }
    const [b, s, dim] = hidden.dims;
    if (b !== batch.length || s !== seq) {
      throw new EmbedderError(`The embedder "${this.id}" returned shape [${hidden.dims}]`, this.id);
    }
    return meanPool(hidden.data as Float32Array, mask, b, s, dim);
  }
}

/** Index where `needle` occurs in `haystack` as a contiguous run, or -1. */
function findRun(haystack: number[], needle: number[]): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

function downloadProgress(option: boolean | ProgressSink | undefined) {
  const bars = new Map<string, Progress>();
  const settings = typeof option === "object"
    ? { sink: option }
    : option === undefined
    ? {}
    : { enabled: option };
  return {
    callback(info: ProgressInfo): void {
      if (!("file" in info)) return;
      const file = `${info.name}/${info.file}`;
      if (info.status === "progress") {
        let bar = bars.get(file);
        if (!bar) bars.set(file, bar = createProgress(file, info.total, settings));
        bar.update(info.loaded, info.total);
      } else if (info.status === "done") {
        bars.get(file)?.done();
      }
    },
    finish(): void {
      for (const bar of bars.values()) bar.done();
    },
  };
}
