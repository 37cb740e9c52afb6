/**
 * MxMoE bit allocation for one MoE layer: choose a scheme for every block (an expert's gate+up, which share
 * one choice, or its down projection) to minimise `r·log L + (1 − r)·log T` under an average-bit budget, where
 * L = Σ Δ(block, scheme) is the layer-output error of quantizing each block alone and T = Σ cost(block, scheme)
 * the measured kernel time at the block's expected token count.
 *
 * The objective is not linear; as MxMoE's own notes suggest for open solvers, we sweep λ in min L/L₀ + λ·T/T₀
 * (an exact MILP per λ, solved with HiGHS) and keep the λ whose solution scores best on the true objective.
 * When HiGHS fails, a greedy solver takes over (start from the most accurate schemes; repeatedly downgrade the
 * block whose downgrade costs the least objective per bit saved until the budget holds).
 *
 * With `maxPaths`, the blocks that one grouped kernel runs (`Block.kernel`) may use at most that many code paths
 * (`Candidate.path`: schemes the kernel reads the same way); each path a kernel holds and runs slows it (see
 * kernels/qmatvec.ts codePathKey). The MILP has an indicator per (kernel, path); the greedy solver keeps the
 * paths its unconstrained solution uses most, with the smallest-bits path among them. {@linkcode allocateModel}
 * applies the cap across all the layers of a model.
 *
 * @module
 */

import highsImport from "highs";
import type { Highs } from "highs";

// The package is CommonJS; its default export is the loader at run time, which its typings do not convey.
const loadHighs = highsImport as unknown as () => Promise<Highs>;

/** One candidate scheme of a block. */
export interface Candidate {
  /** Scheme name ("w4g128", "f16", …). */
  scheme: string;
  /** Stored bits per weight (scales and minimums included). */
  bits: number;
  /** Δ: layer-output error when only this block uses this scheme (≥ 0). */
  loss: number;
  /** Measured kernel cost of this block in this scheme (≥ 0). */
  cost: number;
  /** The code path its kernel reads this scheme by (default: the scheme). */
  path?: string;
}

/** A block to allocate. */
export interface Block {
  /** Unique id, e.g. "e3.gate_up". */
  id: string;
  /** Weights in the block. */
  size: number;
  /** Its candidates (at least one fits the budget when all blocks take their smallest). */
  candidates: Candidate[];
  /** The grouped kernel that runs it (e.g. "gate_up"); `maxPaths` applies per kernel. Absent: its own. */
  kernel?: string;
}

/** The chosen schemes and what they achieve. */
export interface Allocation {
  /** Scheme per block id. */
  choice: Map<string, string>;
  /** Σ size·bits / Σ size. */
  averageBits: number;
  /** Σ loss of the choice. */
  loss: number;
  /** Σ cost of the choice. */
  cost: number;
  /** Which solver produced it. */
  solver: "highs" | "greedy";
  /** Per grouped kernel (Block.kernel), the code paths the choice uses, sorted. */
  paths: Map<string, string[]>;
}

/** Options of {@linkcode allocateLayer}. */
export interface AllocateOptions {
  /** Weight of accuracy against speed, in [0, 1] (default 0.75). */
  r?: number;
  /** Solver: "highs" (default, greedy on failure) or "greedy". */
  solver?: "highs" | "greedy";
  /** Most code paths per grouped kernel (default: no limit). */
  maxPaths?: number;
}

let highsPromise: Promise<Highs> | undefined;

function summarize(blocks: Block[], pick: number[], solver: "highs" | "greedy"): Allocation {
  let bits = 0, size = 0, loss = 0, cost = 0;
  const choice = new Map<string, string>();
  blocks.forEach((b, i) => {
    const c = b.candidates[pick[i]];
    choice.set(b.id, c.scheme);
    bits += c.bits * b.size;
    size += b.size;
    loss += c.loss;
    cost += c.cost;
  });
  return { choice, averageBits: bits / size, loss, cost, solver, paths: pathsUsed(blocks, pick) };
}

/** The code path of candidate `c`. */
function pathOf(c: Candidate): string {
  return c.path ?? c.scheme;
}

/** Per kernel, the sorted code paths that `pick` uses. */
function pathsUsed(blocks: Block[], pick: number[]): Map<string, string[]> {
  const used = new Map<string, Set<string>>();
  blocks.forEach((b, i) => {
    if (b.kernel === undefined) return;
    if (!used.has(b.kernel)) used.set(b.kernel, new Set());
    used.get(b.kernel)!.add(pathOf(b.candidates[pick[i]]));
  });
  return new Map([...used].map(([k, v]) => [k, [...v].sort()]));
}

function score(a: { loss: number; cost: number }, r: number): number {
  return r * Math.log(Math.max(a.loss, 1e-12)) + (1 - r) * Math.log(Math.max(a.cost, 1e-12));
}

function check(blocks: Block[], budget: number): void {
  if (blocks.length === 0) throw new RangeError("Cannot allocate bits: the layer has no blocks");
  let minBits = 0, size = 0;
  for (const b of blocks) {
    if (b.candidates.length === 0) {
      throw new RangeError(`Cannot allocate bits: block ${b.id} has no candidates`);
    }
    minBits += b.size * Math.min(...b.candidates.map((c) => c.bits));
    size += b.size;
  }
  if (minBits > budget * size * (1 + 1e-9)) {
    throw new RangeError(
      `Cannot allocate bits: even the smallest schemes need ${
        (minBits / size).toFixed(3)
      } bits per weight, ` +
        `above the budget of ${budget}`,
    );
  }
}

/** One layer's allocation problem: its blocks, the budget, the objective's scales, the cap on code paths. */
interface Problem {
  /** The layer's blocks. */
  blocks: Block[];
  /** Average bits per weight. */
  budget: number;
  /** Loss scale L₀ of the objective. */
  l0: number;
  /** Cost scale T₀ of the objective. */
  t0: number;
  /** Most code paths per kernel (undefined: no cap). */
  maxPaths?: number;
}

/**
 * Greedy allocation for the weighted objective L/L₀ + λ·T/T₀ under the budget, over the candidates that `allowed`
 * admits (default: all; every block keeps at least one).
 */
function greedy(
  { blocks, budget, l0, t0 }: Problem,
  lambda: number,
  allowed: (b: Block, c: Candidate) => boolean = () => true,
): number[] {
  const obj = (c: Candidate) => c.loss / l0 + lambda * c.cost / t0;
  const pick = blocks.map((b) => {
    let best = -1;
    b.candidates.forEach((c, i) => {
      if (!allowed(b, c)) return;
      const bc = b.candidates[best];
      if (best < 0 || obj(c) < obj(bc) || (obj(c) === obj(bc) && c.bits < bc.bits)) best = i;
    });
    if (best < 0) throw new RangeError(`Cannot allocate bits: no candidate of block ${b.id} is allowed`);
    return best;
  });
  const total = blocks.reduce((a, b) => a + b.size, 0);
  let used = blocks.reduce((a, b, i) => a + b.size * b.candidates[pick[i]].bits, 0);
  while (used > budget * total * (1 + 1e-12)) {
    let bestRatio = Infinity, bestBlock = -1, bestCand = -1;
    blocks.forEach((b, i) => {
      const cur = b.candidates[pick[i]];
      b.candidates.forEach((c, j) => {
        const saved = (cur.bits - c.bits) * b.size;
        if (saved <= 0 || !allowed(b, c)) return;
        const ratio = Math.max(0, obj(c) - obj(cur)) / saved;
        if (ratio < bestRatio) [bestRatio, bestBlock, bestCand] = [ratio, i, j];
      });
    });
    if (bestBlock < 0) break;
    used -=
      (blocks[bestBlock].candidates[pick[bestBlock]].bits - blocks[bestBlock].candidates[bestCand].bits) *
      blocks[bestBlock].size;
    pick[bestBlock] = bestCand;
  }
  return pick;
}

/**
 * Greedy under `maxPaths`: per kernel, the paths the unconstrained greedy solution uses most (by weights), the
 * path of the kernel's smallest-bits candidate among them so that the budget stays reachable, then greedy again
 * over those paths' candidates.
 */
function greedyPaths(prob: Problem, lambda: number, maxPaths: number): number[] {
  const { blocks } = prob;
  const free = greedy(prob, lambda);
  const keep = new Map<string, Set<string>>();
  for (const kernel of new Set(blocks.flatMap((b) => b.kernel === undefined ? [] : [b.kernel]))) {
    const weight = new Map<string, number>();
    let smallest: Candidate | undefined;
    blocks.forEach((b, i) => {
      if (b.kernel !== kernel) return;
      const p = pathOf(b.candidates[free[i]]);
      weight.set(p, (weight.get(p) ?? 0) + b.size);
      for (const c of b.candidates) if (!smallest || c.bits < smallest.bits) smallest = c;
    });
    const ranked = [...weight].sort((a, b) => b[1] - a[1]).map(([p]) => p);
    const low = pathOf(smallest!);
    const chosen = ranked.slice(0, maxPaths);
    if (!chosen.includes(low)) chosen.splice(maxPaths - 1, 1, low);
    keep.set(kernel, new Set(chosen));
  }
  return greedy(prob, lambda, (b, c) => b.kernel === undefined || keep.get(b.kernel)!.has(pathOf(c)));
}

/** The MILP of min Σ (loss/L₀ + λ·cost/T₀)·x under the budget (and `maxPaths`), in CPLEX LP format. */
function lpText({ blocks, budget, l0, t0, maxPaths }: Problem, lambda: number): string {
  const terms: string[] = [];
  const rows: string[] = [];
  const binaries: string[] = [];
  let budgetRow = "";
  const total = blocks.reduce((a, b) => a + b.size, 0);
  blocks.forEach((b, i) => {
    const vars = b.candidates.map((_, j) => `x_${i}_${j}`);
    binaries.push(...vars);
    rows.push(` one_${i}: ${vars.join(" + ")} = 1`);
    b.candidates.forEach((c, j) => {
      const coef = c.loss / l0 + lambda * c.cost / t0;
      terms.push(`${coef.toPrecision(12)} x_${i}_${j}`);
      budgetRow += ` + ${(c.bits * b.size / total).toPrecision(12)} x_${i}_${j}`;
    });
  });
  rows.push(` budget: ${budgetRow.slice(3)} <= ${budget.toPrecision(12)}`);
  if (maxPaths !== undefined) {
    // y_k_p = 1 when kernel k runs path p: every candidate on that path implies it; at most maxPaths per kernel.
    const kernels = [...new Set(blocks.flatMap((b) => b.kernel === undefined ? [] : [b.kernel]))];
    kernels.forEach((kernel, ki) => {
      const paths = new Map<string, number>();
      blocks.forEach((b, i) => {
        if (b.kernel !== kernel) return;
        b.candidates.forEach((c, j) => {
          const p = pathOf(c);
          if (!paths.has(p)) paths.set(p, paths.size);
          rows.push(` use_${i}_${j}: x_${i}_${j} - y_${ki}_${paths.get(p)} <= 0`);
        });
      });
      const ys = [...paths.values()].map((pi) => `y_${ki}_${pi}`);
      binaries.push(...ys);
      rows.push(` paths_${ki}: ${ys.join(" + ")} <= ${maxPaths}`);
    });
  }
  return `Minimize\n obj: ${terms.join(" + ")}\nSubject To\n${rows.join("\n")}\nBinary\n ${
    binaries.join(" ")
  }\nEnd\n`;
}

async function highsSolve(prob: Problem, lambda: number): Promise<number[]> {
  const { blocks } = prob;
  highsPromise ??= loadHighs();
  const highs = await highsPromise;
  const result = highs.solve(lpText(prob, lambda), {
    output_flag: false,
    mip_rel_gap: 0,
  });
  if (result.Status !== "Optimal") throw new Error(`HiGHS ended with status ${result.Status}`);
  const cols = result.Columns as Record<string, { Primal: number }>;
  return blocks.map((b, i) => {
    let best = 0;
    b.candidates.forEach((_, j) => {
      if (cols[`x_${i}_${j}`].Primal > cols[`x_${i}_${best}`].Primal) best = j;
    });
    return best;
  });
}

/** λ values swept between accuracy-only and speed-dominated objectives. */
const LAMBDAS = [0, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100];

/**
 * Allocates schemes to `blocks` under `budget` average bits per weight.
 *
 * @example
 * ```ts
 * const a = await allocateLayer([{ id: "e0.down", size: 64, candidates: [
 *   { scheme: "w4g64", bits: 4.5, loss: 0.1, cost: 1 }, { scheme: "w2g64", bits: 2.5, loss: 0.9, cost: 0.6 },
 * ] }], 3.5);
 * a.choice.get("e0.down"); // "w2g64": w4 would exceed 3.5 bits
 * ```
 */
export async function allocateLayer(
  blocks: Block[],
  budget: number,
  options: AllocateOptions = {},
): Promise<Allocation> {
  const r = options.r ?? 0.75;
  if (!(r >= 0 && r <= 1)) throw new RangeError(`Cannot allocate bits: r must be in [0, 1], got ${r}`);
  const maxPaths = options.maxPaths;
  if (maxPaths !== undefined && !(Number.isInteger(maxPaths) && maxPaths >= 1)) {
    throw new RangeError(
      `Cannot allocate bits: maxPaths must be a whole number of at least 1, got ${maxPaths}`,
    );
  }
  check(blocks, budget);
  const l0 = Math.max(1e-12, blocks.reduce((a, b) => a + Math.max(...b.candidates.map((c) => c.loss)), 0));
  const t0 = Math.max(1e-12, blocks.reduce((a, b) => a + Math.max(...b.candidates.map((c) => c.cost)), 0));
  const problem: Problem = { blocks, budget, l0, t0, maxPaths };
  const solveGreedy = (lambda: number) =>
    maxPaths === undefined ? greedy(problem, lambda) : greedyPaths(problem, lambda, maxPaths);
  const lambdas = r === 1 ? [0] : r === 0 ? [1e6] : LAMBDAS;
  let solver: "highs" | "greedy" = options.solver ?? "highs";
  let best: Allocation | undefined;
  for (const lambda of lambdas) {
    let pick: number[];
    if (solver === "highs") {
      try {
        pick = await highsSolve(problem, lambda);
      } catch {
        solver = "greedy";
        pick = solveGreedy(lambda);
      }
    } else {
      pick = solveGreedy(lambda);
    }
    const a = summarize(blocks, pick, solver);
    if (!best || score(a, r) < score(best, r)) best = a;
  }
  return best!;
}

/** The code paths of kernel `kernel` that a layer's allocation uses. */
function kernelPaths(layers: Allocation[], kernel: string): Set<string> {
  return new Set(layers.flatMap((a) => a.paths.get(kernel) ?? []));
}

/** The subsets of `items` with exactly `n` members (n ≤ items.length). */
function subsets<T>(items: T[], n: number): T[][] {
  if (n === 0) return [[]];
  if (items.length < n) return [];
  const [first, ...rest] = items;
  return [...subsets(rest, n - 1).map((s) => [first, ...s]), ...subsets(rest, n)];
}

/**
 * Allocates every MoE layer's blocks (`layers[l]`), each layer under `budget`, with `maxPaths` counted per
 * grouped kernel across all the layers: the model then holds at most that many code paths per projection (on an
 * H200 at OLMoE's shape the reader's 3.25-bit allocation so decoded at 868–875 tok/s, capped per layer at
 * 857–861, uniform w4g128 at 847–865; it was less accurate, docs/benchmarks.md). Each layer is first allocated
 * alone with the cap; where the layers together use more paths than that, every choice of `maxPaths` paths per
 * kernel among those they use and the kernel's smallest-bits path is tried (each layer solved again over its
 * candidates on those paths), and the choice whose layers score best in sum (Σ r·log L + (1 − r)·log T, each
 * layer's objective) wins. Without `maxPaths`: {@linkcode allocateLayer} per layer.
 */
export async function allocateModel(
  layers: Block[][],
  budget: number,
  options: AllocateOptions = {},
): Promise<Allocation[]> {
  const first: Allocation[] = [];
  for (const blocks of layers) first.push(await allocateLayer(blocks, budget, options));
  const maxPaths = options.maxPaths;
  if (maxPaths === undefined) return first;
  const kernels = [...new Set(layers.flat().flatMap((b) => b.kernel === undefined ? [] : [b.kernel]))];
  const used = new Map(kernels.map((k) => [k, kernelPaths(first, k)]));
  if ([...used.values()].every((p) => p.size <= maxPaths)) return first;
  // The pool of each kernel's paths: those the layers use, and its smallest-bits candidate's (with which every
  // layer can meet the budget).
  for (const k of kernels) {
    let smallest: Candidate | undefined;
    for (const b of layers.flat()) {
      if (b.kernel !== k) continue;
      for (const c of b.candidates) if (!smallest || c.bits < smallest.bits) smallest = c;
    }
    used.get(k)!.add(pathOf(smallest!));
  }
  // Every kernel's choices of paths (all in its pool where they fit the cap), combined across kernels.
  let combos: Map<string, Set<string>>[] = [new Map()];
  for (const k of kernels) {
    const paths = [...used.get(k)!].sort();
    const picks = subsets(paths, Math.min(maxPaths, paths.length));
    combos = combos.flatMap((m) => picks.map((p) => new Map([...m, [k, new Set(p)]])));
  }
  const r = options.r ?? 0.75;
  let best: { score: number; layers: Allocation[] } | undefined;
  for (const keep of combos) {
    const restricted = layers.map((blocks) =>
      blocks.map((b) =>
        b.kernel === undefined
          ? b
          : { ...b, candidates: b.candidates.filter((c) => keep.get(b.kernel!)!.has(pathOf(c))) }
      )
    );
    // A choice that leaves a block without candidates, or a layer over its budget, is not one.
    if (restricted.some((blocks) => blocks.some((b) => b.candidates.length === 0))) continue;
    const out: Allocation[] = [];
    let total = 0, ok = true;
    for (const blocks of restricted) {
      try {
        const a = await allocateLayer(blocks, budget, { ...options, maxPaths: undefined });
        out.push(a);
        total += score(a, r);
      } catch (e) {
        if (!(e instanceof RangeError)) throw e;
        ok = false;
        break;
      }
    }
    if (ok && (!best || total < best.score)) best = { score: total, layers: out };
  }
  if (!best) {
    throw new RangeError(
      `Cannot allocate bits: no ${maxPaths} code paths per kernel that every layer uses fit the budget of ${budget}`,
    );
  }
  return best.layers;
}
