/**
 * `deno task eval`: runs held-out questions of the synthetic world (tools/world) through the question-answering
 * pipeline with each stage on and off, and prints exact match, mean latency and tokens per setting as a
 * Markdown table (also written to docs/eval.md), or, with `--json`, one JSON line.
 *
 * ```sh
 * deno task eval [--limit 100] [--model SRC] [--backend auto|webgpu|cpu] [--db URI] [--json]
 * ```
 *
 * The settings, each over what exists (a missing stage is a row marked n/a with the reason):
 * - retrieval never / always / auto (the gate: gate.json beside the model), over all three splits;
 * - LFD (layer fused decoding) off / on: retrieval always, over the conflicting questions;
 * - compression off / 0.5 / 0.33, KV cache f16 / GEAR 4-bit / GEAR 2-bit: retrieval always, over the fresh and
 *   conflicting questions (the ones only the retrieved passages answer);
 * - weights unquantized / MxMoE 3.25 / 2.25 bits (the model quantized into a temporary directory when it is
 *   small): parametric questions closed-book, fresh and conflicting ones with retrieval.
 *
 * Questions: the held-out questions of each split (parametric, fresh, conflicting), `--limit` per split, evenly
 * spaced over the file. Answers are greedy, end at the first newline and at most 4 tokens after the longest
 * accepted answer (a longer one cannot match), and count when they match the gold answer or an alias after
 * SQuAD normalization (tools/world/exact_match.ts).
 *
 * Exit status: 0 done, 1 failed, 2 bad usage.
 *
 * @module
 */

import { isAbsolute, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { DEFAULT_LFD_ALPHA } from "../engine/lfd.ts";

/** The values of α the evaluation compares for layer fused decoding (the default is chosen from them). */
export const LFD_ALPHA_SWEEP: readonly number[] = [0.1, 0.25, 0.5, 1];
import { resolveModelSource } from "../engine/hub.ts";
import { loadModel } from "../engine/model.ts";
import { quantizeModel } from "../engine/quant/quantize_model.ts";
import type { Backend, GenerateOptions, Model, ModelTokenizer } from "../engine/types.ts";
import { DEFAULT_COMPRESSOR, DEFAULT_MODEL } from "../main.ts";
import {
  type AskRequest,
  createPipeline,
  type PromptCompressor,
  type RetrievalGate,
  type RetrievalMode,
  type Retriever,
} from "../pipeline.ts";
import { loadCompressor } from "../retrieval/compress.ts";
import { readGate, RetrievalGate as Gate } from "../retrieval/gate.ts";
import { ingestFile } from "../retrieval/knowledge_base.ts";
import { type KnowledgeStore, openStore } from "../retrieval/store.ts";
import { exactMatch } from "./world/exact_match.ts";
import { readWorldQuestions, WORLD_SPLITS, type WorldQuestion, type WorldSplit } from "./world/world.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DEFAULT_WORLD = join(ROOT, "fixtures", "world");
const DEFAULT_OUT = join(ROOT, "docs", "eval.md");

/** Held-out questions per split without `--limit`. */
export const DEFAULT_LIMIT = 100;
/** Tokens an answer may run past the longest accepted answer (articles, punctuation, a leading space). */
export const ANSWER_SLACK_TOKENS = 4;
/** Checkpoints up to this size (bytes of safetensors) are quantized during the evaluation. */
export const MAX_QUANTIZE_BYTES = 256 * 1024 * 1024;
/** Calibration tokens of the MxMoE quantization, from the world's training text. */
export const DEFAULT_CALIB_TOKENS = 2048;

const USAGE = `Usage: deno task eval [options]

Runs held-out questions of the synthetic world through the pipeline with each stage on and off (retrieval
never/always/auto, LFD off/on, compression off/0.5/0.33, weights unquantized/MxMoE 3.25/2.25, KV cache
f16/GEAR 4-bit/GEAR 2-bit) and prints exact match, mean latency and tokens as a Markdown table, also written
to docs/eval.md.

Options:
  --limit N          held-out questions per split: parametric, fresh, conflicting (default ${DEFAULT_LIMIT})
  --stages LIST      stages besides retrieval, comma-separated: lfd, compression, kv, weights (default all);
                     the others show as n/a
  --model SRC        checkpoint directory or Hugging Face repo id (default: serve's default model)
  --backend B        auto, webgpu or cpu (default auto)
  --db URI           the knowledge store to search (default: a temporary store loaded with the world's
                     documents)
  --world DIR        the world (default fixtures/world)
  --compressor SRC   the prompt compressor (default: serve's, fixtures/compressor/default)
  --top-k N          passages retrieved per question (default 4)
  --calib-tokens N   calibration tokens of the MxMoE quantization (default ${DEFAULT_CALIB_TOKENS})
  --out FILE         where the Markdown report goes, or none (default docs/eval.md)
  --json             print one JSON line instead of the table
  -h, --help         show this help`;

// --- options and results --------------------------------------------------------------------------------

/** Options of {@linkcode runEval}. */
export interface EvalOptions {
  /** Checkpoint directory or repo id. */
  model: string;
  /** Where the model runs. */
  backend: Backend | "auto";
  /** The store to search; default a temporary store loaded with the world's documents. */
  db?: string;
  /** The world directory (documents.jsonl, questions.jsonl, train_text.txt). */
  world: string;
  /** Held-out questions per split. */
  limit: number;
  /** Passages retrieved per question. */
  topK: number;
  /** The compressor's source. */
  compressor: string;
  /** Calibration tokens of the MxMoE quantization. */
  calibTokens: number;
  /** Stages to run besides retrieval (always run: the others compare against it); default all. */
  stages?: readonly EvalStage[];
  /** Progress messages (a row started, a question done, a row done). */
  onProgress?: (event: ProgressEvent) => void;
}

/** The stages `--stages` selects (retrieval always runs). */
export const EVAL_STAGES = ["lfd", "compression", "kv", "weights"] as const;
/** One of {@linkcode EVAL_STAGES}. */
export type EvalStage = typeof EVAL_STAGES[number];

/** What {@linkcode EvalOptions.onProgress} receives. */
export type ProgressEvent =
  | { kind: "row"; label: string; total: number }
  | { kind: "question"; done: number; total: number }
  | { kind: "done"; label: string; summary: string }
  | { kind: "note"; message: string };

/** The outcome of one question. */
interface Outcome {
  id: string;
  split: WorldSplit;
  answer: string;
  correct: boolean;
  /** The store was searched. */
  retrieved: boolean;
  /** The question's gold document went into the prompt. */
  goldInPrompt: boolean;
  latencyMs: number;
  promptTokens: number;
  completionTokens: number;
}

/** One row of the report: a stage setting and its scores, or why it could not run. */
export interface EvalRow {
  /** The stage: retrieval, LFD, compression, weights, KV cache. */
  stage: string;
  /** The setting of the stage. */
  setting: string;
  /** "ok", or "n/a" with `reason`. */
  status: "ok" | "n/a";
  /** Why the row could not run. */
  reason?: string;
  /** How the questions were asked. */
  note?: string;
  /** Exact match per split, null for a split the row does not cover. */
  em: Record<WorldSplit, number | null>;
  /** Exact match over all questions of the row. */
  emAll: number | null;
  /** Share of questions for which the store was searched. */
  retrievedShare: number | null;
  /** Share of questions whose gold document went into the prompt. */
  goldShare: number | null;
  /** Mean milliseconds per question (the pipeline's total). */
  latencyMs: number | null;
  /** Mean prompt tokens. */
  promptTokens: number | null;
  /** Mean answer tokens. */
  completionTokens: number | null;
  /** Questions. */
  n: number;
}

/** The headline numbers (null where the stage is n/a). Losses are reference EM − setting EM. */
export interface EvalMetrics {
  /** EM on fresh facts, retrieval always. Target ≥ 0.9. */
  fresh_em_with_retrieval: number | null;
  /** EM on parametric facts, retrieval never. Target ≥ 0.8. */
  parametric_em_without_retrieval: number | null;
  /** EM on conflicting facts, retrieval always (the knowledge base's value). */
  conflicting_em_with_retrieval: number | null;
  /** Share of questions for which the gate skipped retrieval. Target ≥ 0.3. */
  gate_skip_rate: number | null;
  /** EM(always) − EM(auto) over all splits. Target ≤ 0.02. */
  gate_em_loss: number | null;
  /** EM(off) − EM(rate 0.5), fresh and conflicting, retrieval always. Target ≤ 0.03. */
  compression_0_5_em_loss: number | null;
  /** EM(off) − EM(rate 0.33). */
  compression_0_33_em_loss: number | null;
  /** EM(LFD on) − EM(LFD off) on conflicting facts, retrieval always. */
  lfd_conflict_em_gain: number | null;
  /** EM(unquantized) − EM(MxMoE 3.25 bits). */
  mxmoe_3_25_em_loss: number | null;
  /** EM(unquantized) − EM(MxMoE 2.25 bits). */
  mxmoe_2_25_em_loss: number | null;
  /** EM(plain cache) − EM(KV f16). */
  kv_f16_em_loss: number | null;
  /** EM(plain cache) − EM(GEAR 4-bit). */
  kv_gear_4_em_loss: number | null;
  /** EM(plain cache) − EM(GEAR 2-bit). */
  kv_gear_2_em_loss: number | null;
}

/** Everything one evaluation measured. */
export interface EvalReport {
  /** The model as given. */
  model: string;
  /** The backend it ran on. */
  backend: Backend;
  /** Its precision. */
  dtype: string;
  /** Questions per split. */
  limit: number;
  /** Questions asked per split (fewer than the limit when a split has fewer held-out questions). */
  questions: Record<WorldSplit, number>;
  /** The rows, in table order. */
  rows: EvalRow[];
  /** The headline numbers. */
  metrics: EvalMetrics;
  /** The first question of each split with the model's answer, retrieval always. */
  samples: EvalSample[];
  /** The machine: OS, architecture and CPU threads. */
  host: string;
  /** When the evaluation ran (ISO 8601). */
  date: string;
}

/** One question with the model's answer. */
export interface EvalSample {
  /** The split. */
  split: WorldSplit;
  /** The question. */
  question: string;
  /** The gold answer. */
  gold: string;
  /** What the model answered. */
  answer: string;
}

// --- questions --------------------------------------------------------------------------------------------

/**
 * The held-out questions of each split, at most `limit` each, evenly spaced over the file's order (which
 * groups questions by entity kind, so every kind is represented).
 */
export function selectQuestions(
  questions: readonly WorldQuestion[],
  limit: number,
): Record<WorldSplit, WorldQuestion[]> {
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new RangeError(`Cannot select questions: limit must be a positive integer, got ${limit}`);
  }
  const out = {} as Record<WorldSplit, WorldQuestion[]>;
  for (const split of WORLD_SPLITS) {
    const pool = questions.filter((q) => q.heldout && q.split === split);
    const n = Math.min(limit, pool.length);
    out[split] = Array.from({ length: n }, (_, i) => pool[Math.floor((i * pool.length) / n)]);
  }
  return out;
}

/** Most answer tokens for `q`: its longest accepted answer in `tokenizer`'s tokens plus the slack. */
export function answerBudget(tokenizer: Pick<ModelTokenizer, "encode">, q: WorldQuestion): number {
  const forms = [q.answer, ...(q.aliases ?? [])];
  const longest = Math.max(
    ...forms.flatMap((a) => [a, ` ${a}`]).map((a) => tokenizer.encode(a, { addSpecialTokens: false }).length),
  );
  return longest + ANSWER_SLACK_TOKENS;
}

// --- running ----------------------------------------------------------------------------------------------

/** `model` with `extra` merged into the options of every `generate` and `stream` call. */
export function withGenerateOptions(model: Model, extra: GenerateOptions): Model {
  return new Proxy(model, {
    get(target, prop) {
      if (prop === "stream" || prop === "generate") {
        return (ids: readonly number[], o: GenerateOptions = {}) => target[prop](ids, { ...o, ...extra });
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** A configuration of the pipeline: the model and stages, and how each question is asked. */
interface Setup {
  model: Model;
  store?: Retriever;
  gate?: RetrievalGate;
  compressor?: PromptCompressor;
  /** The retrieval mode of a question. */
  retrieval: (q: WorldQuestion) => RetrievalMode;
  compression?: { rate: number };
}

/** The outcomes of `questions` under `setup`; `budget` gives each question's token limit. */
async function ask(
  setup: Setup,
  questions: WorldQuestion[],
  budget: Map<string, number>,
  topK: number,
  progress: (done: number, total: number) => void,
): Promise<Outcome[]> {
  const pipeline = createPipeline({
    model: setup.model,
    store: setup.store,
    gate: setup.gate,
    compressor: setup.compressor,
    maxConcurrency: 1,
    defaults: { topK, temperature: 0, retrieval: setup.store ? "auto" : "never" },
  });
  const out: Outcome[] = [];
  try {
    for (const q of questions) {
      const request: AskRequest = {
        question: q.question,
        retrieval: setup.retrieval(q),
        compression: setup.compression ?? false,
        maxTokens: budget.get(q.id)!,
        temperature: 0,
        stop: ["\n"],
      };
      const r = await pipeline.ask(request);
      out.push({
        id: q.id,
        split: q.split,
        answer: r.answer,
        correct: exactMatch(r.answer, q.answer, q.aliases ?? []),
        retrieved: r.gate.decision === "retrieve",
        goldInPrompt: r.retrieved.some((p) => p.id === q.doc_id),
        latencyMs: r.timings.total_ms,
        promptTokens: r.usage.prompt_tokens,
        completionTokens: r.usage.completion_tokens,
      });
      progress(out.length, questions.length);
    }
  } finally {
    pipeline.close();
  }
  return out;
}

const mean = (xs: number[]) => xs.length === 0 ? null : xs.reduce((a, b) => a + b, 0) / xs.length;

/** A row from outcomes. */
function row(stage: string, setting: string, outcomes: Outcome[], note?: string): EvalRow {
  const em = {} as Record<WorldSplit, number | null>;
  for (const split of WORLD_SPLITS) {
    em[split] = mean(outcomes.filter((o) => o.split === split).map((o) => (o.correct ? 1 : 0)));
  }
  return {
    stage,
    setting,
    status: "ok",
    note,
    em,
    emAll: mean(outcomes.map((o) => (o.correct ? 1 : 0))),
    retrievedShare: mean(outcomes.map((o) => (o.retrieved ? 1 : 0))),
    goldShare: mean(outcomes.map((o) => (o.goldInPrompt ? 1 : 0))),
    latencyMs: mean(outcomes.map((o) => o.latencyMs)),
    promptTokens: mean(outcomes.map((o) => o.promptTokens)),
    completionTokens: mean(outcomes.map((o) => o.completionTokens)),
    n: outcomes.length,
  };
}

/** A row that could not run. */
function unavailable(stage: string, setting: string, reason: string): EvalRow {
  return {
    stage,
    setting,
    status: "n/a",
    reason,
    em: { parametric: null, fresh: null, conflicting: null },
    emAll: null,
    retrievedShare: null,
    goldShare: null,
    latencyMs: null,
    promptTokens: null,
    completionTokens: null,
    n: 0,
  };
}

function message(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split("\n")[0];
}

/** Bytes of the safetensors files of the checkpoint directory `dir`. */
async function checkpointBytes(dir: string): Promise<number> {
  let bytes = 0;
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile && entry.name.endsWith(".safetensors")) {
      bytes += (await Deno.stat(join(dir, entry.name))).size;
    }
  }
  return bytes;
}

/**
 * Runs the evaluation.
 *
 * @throws {WorldFormatError} when the world is missing; the model's load errors when the model cannot load.
 * A stage that cannot run becomes an n/a row instead.
 */
export async function runEval(options: EvalOptions): Promise<EvalReport> {
  const say = options.onProgress ?? (() => {});
  const questions = selectQuestions(await readWorldQuestions(options.world), options.limit);
  const all = WORLD_SPLITS.flatMap((s) => questions[s]);
  const contextQuestions = [...questions.fresh, ...questions.conflicting];
  const temps: string[] = [];
  const rows: EvalRow[] = [];
  let store: KnowledgeStore | undefined;
  let compressor: (PromptCompressor & { dispose(): Promise<void> }) | undefined;
  let base: Model | undefined;
  const date = new Date().toISOString();
  try {
    const modelDir = await resolveModelSource(options.model);
    base = await loadModel(modelDir, { backend: options.backend });
    const backend = base.backend, dtype = base.dtype;
    const tokenizer = base.tokenizer;
    const budget = new Map(all.map((q) => [q.id, answerBudget(tokenizer, q)]));

    // The store: the one given, or a temporary one loaded with the world's documents.
    if (options.db !== undefined) {
      store = await openStore(options.db);
    } else {
      const dir = await Deno.makeTempDir({ prefix: "edgemix-eval-db-" });
      temps.push(dir);
      store = await openStore(dir);
      say({ kind: "note", message: `loading the world's documents into a temporary store ${dir}` });
      await ingestFile(store, join(options.world, "documents.jsonl"));
    }

    const run = async (
      stage: string,
      setting: string,
      qs: WorldQuestion[],
      setup: () => Promise<Setup> | Setup,
      note?: string,
    ): Promise<Outcome[] | undefined> => {
      const label = `${stage} ${setting}`;
      say({ kind: "row", label, total: qs.length });
      try {
        const outcomes = await ask(
          await setup(),
          qs,
          budget,
          options.topK,
          (done, total) => say({ kind: "question", done, total }),
        );
        const r = row(stage, setting, outcomes, note);
        rows.push(r);
        say({ kind: "done", label, summary: `EM ${fmt(r.emAll)} over ${r.n} questions` });
        return outcomes;
      } catch (e) {
        rows.push(unavailable(stage, setting, message(e)));
        say({ kind: "done", label, summary: `n/a: ${message(e)}` });
        return undefined;
      }
    };
    const model = base;
    const always = () => "always" as const;

    // Retrieval.
    const never = await run("retrieval", "never", all, () => ({ model, retrieval: () => "never" }));
    const withRetrieval = await run("retrieval", "always", all, () => ({ model, store, retrieval: always }));
    const gatePath = join(modelDir, "gate.json");
    let gate: RetrievalGate | undefined;
    try {
      gate = new Gate(await readGate(gatePath));
    } catch (e) {
      const reason = e instanceof Deno.errors.NotFound
        ? "no gate.json beside the model (fit one with deno task gate-fit)"
        : message(e);
      rows.push(unavailable("retrieval", "auto (gate)", reason));
    }
    if (gate) {
      await run("retrieval", "auto (gate)", all, () => ({ model, store, gate, retrieval: () => "auto" }));
    }

    // The reference of the stage rows: retrieval always, fresh and conflicting questions.
    const ids = new Set(contextQuestions.map((q) => q.id));
    const reference = withRetrieval?.filter((o) => ids.has(o.id));
    const refNote = "retrieval always; fresh and conflicting questions";
    const pushReference = (stage: string, setting: string, outcomes: Outcome[] | undefined) =>
      rows.push(
        outcomes
          ? row(stage, setting, outcomes, refNote)
          : unavailable(stage, setting, "retrieval always failed"),
      );

    // LFD, on the conflicting facts (where the context must win over the trained value).
    const lfdNote = "retrieval always; conflicting questions";
    const conflictIds = new Set(questions.conflicting.map((q) => q.id));
    const lfdReference = withRetrieval?.filter((o) => conflictIds.has(o.id));
    const stages = new Set<EvalStage>(options.stages ?? EVAL_STAGES);
    const skipped = (stage: string, setting: string) =>
      rows.push(unavailable(stage, setting, "not run (--stages)"));
    rows.push(
      lfdReference
        ? row("LFD", "off", lfdReference, lfdNote)
        : unavailable("LFD", "off", "retrieval always failed"),
    );
    // The default α first (the headline metric reads it), then the sweep that chooses the default.
    const alphas = [DEFAULT_LFD_ALPHA, ...LFD_ALPHA_SWEEP.filter((a) => a !== DEFAULT_LFD_ALPHA)];
    if (!stages.has("lfd")) { for (const alpha of alphas) skipped("LFD", `on (auto layer, α ${alpha})`); }
    for (const alpha of stages.has("lfd") ? alphas : []) {
      const lfd = { layer: "auto" as const, alpha };
      await run(
        "LFD",
        `on (auto layer, α ${alpha})`,
        questions.conflicting,
        () => ({ model: withGenerateOptions(model, { lfd }), store, retrieval: always }),
        lfdNote,
      );
    }

    // Compression.
    pushReference("compression", "off", reference);
    if (!stages.has("compression")) {
      for (const rate of ["0.5", "0.33"]) skipped("compression", `rate ${rate}`);
    } else {
      try {
        await Deno.stat(options.compressor);
        compressor = await loadCompressor(options.compressor);
      } catch (e) {
        const reason = e instanceof Deno.errors.NotFound
          ? `no compressor at ${options.compressor}`
          : message(e);
        for (const rate of ["0.5", "0.33"]) rows.push(unavailable("compression", `rate ${rate}`, reason));
      }
    }
    if (compressor) {
      for (const rate of [0.5, 0.33]) {
        await run("compression", `rate ${rate}`, contextQuestions, () => ({
          model,
          store,
          compressor,
          retrieval: always,
          compression: { rate },
        }), refNote);
      }
    }

    // The KV cache: a model loaded per mode (on WebGPU the cache is fixed at load).
    pushReference("KV cache", `plain (${dtype})`, reference);
    await base.dispose();
    base = undefined;
    const kvModes: [string, GenerateOptions["kvCache"]][] = [
      ["f16", { mode: "f16" }],
      ["GEAR 4-bit", { mode: "gear", bits: 4 }],
      ["GEAR 2-bit", { mode: "gear", bits: 2 }],
    ];
    for (const [setting, kvCache] of kvModes) {
      if (!stages.has("kv")) {
        skipped("KV cache", setting);
        continue;
      }
      if (setting === "f16" && dtype === "f16") {
        if (reference) rows.push(row("KV cache", setting, reference, "the plain cache of this model is f16"));
        continue;
      }
      let kvModel: Model | undefined;
      await run("KV cache", setting, contextQuestions, async () => {
        kvModel = await loadModel(modelDir, { backend, kvCache });
        return { model: kvModel, store, retrieval: always };
      }, refNote);
      await kvModel?.dispose();
    }

    // Weights: parametric questions closed-book, the others with retrieval.
    const weightsNote = "parametric closed-book; fresh and conflicting with retrieval";
    const byRetrieval = (
      q: WorldQuestion,
    ) => (q.split === "parametric" ? "never" as const : "always" as const);
    const pIds = new Set(questions.parametric.map((q) => q.id));
    const weightsRef = never && withRetrieval
      ? [...never.filter((o) => pIds.has(o.id)), ...withRetrieval.filter((o) => !pIds.has(o.id))]
      : undefined;
    rows.push(
      weightsRef
        ? row("weights", `unquantized (${dtype})`, weightsRef, weightsNote)
        : unavailable("weights", `unquantized (${dtype})`, "retrieval never or always failed"),
    );
    const bytes = await checkpointBytes(modelDir);
    const calibText = (await Deno.readTextFile(join(options.world, "train_text.txt")).catch(() => "")) ||
      undefined;
    for (const bits of [3.25, 2.25]) {
      const setting = `MxMoE ${bits} bits`;
      if (!stages.has("weights")) {
        skipped("weights", setting);
        continue;
      }
      if (bytes > MAX_QUANTIZE_BYTES) {
        rows.push(
          unavailable(
            "weights",
            setting,
            `the checkpoint (${
              (bytes / 2 ** 20).toFixed(0)
            } MiB) is too large to quantize during the evaluation; ` +
              "quantize it with deno task quantize and evaluate that directory",
          ),
        );
        continue;
      }
      let qModel: Model | undefined;
      await run("weights", setting, all, async () => {
        const dir = await Deno.makeTempDir({ prefix: "edgemix-eval-quant-" });
        temps.push(dir);
        say({ kind: "note", message: `quantizing to ${bits} bits into ${dir}` });
        const report = await quantizeModel(modelDir, dir, {
          bits,
          calibText,
          calibTokens: options.calibTokens,
        });
        say({ kind: "note", message: `quantized: ${report.averageBits.toFixed(3)} bits per expert weight` });
        qModel = await loadModel(dir, { backend });
        return { model: qModel, store, retrieval: byRetrieval };
      }, weightsNote);
      await qModel?.dispose();
    }

    return {
      model: options.model,
      backend,
      dtype,
      limit: options.limit,
      questions: {
        parametric: questions.parametric.length,
        fresh: questions.fresh.length,
        conflicting: questions.conflicting.length,
      },
      rows,
      metrics: metricsOf(rows),
      samples: WORLD_SPLITS.flatMap((split) => {
        const q = questions[split][0];
        const o = withRetrieval?.find((x) => x.id === q?.id);
        return q && o ? [{ split, question: q.question, gold: q.answer, answer: o.answer }] : [];
      }),
      host: `${Deno.build.os}/${Deno.build.arch}, ${navigator.hardwareConcurrency} CPU threads`,
      date,
    };
  } finally {
    await base?.dispose();
    await compressor?.dispose();
    await store?.close();
    for (const dir of temps) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** The headline numbers of `rows`. */
export function metricsOf(rows: readonly EvalRow[]): EvalMetrics {
  const find = (stage: string, setting: string | RegExp) =>
    rows.find((r) =>
      r.stage === stage && r.status === "ok" &&
      (typeof setting === "string" ? r.setting === setting : setting.test(r.setting))
    );
  const diff = (a: number | null | undefined, b: number | null | undefined) =>
    a === null || a === undefined || b === null || b === undefined ? null : round(a - b);
  const always = find("retrieval", "always");
  const auto = find("retrieval", "auto (gate)");
  const loss = (stage: string, ref: RegExp, setting: string) =>
    diff(find(stage, ref)?.emAll, find(stage, setting)?.emAll);
  return {
    fresh_em_with_retrieval: always?.em.fresh ?? null,
    parametric_em_without_retrieval: find("retrieval", "never")?.em.parametric ?? null,
    conflicting_em_with_retrieval: always?.em.conflicting ?? null,
    gate_skip_rate: auto?.retrievedShare === null || auto === undefined
      ? null
      : round(1 - auto.retrievedShare),
    gate_em_loss: diff(always?.emAll, auto?.emAll),
    compression_0_5_em_loss: loss("compression", /^off$/, "rate 0.5"),
    compression_0_33_em_loss: loss("compression", /^off$/, "rate 0.33"),
    lfd_conflict_em_gain: diff(find("LFD", /^on/)?.em.conflicting, find("LFD", "off")?.em.conflicting),
    mxmoe_3_25_em_loss: loss("weights", /^unquantized/, "MxMoE 3.25 bits"),
    mxmoe_2_25_em_loss: loss("weights", /^unquantized/, "MxMoE 2.25 bits"),
    kv_f16_em_loss: loss("KV cache", /^plain/, "f16"),
    kv_gear_4_em_loss: loss("KV cache", /^plain/, "GEAR 4-bit"),
    kv_gear_2_em_loss: loss("KV cache", /^plain/, "GEAR 2-bit"),
  };
}

function round(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

// --- output ---------------------------------------------------------------------------------------------

/** The targets of issue 8: metric, comparison, bound. */
export const TARGETS: readonly {
  metric: keyof EvalMetrics;
  op: ">=" | "<=";
  bound: number;
  /** For a loss: the row (stage, setting) it is measured from; with an EM of 0 there, the loss says nothing. */
  baseline?: [string, string];
}[] = [
  { metric: "fresh_em_with_retrieval", op: ">=", bound: 0.9 },
  { metric: "parametric_em_without_retrieval", op: ">=", bound: 0.8 },
  { metric: "gate_skip_rate", op: ">=", bound: 0.3 },
  { metric: "gate_em_loss", op: "<=", bound: 0.02, baseline: ["retrieval", "always"] },
  { metric: "compression_0_5_em_loss", op: "<=", bound: 0.03, baseline: ["compression", "off"] },
];

function fmt(x: number | null, digits = 3): string {
  return x === null ? "n/a" : x.toFixed(digits);
}

/** The results as a Markdown table (and the targets as a second one). */
export function formatTable(report: EvalReport): string {
  const head = [
    "stage",
    "setting",
    "EM parametric",
    "EM fresh",
    "EM conflicting",
    "EM all",
    "retrieved",
    "gold doc in prompt",
    "latency ms",
    "prompt tokens",
    "answer tokens",
    "questions",
    "note",
  ];
  const lines = [
    `| ${head.join(" | ")} |`,
    `| ${head.map((_, i) => (i < 2 || i === head.length - 1 ? "---" : "---:")).join(" | ")} |`,
  ];
  for (const r of report.rows) {
    if (r.status === "n/a") {
      lines.push(
        `| ${r.stage} | ${r.setting} | ${Array(head.length - 3).fill("n/a").join(" | ")} | ${
          escape(r.reason ?? "")
        } |`,
      );
      continue;
    }
    const cell = (x: number | null) => (x === null ? "–" : fmt(x));
    lines.push(
      `| ${
        [
          r.stage,
          r.setting,
          ...WORLD_SPLITS.map((s) => cell(r.em[s])),
          fmt(r.emAll),
          percent(r.retrievedShare),
          percent(r.goldShare),
          fmt(r.latencyMs, 0),
          fmt(r.promptTokens, 0),
          fmt(r.completionTokens, 1),
          String(r.n),
          escape(r.note ?? ""),
        ].join(" | ")
      } |`,
    );
  }
  lines.push("", "| target | value | goal | met |", "| --- | ---: | ---: | --- |");
  for (const t of TARGETS) {
    const v = report.metrics[t.metric];
    // A loss measured from a baseline of zero EM says nothing: there was nothing to lose.
    const base = t.baseline;
    const vacuous = base !== undefined &&
      (report.rows.find((r) => r.stage === base[0] && r.setting === base[1])?.emAll ?? 0) === 0;
    const met = v === null
      ? "n/a"
      : vacuous
      ? "n/a (baseline EM 0)"
      : (t.op === ">=" ? v >= t.bound : v <= t.bound)
      ? "yes"
      : "no";
    lines.push(`| ${t.metric} | ${fmt(v)} | ${t.op === ">=" ? "≥" : "≤"} ${t.bound} | ${met} |`);
  }
  return lines.join("\n") + "\n";
}

function percent(x: number | null): string {
  return x === null ? "–" : `${Math.round(x * 100)}%`;
}

function escape(s: string): string {
  return s.replace(/\|/g, "\\|").replace(/\n/g, " ");
}

/** docs/eval.md: what ran, the tables, and how to read them. */
export function formatDocument(report: EvalReport, command: string): string {
  const inside = isAbsolute(report.model) ? relative(ROOT, report.model) : undefined;
  const model = inside !== undefined && !inside.startsWith("..") && !isAbsolute(inside)
    ? inside || "."
    : report.model;
  return `# Evaluation

Generated by \`${command}\` on ${report.date.slice(0, 10)} (${report.date}).

- model: \`${model}\` on ${report.backend} (${report.dtype}); host: ${report.host}
- questions: held-out questions of the synthetic world (\`fixtures/world\`, see tools/world/README.md), ${report.limit} per
  split at most: ${report.questions.parametric} parametric, ${report.questions.fresh} fresh, ${report.questions.conflicting} conflicting

${formatTable(report)}
Answers with retrieval always (the first question of each split):

| split | question | gold | answer |
| --- | --- | --- | --- |
${
    report.samples.map((x) =>
      `| ${x.split} | ${escape(x.question)} | ${escape(x.gold)} | ${escape(JSON.stringify(x.answer))} |`
    ).join("\n")
  }

## How to read it

- **EM** is exact match after SQuAD normalization against the gold answer or an alias
  (\`tools/world/exact_match.ts\`); "–" marks a split the row does not ask. Answers are greedy and end at the
  first newline or ${ANSWER_SLACK_TOKENS} tokens after the longest accepted answer (a longer answer cannot match).
- **retrieval never / always / auto**: all three splits. Parametric facts are in the reader's training text,
  fresh facts only in the knowledge base, conflicting facts are in both with different values (the knowledge
  base's is the gold answer). \`auto\` asks the retrieval gate (\`gate.json\` beside the model, fitted by
  \`deno task gate-fit\`); "retrieved" is the share of questions for which the store was searched, "gold doc in
  prompt" the share whose supporting document went into the prompt (retrieval recall after the context budget
  and compression).
- **compression, KV cache**: retrieval always, on the fresh and conflicting questions (the ones only the
  retrieved passages answer); the "off" / "plain" row is the same questions of the "retrieval always" row. The
  KV rows load the model once per cache mode.
- **LFD**: retrieval always, on the conflicting questions, where the retrieved value must win over the trained
  one; it fuses the logits of the layer with the lowest internal knowledge score, at the default α
  (${DEFAULT_LFD_ALPHA}) and at the other values of the sweep (${
    LFD_ALPHA_SWEEP.join(", ")
  }): the default is the α
  with the best EM on a trained reader.
- **weights**: parametric questions closed-book, fresh and conflicting ones with retrieval; the MxMoE rows
  quantize the model (when its checkpoint is at most ${
    MAX_QUANTIZE_BYTES / 2 ** 20
  } MiB) into a temporary directory
  with \`quantizeModel\`, calibrated on the world's training text.
- **latency** is the pipeline's mean total per question (one question at a time, this machine); tokens are
  mean prompt and answer tokens in the model's tokenizer.
- Losses in \`deno task eval --json\` are the reference EM minus the setting's EM (negative: the setting did
  better); \`lfd_conflict_em_gain\` is EM(LFD on) − EM(LFD off) on conflicting facts.
`;
}

// --- command line -----------------------------------------------------------------------------------------

function usage(problem: string): number {
  console.error(`eval: ${problem}\n\n${USAGE}`);
  return 2;
}

/** A progress reporter on stderr: a line per row, and a live counter when stderr is a terminal. */
function stderrProgress(): (event: ProgressEvent) => void {
  const terminal = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  let label = "";
  let start = 0;
  let last = 0;
  return (e) => {
    if (e.kind === "row") {
      label = e.label;
      start = performance.now();
    } else if (e.kind === "question") {
      const now = performance.now();
      if (terminal && (now - last > 100 || e.done === e.total)) {
        last = now;
        Deno.stderr.writeSync(enc.encode(`\r\x1b[Keval: ${label}: ${e.done}/${e.total}`));
      }
    } else if (e.kind === "done") {
      const seconds = ((performance.now() - start) / 1000).toFixed(1);
      if (terminal) Deno.stderr.writeSync(enc.encode("\r\x1b[K"));
      console.error(`eval: ${e.label}: ${e.summary} (${seconds} s)`);
    } else console.error(`eval: ${e.message}`);
  };
}

/**
 * Formats the Markdown file `path` with `deno fmt` and the project's settings (aligned tables, wrapped prose),
 * so that a report written into docs/ passes `deno fmt --check`; only warns when that cannot run.
 */
async function formatMarkdown(path: string): Promise<void> {
  try {
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["fmt", "--quiet", path],
      cwd: ROOT,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).output();
    if (code !== 0) throw new Error(new TextDecoder().decode(stderr).trim());
  } catch (e) {
    console.error(`eval: could not format ${path} (${message(e)}); run deno fmt ${path}`);
  }
}

/** Runs the command line `args`; returns the exit status (0 done, 1 failed, 2 bad usage). */
export async function evalMain(args: string[]): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        limit: { type: "string" },
        stages: { type: "string" },
        model: { type: "string" },
        backend: { type: "string" },
        db: { type: "string" },
        world: { type: "string" },
        compressor: { type: "string" },
        "top-k": { type: "string" },
        "calib-tokens": { type: "string" },
        out: { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (e) {
    return usage(message(e));
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const int = (name: string, raw: string | undefined, fallback: number): number | string => {
    if (raw === undefined) return fallback;
    if (!/^\d+$/.test(raw) || Number(raw) < 1) return `--${name} must be a positive integer, got ${raw}`;
    return Number(raw);
  };
  const limit = int("limit", values.limit, DEFAULT_LIMIT);
  const topK = int("top-k", values["top-k"], 4);
  const calibTokens = int("calib-tokens", values["calib-tokens"], DEFAULT_CALIB_TOKENS);
  for (const v of [limit, topK, calibTokens]) if (typeof v === "string") return usage(v);
  const backend = values.backend ?? "auto";
  if (backend !== "auto" && backend !== "webgpu" && backend !== "cpu") {
    return usage(`--backend must be auto, webgpu or cpu, got ${backend}`);
  }
  const stages = values.stages === undefined
    ? undefined
    : values.stages.split(",").map((x) => x.trim()).filter((x) => x !== "");
  const unknown = stages?.find((x) => !(EVAL_STAGES as readonly string[]).includes(x));
  if (unknown !== undefined) return usage(`--stages: unknown stage ${unknown} (${EVAL_STAGES.join(", ")})`);
  const out = values.out ?? DEFAULT_OUT;
  try {
    const report = await runEval({
      model: values.model ?? DEFAULT_MODEL,
      backend,
      db: values.db,
      world: values.world ?? DEFAULT_WORLD,
      limit: limit as number,
      topK: topK as number,
      compressor: values.compressor ?? DEFAULT_COMPRESSOR,
      calibTokens: calibTokens as number,
      stages: stages as EvalStage[] | undefined,
      onProgress: stderrProgress(),
    });
    if (out !== "none") {
      await Deno.writeTextFile(out, formatDocument(report, ["deno task eval", ...args].join(" ")));
      await formatMarkdown(out);
      console.error(`eval: wrote ${out}`);
    }
    if (values.json) {
      const { metrics, ...rest } = report;
      console.log(JSON.stringify({ ...metrics, ...rest }));
    } else console.log(formatTable(report));
    return 0;
  } catch (e) {
    // Expected failures (a missing model, world or store) get one line; anything else keeps its stack.
    const expected = e instanceof Error &&
      ["ModelLoadError", "ModelSourceError", "DownloadError", "WorldFormatError", "StoreError", "GpuError"]
        .includes(e.name);
    console.error(
      `eval: cannot evaluate: ${expected ? e.message : e instanceof Error ? e.stack : String(e)}`,
    );
    return 1;
  }
}

if (import.meta.main) Deno.exit(await evalMain(Deno.args));
