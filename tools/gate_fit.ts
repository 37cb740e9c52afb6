/**
 * `deno task gate-fit`: fits the ExpertRAG retrieval gate of a model on labelled questions and writes gate.json
 * (by default beside the model, where `main.ts serve --db` looks for it).
 *
 * ```sh
 * deno task gate-fit --model fixtures/models/reader --questions fixtures/world/questions.jsonl --db data/kb
 * ```
 *
 * Each non-blank line of the questions file is a JSON object: `{question, needs_retrieval}` (the label given),
 * or `{question, answer, aliases?}` (the label computed: the model answers closed-book, greedy, through the
 * same chat-template prompt as `/ask` with retrieval off, and needs retrieval unless the answer is an exact
 * match, see tools/world/exact_match.ts). A line may also say `heldout: true` (the world's questions do): such
 * questions are not fitted on; the summary says how many of them the gate would answer without retrieval.
 * The features of each question are those the server reads: one prefill of the bare question, and, with `--db`,
 * the best full-text (BM25) score of the question in the store (0 without). Progress goes to stderr when it is
 * a terminal; the summary goes to stdout. Exit status: 0 done, 1 failed, 2 bad usage.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { loadModel } from "../engine/model.ts";
import { resolveModelSource } from "../engine/hub.ts";
import type { Backend, Model } from "../engine/types.ts";
import { GpuError, ModelLoadError } from "../engine/errors.ts";
import {
  fitGate,
  type GateExample,
  type GateFeatures,
  type GateModel,
  gateProbability,
  RetrievalGate,
} from "../retrieval/gate.ts";
import { type KnowledgeStore, openStore } from "../retrieval/store.ts";
import { StoreError } from "../retrieval/errors.ts";
import { createPipeline } from "../pipeline.ts";
import { exactMatch } from "./world/exact_match.ts";

const USAGE = `Usage: deno task gate-fit --model SRC --questions FILE.jsonl [options]

Fits the retrieval gate (L2-regularised logistic regression on one prefill's features) and writes gate.json.
Lines of FILE.jsonl: {"question", "needs_retrieval": bool} (label given) or {"question", "answer",
"aliases"?} (label computed: the model answers closed-book, greedy; it needs retrieval unless the answer is an
exact match). Lines with "heldout": true are not fitted on; the summary says how many the gate would skip.

Options:
  --model SRC            the model: a local directory or a Hugging Face repo id (required)
  --questions FILE       the labelled questions, JSONL (required)
  --db URI               the knowledge store: its best full-text score is a feature (default: none, score 0);
                         fit with the store the server will use
  --out PATH             where to write the gate (default: <model dir>/gate.json)
  --lambda L             L2 penalty on the weights of the standardised features (default 1)
  --threshold T          retrieve iff p > T, in (0, 1) (default 0.5)
  --max-miss R           instead of --threshold: the largest threshold at which at most a share R of the
                         training questions need retrieval but would skip it (e.g. 0.02, the EM it may cost)
  --scores FILE          also write every question's features and label (JSONL), to refit without the model
  --from-scores FILE     fit from such a file instead of running the model (--model still names the gate's
                         default location)
  --limit N              use only the first N questions of the file
  --sample N             use N questions evenly spaced over the file (a file grouped by topic, as the world's
                         questions are by entity kind, is then covered throughout)
  --max-tokens N         longest closed-book answer when labels are computed (default 32)
  --backend B            cpu, webgpu or auto (default auto)
  -h, --help             show this help`;

/** A questions file has a malformed line. */
export class GateQuestionError extends Error {
  /** The file at fault. */
  readonly file: string;
  /** The 1-based line at fault (0 when the whole file is at fault). */
  readonly line: number;
  /** Makes the error; the message gets the `file:line: ` prefix. */
  constructor(message: string, file: string, line: number, options?: { cause?: unknown }) {
    super(`${file}${line > 0 ? `:${line}` : ""}: ${message}`, { cause: options?.cause });
    this.name = "GateQuestionError";
    this.file = file;
    this.line = line;
  }
}

/** One question of a gate-fit file. */
export interface GateQuestion {
  /** The question text. */
  question: string;
  /** The given label, when the line has `needs_retrieval`. */
  needsRetrieval?: boolean;
  /** The gold answer, when the label is to be computed. */
  answer?: string;
  /** Other accepted answers. */
  aliases?: string[];
  /** Not fitted on; only scored. */
  heldout: boolean;
  /** The 1-based line of the file. */
  line: number;
}

/** Parses one line of a questions file; `file` and `line` name the place in errors. */
export function parseGateQuestion(text: string, file: string, line: number): GateQuestion {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (cause) {
    throw new GateQuestionError(`not valid JSON (${(cause as Error).message})`, file, line, { cause });
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new GateQuestionError("expected a JSON object", file, line);
  }
  const o = v as Record<string, unknown>;
  if (typeof o.question !== "string" || o.question.trim() === "") {
    throw new GateQuestionError('"question" must be a string with some non-space text', file, line);
  }
  const q: GateQuestion = { question: o.question, heldout: false, line };
  if (o.heldout !== undefined) {
    if (typeof o.heldout !== "boolean") {
      throw new GateQuestionError('"heldout" must be a boolean', file, line);
    }
    q.heldout = o.heldout;
  }
  if (o.needs_retrieval !== undefined) {
    if (typeof o.needs_retrieval !== "boolean") {
      throw new GateQuestionError('"needs_retrieval" must be a boolean', file, line);
    }
    q.needsRetrieval = o.needs_retrieval;
  }
  if (o.answer !== undefined) {
    if (typeof o.answer !== "string" || o.answer.trim() === "") {
      throw new GateQuestionError('"answer" must be a non-empty string', file, line);
    }
    q.answer = o.answer;
  }
  if (o.aliases !== undefined) {
    if (!Array.isArray(o.aliases) || !o.aliases.every((a) => typeof a === "string")) {
      throw new GateQuestionError('"aliases" must be an array of strings', file, line);
    }
    q.aliases = o.aliases;
  }
  if (q.needsRetrieval === undefined && q.answer === undefined) {
    throw new GateQuestionError(
      'a question needs a label: "needs_retrieval" (boolean) or "answer" (to compute it)',
      file,
      line,
    );
  }
  return q;
}

/**
 * The questions of `path`: the first `limit` ones when given, or `sample` of them evenly spaced over the file
 * (question i·n/sample of the n, for i < sample) when given.
 */
export async function readGateQuestions(
  path: string,
  limit?: number,
  sample?: number,
): Promise<GateQuestion[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (cause) {
    const why = cause instanceof Deno.errors.NotFound ? "the file does not exist" : String(cause);
    throw new GateQuestionError(`cannot read the questions: ${why}`, path, 0, { cause });
  }
  const out: GateQuestion[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length && (limit === undefined || out.length < limit); i++) {
    if (lines[i].trim() === "") continue;
    out.push(parseGateQuestion(lines[i], path, i + 1));
  }
  if (out.length === 0) throw new GateQuestionError("the file holds no questions", path, 0);
  if (sample !== undefined && sample < out.length) {
    return Array.from({ length: sample }, (_, i) => out[Math.floor((i * out.length) / sample)]);
  }
  return out;
}

/** A question with its features and label. */
export interface ScoredQuestion extends GateQuestion {
  /** φ(x). */
  features: GateFeatures;
  /** The label used (given, or computed from the closed-book answer). */
  label: boolean;
  /** The closed-book answer, when the label was computed. */
  closedBookAnswer?: string;
}

/** Options of {@linkcode scoreQuestions}. */
export interface ScoreOptions {
  /** The store whose best full-text score is the probe feature (none: 0). */
  store?: Pick<KnowledgeStore, "search">;
  /** Longest closed-book answer (default 32). */
  maxTokens?: number;
  /** Called after each question with (done, total). */
  onProgress?: (done: number, total: number) => void;
  /** The questions' file, named in errors (default "questions"). */
  source?: string;
}

/**
 * Reads the gate's features of every question (one prefill each, plus the store probe) and its label: the
 * given one, or whether the model's greedy closed-book answer (the `/ask` prompt with retrieval off) misses.
 */
export async function scoreQuestions(
  model: Model,
  questions: readonly GateQuestion[],
  options: ScoreOptions = {},
): Promise<ScoredQuestion[]> {
  const maxTokens = options.maxTokens ?? 32;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) {
    throw new RangeError(
      `Cannot score the questions: maxTokens must be a positive integer, got ${maxTokens}`,
    );
  }
  const needAnswers = questions.some((q) => q.needsRetrieval === undefined);
  const pipeline = needAnswers
    ? createPipeline({
      model,
      maxConcurrency: 1,
      defaults: { retrieval: "never", maxTokens, temperature: 0 },
    })
    : undefined;
  const gate = new RetrievalGate();
  const out: ScoredQuestion[] = [];
  try {
    for (const q of questions) {
      const best = options.store
        ? (await options.store.search(q.question, { k: 1, mode: "fts" }))[0]
        : undefined;
      let s: ScoredQuestion;
      try {
        // Mode "always" skips the fitted model but reads the features exactly as the server does.
        const { features } = await gate.decide(model, q.question, {
          mode: "always",
          probe: best?.score ?? 0,
          probeText: best?.text,
        });
        s = { ...q, features, label: q.needsRetrieval ?? true };
        if (q.needsRetrieval === undefined) {
          const r = await pipeline!.ask({
            question: q.question,
            retrieval: "never",
            maxTokens,
            temperature: 0,
          });
          s.closedBookAnswer = r.answer;
          s.label = !exactMatch(r.answer, q.answer!, q.aliases);
        }
      } catch (cause) {
        // A question the model cannot take (longer than its context, say) is the input's fault: name it.
        if (!(cause instanceof RangeError)) throw cause;
        throw new GateQuestionError(
          `cannot score the question: ${cause.message}`,
          options.source ?? "questions",
          q.line,
          { cause },
        );
      }
      out.push(s);
      options.onProgress?.(out.length, questions.length);
    }
  } finally {
    pipeline?.close();
  }
  return out;
}

/** How the fitted gate does on the held-out questions. */
export interface HeldoutReport {
  /** Held-out questions. */
  count: number;
  /** Those the gate would answer without retrieval (p ≤ threshold). */
  skip: number;
  /** Share whose decision matches the label. */
  accuracy: number;
  /** Those that need retrieval by their label. */
  positives: number;
  /** Those that need retrieval but would skip it. */
  missed: number;
}

/** Fits the gate on the questions that are not held out and scores it on those that are. */
export function fitScoredQuestions(
  scored: readonly ScoredQuestion[],
  options: { lambda?: number; threshold?: number; maxMiss?: number } = {},
): { gate: GateModel; heldout: HeldoutReport } {
  const train: GateExample[] = scored.filter((s) => !s.heldout).map((s) => ({
    features: s.features,
    needsRetrieval: s.label,
  }));
  const positives = train.filter((e) => e.needsRetrieval).length;
  if (train.length > 0 && (positives === 0 || positives === train.length)) {
    const why = positives === 0
      ? "none needs retrieval, so there is nothing to separate"
      : "every one needs retrieval, so there is nothing to separate (a model that answers nothing " +
        "closed-book needs no gate)";
    throw new RangeError(`Cannot fit the gate: of the ${train.length} training questions ${why}`);
  }
  let gate = fitGate(train, { lambda: options.lambda, threshold: options.threshold });
  if (options.maxMiss !== undefined) {
    gate = { ...gate, threshold: missThreshold(gate, train, options.maxMiss) };
  }
  const held = scored.filter((s) => s.heldout);
  let skip = 0, right = 0, pos = 0, missed = 0;
  for (const s of held) {
    const retrieve = gateProbability(gate, s.features) > gate.threshold;
    if (!retrieve) skip++;
    if (retrieve === s.label) right++;
    if (s.label) pos++;
    if (s.label && !retrieve) missed++;
  }
  return {
    gate,
    heldout: {
      count: held.length,
      skip,
      accuracy: held.length ? right / held.length : NaN,
      positives: pos,
      missed,
    },
  };
}

/**
 * The largest threshold T (retrieve iff p > T) at which at most a share `maxMiss` of `examples` need retrieval
 * but have p ≤ T: the gate skips as much as it can while costing at most that share of answers on them. Clamped
 * to [1e-6, 1 − 1e-6].
 */
export function missThreshold(gate: GateModel, examples: readonly GateExample[], maxMiss: number): number {
  if (!(maxMiss >= 0 && maxMiss < 1)) {
    throw new RangeError(`Cannot choose the threshold: maxMiss must be in [0, 1), got ${maxMiss}`);
  }
  const ps = examples.filter((e) => e.needsRetrieval).map((e) => gateProbability(gate, e.features))
    .sort((a, b) => a - b);
  const allowed = Math.floor(maxMiss * examples.length);
  // Misses are the positives with p <= T: T just below the (allowed + 1)-th smallest positive p.
  const t = allowed >= ps.length ? 1 : ps[allowed] * (1 - 1e-9);
  return Math.min(1 - 1e-6, Math.max(1e-6, t));
}

/** What the command line asks for. */
interface Command {
  model: string;
  questions: string;
  db: string | undefined;
  out: string | undefined;
  lambda: number;
  threshold: number;
  maxMiss: number | undefined;
  scores: string | undefined;
  fromScores: string | undefined;
  limit: number | undefined;
  sample: number | undefined;
  maxTokens: number;
  backend: Backend | "auto";
}

/** Parses `args`; returns a usage message instead when they are wrong. */
function parseCommand(args: string[]): Command | { usage: string } | { help: true } {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        model: { type: "string" },
        questions: { type: "string" },
        db: { type: "string" },
        out: { type: "string" },
        lambda: { type: "string" },
        threshold: { type: "string" },
        "max-miss": { type: "string" },
        scores: { type: "string" },
        "from-scores": { type: "string" },
        limit: { type: "string" },
        sample: { type: "string" },
        "max-tokens": { type: "string" },
        backend: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    return { usage: (e as Error).message };
  }
  if (values.help) return { help: true };
  if (!values.model) return { usage: "--model is required" };
  if (!values.questions && !values["from-scores"]) return { usage: "--questions is required" };
  const lambda = Number(values.lambda ?? "1");
  if (values.lambda?.trim() === "" || !(lambda >= 0) || !Number.isFinite(lambda)) {
    return { usage: `--lambda must be a number >= 0, got ${values.lambda}` };
  }
  const threshold = Number(values.threshold ?? "0.5");
  if (values.threshold?.trim() === "" || !(threshold > 0 && threshold < 1)) {
    return { usage: `--threshold must be a number in (0, 1), got ${values.threshold}` };
  }
  let maxMiss: number | undefined;
  if (values["max-miss"] !== undefined) {
    if (values.threshold !== undefined) return { usage: "--max-miss and --threshold exclude each other" };
    maxMiss = Number(values["max-miss"]);
    if (values["max-miss"].trim() === "" || !(maxMiss >= 0 && maxMiss < 1)) {
      return { usage: `--max-miss must be a number in [0, 1), got ${values["max-miss"]}` };
    }
  }
  const ints: Record<string, number | undefined> = {};
  for (const name of ["limit", "sample", "max-tokens"] as const) {
    const raw = values[name];
    if (raw === undefined) continue;
    if (!/^\d+$/.test(raw) || Number(raw) < 1) return { usage: `--${name} must be a positive integer` };
    ints[name] = Number(raw);
  }
  if (ints.limit !== undefined && ints.sample !== undefined) {
    return { usage: "--limit and --sample exclude each other" };
  }
  const backend = values.backend ?? "auto";
  if (backend !== "cpu" && backend !== "webgpu" && backend !== "auto") {
    return { usage: `--backend must be cpu, webgpu or auto, got ${backend}` };
  }
  return {
    model: values.model,
    questions: values.questions ?? values["from-scores"]!,
    db: values.db,
    out: values.out,
    lambda,
    threshold,
    maxMiss,
    scores: values.scores,
    fromScores: values["from-scores"],
    limit: ints.limit,
    sample: ints.sample,
    maxTokens: ints["max-tokens"] ?? 32,
    backend,
  };
}

/** Runs the gate-fit command line `args`; returns the exit status (0 done, 1 failed, 2 bad usage). */
export async function gateFit(args: string[]): Promise<number> {
  const cmd = parseCommand(args);
  if ("help" in cmd) {
    console.log(USAGE);
    return 0;
  }
  if ("usage" in cmd) {
    console.error(`gate-fit: ${cmd.usage}\n\n${USAGE}`);
    return 2;
  }
  const t0 = performance.now();
  let model: Model | undefined;
  let store: KnowledgeStore | undefined;
  try {
    const questions = cmd.fromScores ? [] : await readGateQuestions(cmd.questions, cmd.limit, cmd.sample);
    if (cmd.db !== undefined && !cmd.db.includes("://")) {
      // openStore would create an empty store; a typo must not silently give every question the score 0.
      try {
        await Deno.stat(cmd.db);
      } catch {
        throw new StoreError(`Cannot open the store ${cmd.db}: the directory does not exist`, cmd.db);
      }
    }
    if (cmd.db !== undefined) store = await openStore(cmd.db);
    const modelDir = await resolveModelSource(cmd.model);
    let scored: ScoredQuestion[];
    let computed = 0;
    if (cmd.fromScores) {
      scored = (await Deno.readTextFile(cmd.fromScores)).split("\n").filter((l) => l.trim() !== "")
        .map((l) => JSON.parse(l) as ScoredQuestion);
    } else {
      model = await loadModel(modelDir, { backend: cmd.backend });
      computed = questions.filter((q) => q.needsRetrieval === undefined).length;
      const progress = new FitProgress(computed > 0);
      scored = await scoreQuestions(model, questions, {
        store,
        maxTokens: cmd.maxTokens,
        source: cmd.questions,
        onProgress: (done, total) => progress.update(done, total),
      });
      progress.finish();
    }
    if (cmd.scores) {
      await Deno.writeTextFile(
        cmd.scores,
        scored.map((q) => JSON.stringify(q)).join("\n") + "\n",
      );
    }
    const { gate, heldout } = fitScoredQuestions(scored, {
      lambda: cmd.lambda,
      threshold: cmd.maxMiss === undefined ? cmd.threshold : undefined,
      maxMiss: cmd.maxMiss,
    });
    const out = cmd.out ?? join(modelDir, "gate.json");
    await Deno.mkdir(dirname(out), { recursive: true });
    await Deno.writeTextFile(out, JSON.stringify(gate, null, 2) + "\n");
    const seconds = (performance.now() - t0) / 1000;
    const f = gate.fit;
    const pct = (a: number, b: number) => (b > 0 ? `${(100 * a / b).toFixed(1)}%` : "-");
    const lines = [
      cmd.fromScores
        ? `gate-fit: ${scored.length} scored questions from ${cmd.fromScores}`
        : `gate-fit: ${questions.length} questions from ${cmd.questions} (${model!.backend}, ` +
          `probe ${store ? `full-text score in ${cmd.db}` : "none (0)"})`,
    ];
    if (computed > 0) {
      const answered = scored.filter((s) => s.closedBookAnswer !== undefined);
      const right = answered.filter((s) => !s.label).length;
      lines.push(`  labels computed for ${computed}: closed-book exact match ${right}/${computed}`);
    }
    lines.push(
      `  fit: ${f.examples} examples, ${f.positives} need retrieval (${pct(f.positives, f.examples)}), ` +
        `${gate.features.length} features, lambda ${f.lambda}, threshold ${
          Number(gate.threshold.toPrecision(4))
        }` +
        (cmd.maxMiss !== undefined ? ` (at most ${cmd.maxMiss} of the training questions missed)` : ""),
      `  train accuracy ${f.accuracy.toFixed(3)}, log-loss ${f.logLoss.toFixed(4)} (a constant gate: ` +
        `accuracy ${(Math.max(f.positives, f.examples - f.positives) / f.examples).toFixed(3)}, ` +
        `log-loss ${baseLogLoss(f.positives, f.examples).toFixed(4)})`,
      heldout.count > 0
        ? `  held-out: ${heldout.count} questions, would skip retrieval for ${heldout.skip} ` +
          `(${pct(heldout.skip, heldout.count)}), accuracy ${heldout.accuracy.toFixed(3)} ` +
          `(${heldout.positives} need retrieval, ${heldout.missed} of them skipped)`
        : "  held-out: none in the file",
      `  wrote ${out} in ${seconds.toFixed(1)} s`,
    );
    console.log(lines.join("\n"));
    return 0;
  } catch (error) {
    if (
      error instanceof GateQuestionError || error instanceof StoreError || error instanceof ModelLoadError ||
      error instanceof GpuError || error instanceof RangeError || error instanceof Deno.errors.NotFound
    ) {
      console.error(`gate-fit: ${(error as Error).message}`);
      return 1;
    }
    throw error;
  } finally {
    await store?.close();
    await model?.dispose();
  }
}

/** Mean log-loss of the constant prediction p = positives / n. */
function baseLogLoss(positives: number, n: number): number {
  const p = positives / n;
  return p <= 0 || p >= 1 ? 0 : -(p * Math.log(p) + (1 - p) * Math.log(1 - p));
}

/** A one-line progress report on stderr, drawn only when stderr is a terminal. */
class FitProgress {
  #start = performance.now();
  #lastDraw = -Infinity;
  #terminal = Deno.stderr.isTerminal();
  #encoder = new TextEncoder();
  #answering: boolean;
  #drawn = false;

  constructor(answering: boolean) {
    this.#answering = answering;
  }

  update(done: number, total: number): void {
    if (!this.#terminal) return;
    const now = performance.now();
    if (done < total && now - this.#lastDraw < 100) return;
    this.#lastDraw = now;
    const seconds = (now - this.#start) / 1000;
    const rate = seconds > 0 ? done / seconds : 0;
    const line =
      `gate-fit  questions ${done}/${total}${this.#answering ? " (prefill + closed-book answer)" : ""}` +
      `  ${rate.toFixed(1)} q/s`;
    Deno.stderr.writeSync(this.#encoder.encode(`\r\x1b[K${line}`));
    this.#drawn = true;
  }

  finish(): void {
    if (this.#drawn) Deno.stderr.writeSync(this.#encoder.encode("\n"));
  }
}

if (import.meta.main) Deno.exit(await gateFit(Deno.args));
