/**
 * The retrieval gate (ExpertRAG-style; the formulation is the project's reconstruction, see docs/retrieval.md).
 *
 * A latent decision r ∈ {0, 1} — consult the knowledge base or answer from the model's parameters — has the prior
 * π(x) = P(r = 1 | x) = σ(w·φ(x) + b), with φ(x) read from one prefill of the bare question: the entropy of the
 * next-token distribution, the router's statistics per MoE layer (entropy of the expert distribution and the
 * top-1 margin, averaged over the question's positions), the best score of a cheap full-text probe of the
 * store, and the probe's support: the probability mass the model's next token puts on tokens of the probe's best
 * passage (high when the model is about to say what the store says, low when it would answer something the
 * store does not hold, or something else than the store). Retrieval happens iff π(x) > θ. Against always retrieving, the expected saving per query is
 * (1 − π̄)·(C_retrieve + C_LM(context)), π̄ the rate at which the gate opens.
 *
 * `fitGate` fits w and b by L2-regularised logistic regression (Newton's method) on standardised features of
 * labelled questions; the fitted gate is stored as `gate.json` beside the model.
 *
 * @module
 */

import type { Model, PromptInspection } from "../engine/types.ts";
import { logSoftmax } from "../engine/lfd.ts";

/** How the gate is used for one request. */
export type GateMode = "auto" | "always" | "never";

/** The features of one question, by name. */
export type GateFeatures = Record<string, number>;

/** A fitted gate, as stored in gate.json. */
export interface GateModel {
  /** Format version (1). */
  version: 1;
  /** Feature names, in the order of `w`. */
  features: string[];
  /** Means of the features on the training questions. */
  mean: number[];
  /** Standard deviations (1 where a feature was constant). */
  std: number[];
  /** Weights of the standardised features. */
  w: number[];
  /** Bias. */
  b: number;
  /** Retrieve iff p > threshold. */
  threshold: number;
  /** How it was fitted. */
  fit: { examples: number; positives: number; lambda: number; accuracy: number; logLoss: number };
}

/** A gate's decision on one question. */
export interface GateDecision {
  /** π(x), the probability that retrieval is needed (NaN when no gate is fitted). */
  p: number;
  /** Whether to retrieve. */
  retrieve: boolean;
  /** Why: the mode, or the comparison of p with the threshold. */
  reason: string;
  /** The features φ(x). */
  features: GateFeatures;
}

/** Entropy (nats) of the softmax of `logits`. */
export function entropyOfLogits(logits: ArrayLike<number>): number {
  const lp = logSoftmax(logits);
  let h = 0;
  for (let i = 0; i < lp.length; i++) h -= Math.exp(lp[i]) * lp[i];
  return h;
}

/**
 * The probe's support: Σ softmax(lastLogits)[t] over the distinct token ids t of the probe's best passage
 * (`passageIds`, the passage tokenized by the model's tokenizer without special tokens); 0 without a passage.
 */
export function probeSupport(lastLogits: ArrayLike<number>, passageIds: readonly number[]): number {
  if (passageIds.length === 0) return 0;
  const lp = logSoftmax(lastLogits);
  let mass = 0;
  for (const t of new Set(passageIds)) if (t >= 0 && t < lp.length) mass += Math.exp(lp[t]);
  return Math.min(1, mass);
}

/**
 * φ(x) from an inspection of the question's prefill, the probe's best full-text score and the token ids of the
 * probe's best passage (empty without one).
 */
export function gateFeatures(
  inspection: PromptInspection,
  probeScore: number,
  probeIds: readonly number[] = [],
): GateFeatures {
  const f: GateFeatures = { next_entropy: entropyOfLogits(inspection.lastLogits) };
  const L = inspection.routerEntropy.length;
  let e = 0, m = 0, n = 0;
  for (let l = 0; l < L; l++) {
    if (Number.isNaN(inspection.routerEntropy[l])) continue; // a dense layer has no router
    f[`router_entropy_${l}`] = inspection.routerEntropy[l];
    f[`router_margin_${l}`] = inspection.routerMargin[l];
    e += inspection.routerEntropy[l];
    m += inspection.routerMargin[l];
    n++;
  }
  f.router_entropy_mean = n > 0 ? e / n : 0;
  f.router_margin_mean = n > 0 ? m / n : 0;
  f.probe_score = Number.isFinite(probeScore) ? probeScore : 0;
  f.probe_support = probeSupport(inspection.lastLogits, probeIds);
  return f;
}

const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));
/** log(1 + e^z) without overflow. */
const softplus = (z: number) => (z > 0 ? z + Math.log1p(Math.exp(-z)) : Math.log1p(Math.exp(z)));

/** π(x) of `gate` for features `f` (a feature the gate does not know is an error). */
export function gateProbability(gate: GateModel, f: GateFeatures): number {
  let z = gate.b;
  gate.features.forEach((name, i) => {
    const v = f[name];
    if (v === undefined) throw new RangeError(`Cannot apply the gate: feature ${name} is missing`);
    z += gate.w[i] * (v - gate.mean[i]) / gate.std[i];
  });
  return sigmoid(z);
}

/** One labelled question for fitting: its features and whether it needs retrieval. */
export interface GateExample {
  /** φ(x). */
  features: GateFeatures;
  /** True when the model cannot answer it without retrieval. */
  needsRetrieval: boolean;
}

/** Solves the symmetric positive-definite system A x = y (n × n, row-major) by Cholesky. */
function solveSpd(a: Float64Array, y: Float64Array, n: number): Float64Array {
  const l = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = a[i * n + j];
      for (let k = 0; k < j; k++) s -= l[i * n + k] * l[j * n + k];
      if (i === j) l[i * n + i] = Math.sqrt(Math.max(s, 1e-12));
      else l[i * n + j] = s / l[j * n + j];
    }
  }
  const z = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = y[i];
    for (let k = 0; k < i; k++) s -= l[i * n + k] * z[k];
    z[i] = s / l[i * n + i];
  }
  const x = new Float64Array(n);
  for (let i = n - 1; i >= 0; i--) {
    let s = z[i];
    for (let k = i + 1; k < n; k++) s -= l[k * n + i] * x[k];
    x[i] = s / l[i * n + i];
  }
  return x;
}

/**
 * Fits a gate on `examples` by L2-regularised logistic regression (λ on the weights, not the bias) with Newton's
 * method on standardised features.
 */
export function fitGate(
  examples: GateExample[],
  options: { lambda?: number; threshold?: number; features?: string[] } = {},
): GateModel {
  if (examples.length < 2) {
    throw new RangeError(`Cannot fit the gate: need at least 2 examples, got ${examples.length}`);
  }
  const pos = examples.filter((e) => e.needsRetrieval).length;
  if (pos === 0 || pos === examples.length) {
    throw new RangeError(
      "Cannot fit the gate: the examples need both labels (some needing retrieval, some not)",
    );
  }
  const lambda = options.lambda ?? 1;
  const threshold = options.threshold ?? 0.5;
  if (!(lambda >= 0)) throw new RangeError(`Cannot fit the gate: lambda must be >= 0, got ${lambda}`);
  if (!(threshold > 0 && threshold < 1)) {
    throw new RangeError(`Cannot fit the gate: threshold must be in (0, 1), got ${threshold}`);
  }
  const names = options.features ??
    Object.keys(examples[0].features).filter((k) => examples.every((e) => Number.isFinite(e.features[k])));
  const d = names.length, n = examples.length;
  // X: [n, d] row-major, float64, the standardised features.
  const X = new Float64Array(n * d);
  const mean = new Array(d).fill(0), std = new Array(d).fill(0);
  examples.forEach((e, i) =>
    names.forEach((k, j) => {
      const v = e.features[k];
      if (!Number.isFinite(v)) {
        throw new RangeError(
          `Cannot fit the gate: feature ${k} of example ${i} is ${v}, not a finite number`,
        );
      }
      X[i * d + j] = v;
    })
  );
  for (let j = 0; j < d; j++) {
    let sum = 0, lo = Infinity, hi = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = X[i * d + j];
      sum += v;
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    mean[j] = sum / n;
    let ss = 0;
    for (let i = 0; i < n; i++) ss += (X[i * d + j] - mean[j]) ** 2;
    std[j] = Math.sqrt(ss / n);
    // A constant feature carries nothing: its column is exactly 0 (rounding in the mean would otherwise leave
    // ~1e-16 noise that an unpenalised fit could blow up into a large weight).
    const constant = lo === hi || !(std[j] > 1e-12 * Math.max(1, Math.abs(mean[j])));
    if (constant) std[j] = 1;
    for (let i = 0; i < n; i++) X[i * d + j] = constant ? 0 : (X[i * d + j] - mean[j]) / std[j];
  }
  const y = examples.map((e) => (e.needsRetrieval ? 1 : 0));
  // Parameters θ = [w (d), b]; Newton steps on the penalised negative log-likelihood
  // J(θ) = Σ_i [log(1 + e^{z_i}) − y_i z_i] + (λ/2)‖w‖², z_i = w·x_i + b, halved until J decreases.
  const D = d + 1;
  const theta = new Float64Array(D);
  theta[d] = Math.log(pos / (n - pos));
  const objective = (t: Float64Array): number => {
    let J = 0;
    for (let i = 0; i < n; i++) {
      let z = t[d];
      for (let j = 0; j < d; j++) z += t[j] * X[i * d + j];
      J += softplus(z) - y[i] * z;
    }
    for (let j = 0; j < d; j++) J += 0.5 * lambda * t[j] * t[j];
    return J;
  };
  let J = objective(theta);
  for (let iter = 0; iter < 100; iter++) {
    const g = new Float64Array(D), hess = new Float64Array(D * D);
    for (let i = 0; i < n; i++) {
      let z = theta[d];
      for (let j = 0; j < d; j++) z += theta[j] * X[i * d + j];
      const p = sigmoid(z), r = p - y[i], s = p * (1 - p);
      for (let j = 0; j < D; j++) {
        const xj = j < d ? X[i * d + j] : 1;
        g[j] += r * xj;
        for (let k = 0; k <= j; k++) hess[j * D + k] += s * xj * (k < d ? X[i * d + k] : 1);
      }
    }
    for (let j = 0; j < D; j++) for (let k = 0; k < j; k++) hess[k * D + j] = hess[j * D + k];
    for (let j = 0; j < d; j++) {
      g[j] += lambda * theta[j];
      hess[j * D + j] += lambda;
    }
    for (let j = 0; j < D; j++) hess[j * D + j] += 1e-9;
    const step = solveSpd(hess, g, D);
    // Near the optimum the decrease is below the rounding of J: accept steps that do not increase J beyond it.
    const slack = 1e-12 * (1 + Math.abs(J));
    let scale = 1, next = theta, Jnext = J;
    for (let half = 0; half < 40; half++, scale /= 2) {
      next = theta.map((v, j) => v - scale * step[j]);
      Jnext = objective(next);
      if (Jnext <= J + slack) break;
    }
    if (!(Jnext <= J + slack)) break; // no descent along the Newton direction: at the optimum
    let moved = 0;
    for (let j = 0; j < D; j++) moved = Math.max(moved, Math.abs(next[j] - theta[j]));
    theta.set(next);
    J = Jnext;
    if (moved < 1e-10) break;
  }
  let correct = 0, logLoss = 0;
  for (let i = 0; i < n; i++) {
    let z = theta[d];
    for (let j = 0; j < d; j++) z += theta[j] * X[i * d + j];
    const p = sigmoid(z);
    if ((p > threshold ? 1 : 0) === y[i]) correct++;
    logLoss -= y[i] ? Math.log(Math.max(p, 1e-15)) : Math.log(Math.max(1 - p, 1e-15));
  }
  return {
    version: 1,
    features: names,
    mean,
    std,
    w: Array.from(theta.subarray(0, d)),
    b: theta[d],
    threshold,
    fit: { examples: n, positives: pos, lambda, accuracy: correct / n, logLoss: logLoss / n },
  };
}

/**
 * Reads a gate.json. A missing file throws `Deno.errors.NotFound` (callers fall back to "no gate"); a file that
 * is not JSON or not a gate of version 1 throws a TypeError naming the file and what is wrong.
 */
export async function readGate(path: string): Promise<GateModel> {
  const text = await Deno.readTextFile(path);
  let g: unknown;
  try {
    g = JSON.parse(text);
  } catch (cause) {
    throw new TypeError(`Cannot read the gate ${path}: not valid JSON (${(cause as Error).message})`, {
      cause,
    });
  }
  const problem = gateProblem(g);
  if (problem) throw new TypeError(`Cannot read the gate ${path}: ${problem}`);
  return g as GateModel;
}

/** What makes `g` not a gate of version 1, or undefined when it is one. */
function gateProblem(g: unknown): string | undefined {
  if (typeof g !== "object" || g === null || Array.isArray(g)) return "expected a JSON object";
  const o = g as Record<string, unknown>;
  if (o.version !== 1) return `not a gate.json of version 1 (version ${JSON.stringify(o.version)})`;
  const f = o.features;
  if (!Array.isArray(f) || !f.every((x) => typeof x === "string") || new Set(f).size !== f.length) {
    return '"features" must be an array of distinct names';
  }
  const finite = (v: unknown) => typeof v === "number" && Number.isFinite(v);
  for (const key of ["mean", "std", "w"]) {
    const v = o[key];
    if (!Array.isArray(v) || v.length !== f.length || !v.every(finite)) {
      return `"${key}" must hold ${f.length} finite numbers, one per feature`;
    }
  }
  if (!(o.std as number[]).every((v) => v > 0)) return '"std" must be positive';
  if (!finite(o.b)) return '"b" must be a finite number';
  const t = o.threshold;
  if (typeof t !== "number" || !(t > 0 && t < 1)) return '"threshold" must be a number in (0, 1)';
  return undefined;
}

/** The retrieval gate of a model: decides per question whether to consult the store. */
export class RetrievalGate {
  /** The fitted gate, or undefined (then `auto` always retrieves). */
  readonly model: GateModel | undefined;

  /** A gate from a fitted model (or none). */
  constructor(model?: GateModel) {
    this.model = model;
  }

  /**
   * Decides for `question`: one prefill of the bare question (chat template when the model has one) gives the
   * features; `probe` is the best full-text score of the store for the question (0 without a store) and
   * `probeText` the text of that best passage.
   */
  async decide(
    model: Model,
    question: string,
    options: { mode?: GateMode; probe?: number; probeText?: string } = {},
  ): Promise<GateDecision> {
    const mode = options.mode ?? "auto";
    if (mode !== "auto" && mode !== "always" && mode !== "never") {
      throw new TypeError(`Cannot decide on retrieval: mode must be auto, always or never, got ${mode}`);
    }
    const prompt = model.tokenizer.hasChatTemplate
      ? model.tokenizer.applyChatTemplate([{ role: "user", content: question }])
      : question;
    // The template writes the special tokens (BOS included) itself, as in the pipeline's prompts.
    const ids = model.tokenizer.encode(prompt, { addSpecialTokens: !model.tokenizer.hasChatTemplate });
    const probeIds = options.probeText
      ? model.tokenizer.encode(options.probeText, { addSpecialTokens: false })
      : [];
    const features = gateFeatures(await model.inspect(ids), options.probe ?? 0, probeIds);
    if (mode !== "auto") {
      return { p: NaN, retrieve: mode === "always", reason: `mode ${mode}`, features };
    }
    if (!this.model) return { p: NaN, retrieve: true, reason: "no fitted gate: retrieving", features };
    const p = gateProbability(this.model, features);
    const retrieve = p > this.model.threshold;
    return { p, retrieve, reason: `p ${retrieve ? ">" : "<="} threshold ${this.model.threshold}`, features };
  }
}
