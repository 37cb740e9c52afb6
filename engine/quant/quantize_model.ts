/**
 * `quantizeModel`: a checkpoint in, a quantized checkpoint out (loadable by `loadModel`), either uniform
 * (`w4g128` for every expert block) or MxMoE-allocated under an average-bit budget. See docs/quantization.md.
 *
 * Steps: calibration on the CPU decoder (expert frequencies, XᵀX per linear block, routed inputs); per MoE layer
 * the sensitivity Δ(block, scheme) = ‖ΔY‖_F of the layer output when only that block is quantized with that
 * scheme (an expert's gate and up are one block: they share one choice); the kernel cost table measured on the
 * local adapter; the allocation; then each block quantized (GPTQ with its Hessian, or RTN) and written.
 *
 * @module
 */

import { dirname, join, resolve } from "node:path";
import { Checkpoint } from "../checkpoint.ts";
import type { ModelConfig } from "../config.ts";
import { loadModel } from "../model.ts";
import { CpuDecoder, loadCpuWeights } from "../cpu_decoder.ts";
import { encodeSafetensors, type TensorData } from "../safetensors.ts";
import { loadTokenizer } from "../tokenizer.ts";
import { planWeights, readWeightF32, type WeightSpec } from "../weights.ts";
import { allocateLayer, allocateModel, type Allocation, type Block } from "./allocate.ts";
import { calibrate, type ExpertCalibration, expertHidden } from "./calibrate.ts";
import {
  COST_KERNELS,
  costAdapter,
  type CostShape,
  type CostTable,
  costTableCovers,
  lookupCost,
  measureCosts,
} from "./cost.ts";
import { dequantize, PACKED_FORMAT, type PackedMatrix } from "./pack.ts";
import { codePathKey } from "../../kernels/qmatvec.ts";
import { quantizeGptq, quantizeRtn } from "./quantize.ts";
import { compareModels } from "./quality.ts";
import { parseScheme, type QuantScheme, schemeName, storedBitsPerWeight } from "./scheme.ts";

/** The cost table at `path`, or undefined when there is none or it is not one. */
async function readCostTable(path: string): Promise<CostTable | undefined> {
  try {
    const t = JSON.parse(await Deno.readTextFile(path));
    if (t && typeof t.adapter === "string" && t.entries && typeof t.entries === "object") {
      return t as CostTable;
    }
  } catch {
    // Missing or unreadable: measure anew.
  }
  return undefined;
}

/** Options of {@linkcode quantizeModel}. */
export interface QuantizeModelOptions {
  /** MxMoE: the average-bit budget over all expert weights (scales and minimums included). */
  bits?: number;
  /** Uniform: one scheme for every expert block (e.g. "w4g128"). Exactly one of bits / uniform. */
  uniform?: string;
  /** Calibration text (required for GPTQ and MxMoE). */
  calibText?: string;
  /** Most calibration tokens (default 4096), in sequences of at most 512. */
  calibTokens?: number;
  /** Accuracy weight of the allocation objective in [0, 1] (default 0.75). */
  r?: number;
  /** "gptq" (default) or "rtn". */
  method?: "gptq" | "rtn";
  /** Scheme of attention projections (default "w8g128"). */
  attention?: string;
  /** Scheme of routers (default "w8g128"). */
  router?: string;
  /** Candidate schemes of expert blocks (default f16, w8g128, w4g128, w3g128, w2g128, w4g64, w3g64, w2g64). */
  candidates?: string[];
  /** Tokens per batch the cost model assumes (an expert's expected rows = frequency × batch; default 32). */
  batch?: number;
  /**
   * MxMoE only: most code paths (kernels/qmatvec.ts codePathKey; schemes of one bit width share one) among a
   * layer's routed experts in each projection (default {@linkcode DEFAULT_MAX_PATHS}; 0: no limit). Each path a
   * projection's grouped kernel runs slows it, so fewer decode faster.
   */
  maxPaths?: number;
  /**
   * MxMoE only: where `maxPaths` counts: in each layer (default "layer") or across all the MoE layers ("model":
   * one set of paths for the whole model, {@linkcode allocateModel}). "model" decodes a little faster and costs
   * accuracy: on the default reader at 3.25 bits, held-out KL 1.14e-1 against 9.62e-2 per layer (groups of 64
   * only: 1.41e-1 against 9.83e-2, decoding 871 against 858 tok/s at OLMoE's shape on an H200;
   * docs/benchmarks.md).
   */
  maxPathsScope?: "layer" | "model";
  /** A cost table to reuse (else measured, and written beside the output as cost_table.json). */
  costTable?: CostTable;
  /**
   * MxMoE only: also quantize with the best uniform scheme that fits the budget, compare both with the unquantized
   * model on the calibration text (mean KL of next-token distributions) and keep the better one (default true).
   */
  uniformCheck?: boolean;
  /** Largest safetensors shard written, in bytes (default 2 GiB; larger outputs are sharded with an index). */
  shardBytes?: number;
  /** Progress messages. */
  onProgress?: (message: string) => void;
}

/** What a quantization produced. */
export interface QuantizationReport {
  /** Average stored bits per expert weight. */
  averageBits: number;
  /**
   * Per layer: per expert [gate_up scheme, down scheme] (+ shared), solver, and (MxMoE) the code paths the routed
   * experts' gate_up and down kernels run.
   */
  layers: {
    layer: number;
    experts: [string, string][];
    shared?: [string, string];
    solver: string;
    paths?: { gate_up: string[]; down: string[] };
  }[];
  /** Calibration tokens. */
  calibrationTokens: number;
  /** MxMoE: the comparison with uniform at the same budget, and which was kept. */
  uniformCheck?: { uniform: string; mxmoeKl: number; uniformKl: number; kept: "mxmoe" | "uniform" };
}

/**
 * Code paths an MxMoE allocation may use per projection by default: on an H200 at OLMoE's shape, 3.25-bit scheme
 * sets of two paths per projection decode as fast as uniform w4g128 or faster (840–864 against 828–853 tok/s),
 * a reader allocation with three or four paths in most down projections there at 92–96 % (docs/benchmarks.md,
 * eleventh session); the reader's own two-path allocation there as fast as uniform w4g128 once every layer's
 * expert kernel is one program (857–861 against 848–865 tok/s, twelfth session).
 */
export const DEFAULT_MAX_PATHS = 2;
const DEFAULT_CANDIDATES = ["f16", "w8g128", "w4g128", "w3g128", "w2g128", "w4g64", "w3g64", "w2g64"];

/**
 * The scheme as applied to rows of `cols` values: groups never straddle rows, so a group larger than the row
 * (or not dividing it) shrinks to the largest multiple of 8 that divides the row; f16 when there is none.
 */
export function effectiveScheme(s: QuantScheme, cols: number): QuantScheme {
  if (s.kind === "f16" || cols % s.group === 0) return s;
  for (let g = Math.min(s.group, cols); g >= 8; g--) {
    if (g % 8 === 0 && cols % g === 0) return { ...s, group: g };
  }
  return { kind: "f16" };
}

function u8(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Quantizes `w` [rows, cols] in scheme `s` (f16 rounds), with GPTQ when a usable Hessian is given. */
function quantizeBlock(
  w: Float32Array,
  rows: number,
  cols: number,
  s: QuantScheme,
  h: Float64Array | undefined,
): PackedMatrix | Float32Array {
  if (s.kind === "f16") return new Float32Array(new Float16Array(w));
  if (h) {
    let trace = 0;
    for (let i = 0; i < cols; i++) trace += h[i * cols + i];
    if (trace > 0) return quantizeGptq(w, rows, cols, h, s.bits, s.group);
  }
  return quantizeRtn(w, rows, cols, s.bits, s.group);
}

function toDense(q: PackedMatrix | Float32Array): Float32Array {
  return q instanceof Float32Array ? q : dequantize(q);
}

/** ‖ΔY‖_F of one expert's weighted output when its gate/up (or down) is replaced. */
function expertDelta(
  ex: ExpertCalibration,
  H: number,
  I: number,
  gu: Float32Array,
  down: Float32Array,
  guQ: Float32Array | undefined,
  downQ: Float32Array | undefined,
): number {
  if (ex.tokens === 0) return 0;
  const h = expertHidden(ex.inputs, ex.tokens, gu, 0, H, I);
  const hq = guQ ? expertHidden(ex.inputs, ex.tokens, guQ, 0, H, I) : h;
  const d = downQ ?? down;
  let sum = 0;
  for (let t = 0; t < ex.tokens; t++) {
    const w = ex.weights[t];
    for (let c = 0; c < H; c++) {
      let a = 0, b = 0;
      for (let i = 0; i < I; i++) {
        a += down[c * I + i] * h[t * I + i];
        b += d[c * I + i] * hq[t * I + i];
      }
      const diff = w * (b - a);
      sum += diff * diff;
    }
  }
  return Math.sqrt(sum);
}

/** The weight files of a checkpoint directory: safetensors files and their index. */
const WEIGHT_FILE = /^model.*\.safetensors(\.index\.json)?$/;

/** Removes the weight files a previous quantization left in `dir`, so that old shards cannot mix in. */
async function removeWeights(dir: string): Promise<void> {
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && WEIGHT_FILE.test(e.name)) await Deno.remove(join(dir, e.name));
  }
}

/** Float32 weights of one layer (the keys of engine/weights.ts), read from the checkpoint. */
async function readLayer(
  ckpt: Checkpoint,
  specs: Map<string, WeightSpec>,
): Promise<Map<string, Float32Array>> {
  const m = new Map<string, Float32Array>();
  for (const [key, spec] of specs) m.set(key, await readWeightF32(ckpt, spec));
  return m;
}

/**
 * Writes the tensors put into `pending` as safetensors shards: `flushOver(n)` writes them out once they exceed n
 * bytes; `finish` writes the rest, naming a single file model.safetensors, or shards model-0000k.safetensors with
 * model.safetensors.index.json.
 */
class ShardWriter {
  readonly #dir: string;
  readonly #pending: Record<string, TensorData>;
  readonly #written = new Map<string, string>();
  #files = 0;

  constructor(dir: string, pending: Record<string, TensorData>) {
    this.#dir = dir;
    this.#pending = pending;
  }

  /** Whether `name` was written or is pending. */
  has(name: string): boolean {
    return this.#written.has(name) || name in this.#pending;
  }

  #bytes(): number {
    let n = 0;
    for (const t of Object.values(this.#pending)) n += t.data.byteLength;
    return n;
  }

  async #write(file: string): Promise<void> {
    await Deno.writeFile(
      join(this.#dir, file),
      encodeSafetensors(this.#pending, { format: "pt", quantized_by: "edgemix" }),
    );
    for (const name of Object.keys(this.#pending)) {
      this.#written.set(name, file);
      delete this.#pending[name];
    }
  }

  async flushOver(limit: number): Promise<void> {
    if (this.#bytes() > limit) {
      await this.#write(`model-${String(++this.#files).padStart(5, "0")}.safetensors`);
    }
  }

  async finish(): Promise<void> {
    if (this.#files === 0) {
      await this.#write("model.safetensors");
      return;
    }
    if (Object.keys(this.#pending).length > 0) {
      await this.#write(`model-${String(++this.#files).padStart(5, "0")}.safetensors`);
    }
    const weightMap = Object.fromEntries(this.#written);
    await Deno.writeTextFile(
      join(this.#dir, "model.safetensors.index.json"),
      JSON.stringify({ metadata: { format: "pt", quantized_by: "edgemix" }, weight_map: weightMap }, null, 1),
    );
  }
}

/** One quantization of `source` into `out` with the options as given (no uniform check). */
async function quantizeOnce(
  source: string,
  out: string,
  options: QuantizeModelOptions,
): Promise<QuantizationReport> {
  if ((options.bits === undefined) === (options.uniform === undefined)) {
    throw new TypeError("Cannot quantize: give exactly one of bits (MxMoE budget) and uniform (one scheme)");
  }
  if (options.bits !== undefined && !(options.bits > 1 && options.bits <= 16)) {
    throw new RangeError(`Cannot quantize: the bit budget must be in (1, 16], got ${options.bits}`);
  }
  if (options.maxPaths !== undefined) {
    if (options.bits === undefined) {
      throw new TypeError(
        "Cannot quantize: maxPaths limits an MxMoE allocation (bits), not a uniform scheme",
      );
    }
    if (!(Number.isInteger(options.maxPaths) && options.maxPaths >= 0)) {
      throw new RangeError(
        `Cannot quantize: maxPaths must be a whole number (0: no limit), got ${options.maxPaths}`,
      );
    }
  }
  const scope = options.maxPathsScope ?? "layer";
  if (scope !== "layer" && scope !== "model") {
    throw new TypeError(`Cannot quantize: maxPathsScope must be "layer" or "model", got ${scope}`);
  }
  if (options.maxPathsScope !== undefined && options.bits === undefined) {
    throw new TypeError(
      "Cannot quantize: maxPathsScope applies to an MxMoE allocation (bits), not a uniform scheme",
    );
  }
  // The limit on an MxMoE allocation's code paths per projection (undefined: none).
  const pathLimit = options.bits === undefined || options.maxPaths === 0
    ? undefined
    : options.maxPaths ?? DEFAULT_MAX_PATHS;
  const method = options.method ?? "gptq";
  if (method !== "gptq" && method !== "rtn") throw new TypeError(`Cannot quantize: unknown method ${method}`);
  const needCalib = method === "gptq" || options.bits !== undefined;
  if (needCalib && !options.calibText) {
    throw new TypeError("Cannot quantize: GPTQ and MxMoE need calibration text (calibText)");
  }
  const say = options.onProgress ?? (() => {});
  const ckpt = await Checkpoint.open(source);
  try {
    const c = ckpt.config;
    const H = c.hiddenSize;
    const plan = planWeights(ckpt);
    // The whole model in f32 only where calibration runs it; otherwise one layer at a time (uniform RTN of a
    // large checkpoint needs the memory of one layer, not of the model).
    const weights = needCalib ? await loadCpuWeights(ckpt) : undefined;
    const contextLength = Math.min(c.maxPositionEmbeddings, 512);

    // 1. Calibration.
    let calib: ReturnType<typeof calibrate> | undefined;
    if (needCalib) {
      const tok = await loadTokenizer(source);
      const ids = tok.encode(options.calibText!, { addSpecialTokens: false }).slice(
        0,
        options.calibTokens ?? 4096,
      );
      if (ids.length < 8) {
        throw new RangeError(`Cannot calibrate: the calibration text has only ${ids.length} tokens`);
      }
      const seqs: number[][] = [];
      for (let i = 0; i < ids.length; i += contextLength) seqs.push(ids.slice(i, i + contextLength));
      say(`calibrating on ${ids.length} tokens in ${seqs.length} sequences`);
      const decoder = new CpuDecoder(c, weights!, contextLength);
      calib = calibrate(decoder, weights!, seqs, (d, n) => say(`calibration ${d}/${n}`));
    }

    // 2. Expert block schemes per layer.
    const candidates = (options.candidates ?? DEFAULT_CANDIDATES).map(parseScheme);
    const report: QuantizationReport = { averageBits: 0, layers: [], calibrationTokens: calib?.tokens ?? 0 };
    const expertChoice: { gu: QuantScheme; down: QuantScheme }[][] = [];
    const sharedChoice: ({ gu: QuantScheme; down: QuantScheme } | undefined)[] = [];
    let cost = options.costTable;
    if (options.bits !== undefined && !cost) {
      const I = c.expertIntermediateSize, S = c.sharedExpertIntermediateSize;
      // Gate/up blocks are timed in the grouped gate/up kernel, down blocks in the down kernel.
      const shapes = new Map<string, CostShape>();
      const blocks: [number, number, "gate_up" | "down"][] = [[2 * I, H, "gate_up"], [H, I, "down"]];
      if (S > 0) blocks.push([2 * S, H, "gate_up"], [H, S, "down"]);
      for (const [rows, cols, kernel] of blocks) {
        const schemes = [...new Set(candidates.map((s) => schemeName(effectiveScheme(s, cols))))];
        shapes.set(`${rows}x${cols}`, { rows, cols, schemes, kernel });
      }
      const wanted = [...shapes.values()];
      const adapter = await costAdapter();
      const cached = await readCostTable(join(source, "cost_table.json"));
      const sameKernels = cached?.source === "bytes-model" || cached?.kernels === COST_KERNELS;
      if (cached && cached.adapter === adapter && sameKernels && costTableCovers(cached, wanted)) {
        say(`reusing the kernel cost table cached beside the model (${adapter})`);
        cost = cached;
      } else {
        say(`measuring kernel costs on ${adapter === "none" ? "no adapter (bytes model)" : adapter}`);
        cost = await measureCosts(wanted, (d, n) => say(`cost table ${d}/${n}`));
        try {
          await Deno.writeTextFile(join(source, "cost_table.json"), JSON.stringify(cost, null, 1));
        } catch {
          // The source may be read-only (a hub cache); the table is also written beside the output.
        }
      }
    }
    // MxMoE: each MoE layer's blocks with their candidates' sensitivities and costs.
    const pending: { layer: number; blocks: Block[]; experts: number; shared: boolean }[] = [];
    for (let l = 0; l < c.numLayers; l++) {
      const spec = c.layers[l];
      if (!spec.moe) {
        expertChoice.push([]);
        sharedChoice.push(undefined);
        continue;
      }
      const I = c.expertIntermediateSize, E = c.numExperts;
      if (options.uniform !== undefined) {
        const s = parseScheme(options.uniform);
        const pick = { gu: effectiveScheme(s, H), down: effectiveScheme(s, I) };
        expertChoice.push(Array.from({ length: E }, () => pick));
        const S = c.sharedExpertIntermediateSize;
        sharedChoice.push(S > 0 ? { gu: effectiveScheme(s, H), down: effectiveScheme(s, S) } : undefined);
        report.layers.push({
          layer: l,
          experts: Array.from({ length: E }, () => [schemeName(pick.gu), schemeName(pick.down)]),
          solver: "uniform",
        });
        continue;
      }
      // MxMoE: sensitivities and costs of every candidate for every block.
      const w = weights!.layers[l];
      const gu = w.get("gate_up")!, dn = w.get("down")!;
      say(`layer ${l}: measuring sensitivities`);
      const L = calib!.layers[l];
      const blocks: Block[] = [];
      const addExpert = (
        id: string,
        ex: ExpertCalibration,
        guW: Float32Array,
        dnW: Float32Array,
        width: number,
      ) => {
        const freq = ex.tokens / calib!.tokens;
        const rowsExpected = Math.ceil(freq * (options.batch ?? 32));
        for (const part of ["gate_up", "down"] as const) {
          const rows = part === "gate_up" ? 2 * width : H, cols = part === "gate_up" ? H : width;
          const seen = new Set<string>();
          const cands = [];
          for (const s0 of candidates) {
            const s = effectiveScheme(s0, cols);
            const name = schemeName(s);
            if (seen.has(name)) continue;
            seen.add(name);
            const src = part === "gate_up" ? guW : dnW;
            const q = toDense(quantizeBlock(src, rows, cols, s, part === "gate_up" ? ex.hGateUp : ex.hDown));
            const loss = part === "gate_up"
              ? expertDelta(ex, H, width, guW, dnW, q, undefined)
              : expertDelta(ex, H, width, guW, dnW, undefined, q);
            cands.push({
              scheme: name,
              bits: storedBitsPerWeight(s, cols),
              loss,
              cost: lookupCost(cost!, name, rows, cols, rowsExpected),
              path: codePathKey(s.kind === "f16" ? { bits: 16, group: cols } : s, cols),
            });
          }
          // The routed experts of a projection run in one grouped kernel; a shared expert in its own.
          const kernel = id === "shared" ? undefined : part;
          blocks.push({ id: `${id}.${part}`, size: rows * cols, candidates: cands, kernel });
        }
      };
      for (let e = 0; e < E; e++) {
        addExpert(
          `e${e}`,
          L.experts[e],
          gu.subarray(e * 2 * I * H, (e + 1) * 2 * I * H),
          dn.subarray(e * H * I, (e + 1) * H * I),
          I,
        );
      }
      if (L.shared) {
        addExpert(
          "shared",
          L.shared,
          w.get("shared_gate_up")!,
          w.get("shared_down")!,
          c.sharedExpertIntermediateSize,
        );
      }
      // Allocated once every layer's blocks are known (the cap on code paths may count across layers).
      pending.push({ layer: l, blocks, experts: E, shared: L.shared !== undefined });
      expertChoice.push([]);
      sharedChoice.push(undefined);
    }
    if (pending.length > 0) {
      say(`allocating ${pending.length} layers`);
      const allocOptions = { r: options.r, maxPaths: pathLimit };
      const allocs: Allocation[] = [];
      if (scope === "model") {
        allocs.push(...await allocateModel(pending.map((p) => p.blocks), options.bits!, allocOptions));
      } else {
        for (const p of pending) allocs.push(await allocateLayer(p.blocks, options.bits!, allocOptions));
      }
      pending.forEach(({ layer: l, experts: E, shared }, i) => {
        const alloc = allocs[i];
        const get = (id: string) => parseScheme(alloc.choice.get(id)!);
        expertChoice[l] = Array.from(
          { length: E },
          (_, e) => ({ gu: get(`e${e}.gate_up`), down: get(`e${e}.down`) }),
        );
        sharedChoice[l] = shared ? { gu: get("shared.gate_up"), down: get("shared.down") } : undefined;
        report.layers.push({
          layer: l,
          experts: Array.from(
            { length: E },
            (_, e) => [alloc.choice.get(`e${e}.gate_up`)!, alloc.choice.get(`e${e}.down`)!],
          ),
          shared: shared
            ? [alloc.choice.get("shared.gate_up")!, alloc.choice.get("shared.down")!]
            : undefined,
          solver: alloc.solver,
          paths: { gate_up: alloc.paths.get("gate_up") ?? [], down: alloc.paths.get("down") ?? [] },
        });
        say(`layer ${l}: ${alloc.averageBits.toFixed(3)} bits (${alloc.solver})`);
      });
    }

    // 3. Quantize and write, in safetensors shards of about shardBytes (one model.safetensors when it fits).
    await Deno.mkdir(out, { recursive: true });
    await removeWeights(out);
    const shardBytes = options.shardBytes ?? 2 ** 31;
    const tensors: Record<string, TensorData> = {};
    const shards = new ShardWriter(out, tensors);
    const quantTensors: Record<string, { scheme: string; shape: [number, number] }> = {};
    const used = new Set<string>();
    const writeDense = (name: string, values: Float32Array, shape: number[], dtype: "F16" | "F32") => {
      tensors[name] = {
        dtype,
        shape,
        data: u8(dtype === "F16" ? new Uint16Array(new Float16Array(values).buffer) : values),
      };
    };
    const writeBlock = (
      name: string,
      q: PackedMatrix | Float32Array,
      rows: number,
      cols: number,
      s: QuantScheme,
    ) => {
      if (q instanceof Float32Array) {
        writeDense(name, q, [rows, cols], "F16");
        return;
      }
      const base = name.replace(/\.weight$/, "");
      tensors[`${base}.qweight`] = {
        dtype: "U32",
        shape: [rows, q.qweight.length / rows],
        data: u8(q.qweight),
      };
      tensors[`${base}.scales`] = { dtype: "F16", shape: [rows, cols / q.group], data: u8(q.scales) };
      tensors[`${base}.zeros`] = { dtype: "F16", shape: [rows, cols / q.group], data: u8(q.mins) };
      quantTensors[name] = { scheme: schemeName(s), shape: [rows, cols] };
    };
    let expertBits = 0, expertWeights = 0;
    const attention = parseScheme(options.attention ?? "w8g128");
    const routerScheme = parseScheme(options.router ?? "w8g128");
    /** Quantizes each part (a whole checkpoint tensor) of a logical weight in one scheme. */
    const quantParts = (
      spec: WeightSpec,
      values: Float32Array,
      s0: QuantScheme,
      h: Float64Array | undefined,
    ) => {
      const cols = spec.shape[spec.shape.length - 1];
      const s = effectiveScheme(s0, cols);
      for (const part of spec.parts) {
        const rows = part.elements / cols;
        const q = quantizeBlock(
          values.subarray(part.offset, part.offset + part.elements),
          rows,
          cols,
          s,
          method === "gptq" ? h : undefined,
        );
        writeBlock(part.tensor, q, rows, cols, s);
        used.add(part.tensor);
      }
    };
    for (let l = 0; l < c.numLayers; l++) {
      say(`layer ${l}: quantizing`);
      const specs = plan.layers[l];
      const w = weights?.layers[l] ?? await readLayer(ckpt, specs);
      const L = calib?.layers[l];
      quantParts(specs.get("qkv")!, w.get("qkv")!, attention, L?.hQkv);
      quantParts(specs.get("o")!, w.get("o")!, attention, L?.hO);
      if (!c.layers[l].moe) {
        quantParts(specs.get("gate_up")!, w.get("gate_up")!, attention, L?.experts[0].hGateUp);
        quantParts(specs.get("down")!, w.get("down")!, attention, L?.experts[0].hDown);
        continue;
      }
      quantParts(specs.get("router")!, w.get("router")!, routerScheme, undefined);
      const I = c.expertIntermediateSize;
      const gu = w.get("gate_up")!, dn = w.get("down")!;
      const guSpec = specs.get("gate_up")!, dnSpec = specs.get("down")!;
      const perExpert = guSpec.parts.length === 2 * c.numExperts;
      const prefix = guSpec.parts[0].tensor.replace(
        /(input_linear\.weight|experts\.gate_up_proj|experts\.0\..*)$/,
        "",
      );
      for (let e = 0; e < c.numExperts; e++) {
        const ch = expertChoice[l][e];
        const ex = L?.experts[e];
        const useH = method === "gptq" && ex && ex.tokens > 0;
        const [gName, uName] = perExpert
          ? [guSpec.parts[2 * e].tensor, guSpec.parts[2 * e + 1].tensor]
          : [`${prefix}experts.${e}.gate_proj.weight`, `${prefix}experts.${e}.up_proj.weight`];
        const dName = perExpert ? dnSpec.parts[e].tensor : `${prefix}experts.${e}.down_proj.weight`;
        const guQ = quantizeBlock(
          gu.subarray(e * 2 * I * H, (e + 1) * 2 * I * H),
          2 * I,
          H,
          ch.gu,
          useH ? ex.hGateUp : undefined,
        );
        const dnQ = quantizeBlock(
          dn.subarray(e * H * I, (e + 1) * H * I),
          H,
          I,
          ch.down,
          useH ? ex.hDown : undefined,
        );
        // Gate and up share one scheme: split the packed [2I, H] block into its two halves.
        const half = (q: PackedMatrix | Float32Array, second: boolean): PackedMatrix | Float32Array => {
          if (q instanceof Float32Array) return second ? q.slice(I * H) : q.slice(0, I * H);
          const wr = q.qweight.length / q.rows, pr = q.scales.length / q.rows;
          const r0 = second ? I : 0;
          return {
            ...q,
            rows: I,
            qweight: q.qweight.slice(r0 * wr, (r0 + I) * wr),
            scales: q.scales.slice(r0 * pr, (r0 + I) * pr),
            mins: q.mins.slice(r0 * pr, (r0 + I) * pr),
          };
        };
        writeBlock(gName, half(guQ, false), I, H, ch.gu);
        writeBlock(uName, half(guQ, true), I, H, ch.gu);
        writeBlock(dName, dnQ, H, I, ch.down);
        expertBits += storedBitsPerWeight(ch.gu, H) * 2 * I * H + storedBitsPerWeight(ch.down, I) * H * I;
        expertWeights += 3 * I * H;
      }
      for (const p of [...guSpec.parts, ...dnSpec.parts]) used.add(p.tensor);
      const sh = sharedChoice[l];
      if (sh) {
        const S = c.sharedExpertIntermediateSize;
        const ex = L?.shared;
        const useH = method === "gptq" && ex && ex.tokens > 0;
        const sguSpec = specs.get("shared_gate_up")!, sdSpec = specs.get("shared_down")!;
        const guQ = quantizeBlock(w.get("shared_gate_up")!, 2 * S, H, sh.gu, useH ? ex.hGateUp : undefined);
        const dnQ = quantizeBlock(w.get("shared_down")!, H, S, sh.down, useH ? ex.hDown : undefined);
        const split = (q: PackedMatrix | Float32Array, second: boolean) => {
          if (q instanceof Float32Array) return second ? q.slice(S * H) : q.slice(0, S * H);
          const wr = q.qweight.length / q.rows, pr = q.scales.length / q.rows, r0 = second ? S : 0;
          return {
            ...q,
            rows: S,
            qweight: q.qweight.slice(r0 * wr, (r0 + S) * wr),
            scales: q.scales.slice(r0 * pr, (r0 + S) * pr),
            mins: q.mins.slice(r0 * pr, (r0 + S) * pr),
          };
        };
        writeBlock(sguSpec.parts[0].tensor, split(guQ, false), S, H, sh.gu);
        writeBlock(sguSpec.parts[1].tensor, split(guQ, true), S, H, sh.gu);
        writeBlock(sdSpec.parts[0].tensor, dnQ, H, S, sh.down);
        for (const p of [...sguSpec.parts, ...sdSpec.parts]) used.add(p.tensor);
        expertBits += storedBitsPerWeight(sh.gu, H) * 2 * S * H + storedBitsPerWeight(sh.down, S) * H * S;
        expertWeights += 3 * S * H;
      }
      await shards.flushOver(shardBytes);
    }
    // Everything else (embeddings, norms, biases, LM head, shared-expert gate) as it was.
    for (const [name, info] of ckpt.plainTensors()) {
      if (used.has(name) || shards.has(name)) continue;
      tensors[name] = { dtype: info.dtype, shape: info.shape, data: await ckpt.readRaw(name) };
      await shards.flushOver(shardBytes);
    }
    report.averageBits = expertWeights > 0 ? expertBits / expertWeights : 16;
    say(`writing ${out}`);
    await shards.finish();
    for (
      const f of [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "chat_template.json",
      ]
    ) {
      try {
        await Deno.copyFile(join(source, f), join(out, f));
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
    const quantization = {
      format: PACKED_FORMAT,
      method,
      mode: options.uniform !== undefined ? `uniform ${options.uniform}` : `mxmoe ${options.bits}`,
      r: options.r ?? 0.75,
      max_paths: pathLimit,
      max_paths_scope: pathLimit === undefined ? undefined : scope,
      average_bits: report.averageBits,
      attention: schemeName(attention),
      router: schemeName(routerScheme),
      tensors: quantTensors,
      layers: report.layers,
      calibration: calib
        ? {
          tokens: calib.tokens,
          frequency: calib.layers.map((L) => L.experts.map((e) => e.tokens / calib!.tokens)),
        }
        : undefined,
      cost_table: cost ? { source: cost.source, adapter: cost.adapter } : undefined,
    };
    await Deno.writeTextFile(join(out, "quantization.json"), JSON.stringify(quantization, null, 1));
    if (cost) {
      await Deno.writeTextFile(join(out, "cost_table.json"), JSON.stringify(cost, null, 1));
    }
    return report;
  } finally {
    ckpt.close();
  }
}

/**
 * Quantizes the checkpoint `source` (a directory) into `out`.
 *
 * @example
 * ```ts
 * await quantizeModel("fixtures/models/olmoe", "/tmp/olmoe-w4", { uniform: "w4g64", method: "rtn" });
 * ```
 */
export async function quantizeModel(
  source: string,
  out: string,
  options: QuantizeModelOptions,
): Promise<QuantizationReport> {
  const report = await quantizeOnce(source, out, options);
  if (options.bits === undefined || options.uniformCheck === false) return report;
  const say = options.onProgress ?? (() => {});
  const ckpt = await Checkpoint.open(source);
  let config;
  try {
    config = ckpt.config;
  } finally {
    ckpt.close();
  }
  const candidates = (options.candidates ?? DEFAULT_CANDIDATES).map(parseScheme);
  const uniform = bestUniformWithin(config, candidates, options.bits);
  if (!uniform) return report;
  // The uniform quantization at the same budget, compared on the calibration text end to end.
  const alt = await Deno.makeTempDir({ dir: dirname(resolve(out)), prefix: ".edgemix-uniform-check-" });
  try {
    say(`checking against uniform ${uniform} at the same budget`);
    const altReport = await quantizeOnce(source, alt, {
      ...options,
      bits: undefined,
      uniform,
      costTable: undefined,
      maxPaths: undefined, // one scheme: one path
    });
    const ref = await loadModel(source, { backend: "cpu" });
    const ids = ref.tokenizer.encode(options.calibText!, { addSpecialTokens: false })
      .slice(0, options.calibTokens ?? 4096);
    const window = Math.min(config.maxPositionEmbeddings, 512);
    const kl = async (dir: string) => {
      const m = await loadModel(dir, { backend: "cpu" });
      try {
        return (await compareModels(ref, m, ids, window)).meanKl;
      } finally {
        await m.dispose();
      }
    };
    const mxmoeKl = await kl(out), uniformKl = await kl(alt);
    await ref.dispose();
    const keepUniform = uniformKl < mxmoeKl;
    const check = { uniform, mxmoeKl, uniformKl, kept: keepUniform ? "uniform" as const : "mxmoe" as const };
    say(`calibration KL: MxMoE ${mxmoeKl.toExponential(3)}, uniform ${uniformKl.toExponential(3)}`);
    const qPath = join(out, "quantization.json");
    if (keepUniform) {
      await removeWeights(out);
      for await (const e of Deno.readDir(alt)) {
        if (WEIGHT_FILE.test(e.name) || e.name === "quantization.json") {
          await Deno.rename(join(alt, e.name), join(out, e.name));
        }
      }
    }
    const q = JSON.parse(await Deno.readTextFile(qPath));
    q.mode = `mxmoe ${options.bits}`;
    q.uniform_check = {
      uniform,
      mxmoe_kl: mxmoeKl,
      uniform_kl: uniformKl,
      kept: check.kept,
    };
    await Deno.writeTextFile(qPath, JSON.stringify(q, null, 1));
    return { ...(keepUniform ? altReport : report), uniformCheck: check };
  } finally {
    await Deno.remove(alt, { recursive: true }).catch(() => {});
  }
}

/**
 * The uniform expert scheme among `candidates` with the most average bits within `budget` on `config`'s expert
 * shapes (as stored: effective groups, scales and minimums), or undefined when none fits.
 */
export function bestUniformWithin(
  config: ModelConfig,
  candidates: QuantScheme[],
  budget: number,
): string | undefined {
  const H = config.hiddenSize, I = config.expertIntermediateSize, S = config.sharedExpertIntermediateSize;
  let best: { name: string; bits: number } | undefined;
  for (const s of candidates) {
    let bits = 0, weights = 0;
    for (const width of S > 0 ? [I, S] : [I]) {
      const n = width === I ? config.numExperts : 1;
      bits += n * width * H *
        (2 * storedBitsPerWeight(effectiveScheme(s, H), H) +
          storedBitsPerWeight(effectiveScheme(s, width), width));
      weights += n * 3 * width * H;
    }
    const avg = bits / weights;
    if (avg <= budget + 1e-9 && (!best || avg > best.bits)) best = { name: schemeName(s), bits: avg };
  }
  return best?.name;
}
