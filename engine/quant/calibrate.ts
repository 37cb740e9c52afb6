/**
 * Calibration for quantization: runs the CPU decoder over calibration text and records, per layer, how often
 * each expert is chosen and the second moments XᵀX of the inputs of every linear block (attention q/k/v and o,
 * each expert's gate/up and down, the shared expert's, dense MLPs'), which GPTQ needs; it also keeps each
 * expert's routed inputs and routing weights, from which MxMoE's sensitivities are computed.
 *
 * @module
 */

import { silu } from "../../kernels/cpu/experts.ts";
import type { CpuDecoder, CpuWeights } from "../cpu_decoder.ts";

/** What one expert (or dense MLP, or shared expert) saw during calibration. */
export interface ExpertCalibration {
  /** Tokens routed to it. */
  tokens: number;
  /** Their normalized inputs [tokens, H] f32. */
  inputs: Float32Array;
  /** Their routing weights [tokens] (the shared expert: its sigmoid gate; dense: 1). */
  weights: Float32Array;
  /** Σ x xᵀ over its inputs [H, H] (float64). */
  hGateUp: Float64Array;
  /** Σ h hᵀ over its hidden activations [I, I] (float64). */
  hDown: Float64Array;
}

/** Calibration record of one layer. */
export interface LayerCalibration {
  /** Σ xn xnᵀ of the q/k/v input [H, H]. */
  hQkv: Float64Array;
  /** Σ a aᵀ of the o-projection input [qDim, qDim]. */
  hO: Float64Array;
  /** Per routed expert (or the dense MLP at index 0). */
  experts: ExpertCalibration[];
  /** The shared expert, when the layer has one. */
  shared: ExpertCalibration | undefined;
}

/** The whole calibration. */
export interface Calibration {
  /** Tokens run. */
  tokens: number;
  /** Per layer. */
  layers: LayerCalibration[];
}

function addOuter(h: Float64Array, x: Float32Array, n: number, rows: number): void {
  for (let t = 0; t < rows; t++) {
    const o = t * n;
    for (let i = 0; i < n; i++) {
      const xi = x[o + i];
      if (xi === 0) continue;
      const hi = i * n;
      for (let j = 0; j < n; j++) h[hi + j] += xi * x[o + j];
    }
  }
}

/** Hidden activations silu(gate·x) ⊙ (up·x) [rows, I] of one expert's gate_up [2I, H] at offset `wo`. */
export function expertHidden(
  x: Float32Array,
  rows: number,
  gateUp: Float32Array,
  wo: number,
  H: number,
  I: number,
): Float32Array {
  const h = new Float32Array(rows * I);
  for (let t = 0; t < rows; t++) {
    for (let i = 0; i < I; i++) {
      let g = 0, u = 0;
      const go = wo + i * H, uo = wo + (I + i) * H;
      for (let c = 0; c < H; c++) {
        g += x[t * H + c] * gateUp[go + c];
        u += x[t * H + c] * gateUp[uo + c];
      }
      h[t * I + i] = Math.fround(silu(Math.fround(g))) * Math.fround(u);
    }
  }
  return h;
}

function appendRows(a: Float32Array, rowsA: number, b: Float32Array, n: number): Float32Array {
  const out = new Float32Array((rowsA + b.length / n) * n);
  out.set(a.subarray(0, rowsA * n));
  out.set(b, rowsA * n);
  return out;
}

/**
 * Runs `decoder` over `sequences` of token ids and collects the calibration. `weights` are the same float32
 * weights the decoder runs (for the experts' hidden activations).
 */
export function calibrate(
  decoder: CpuDecoder,
  weights: CpuWeights,
  sequences: number[][],
  onProgress?: (done: number, total: number) => void,
): Calibration {
  const c = decoder.config;
  const H = c.hiddenSize, qDim = c.numHeads * c.headDim;
  const layers: LayerCalibration[] = c.layers.map((spec) => {
    const width = spec.moe ? c.expertIntermediateSize : c.denseIntermediateSize;
    const n = spec.moe ? c.numExperts : 1;
    const expert = (w: number): ExpertCalibration => ({
      tokens: 0,
      inputs: new Float32Array(0),
      weights: new Float32Array(0),
      hGateUp: new Float64Array(H * H),
      hDown: new Float64Array(w * w),
    });
    return {
      hQkv: new Float64Array(H * H),
      hO: new Float64Array(qDim * qDim),
      experts: Array.from({ length: n }, () => expert(width)),
      shared: spec.moe && c.sharedExpertIntermediateSize > 0
        ? expert(c.sharedExpertIntermediateSize)
        : undefined,
    };
  });
  const record = (
    ex: ExpertCalibration,
    x: Float32Array,
    w: Float32Array,
    gateUp: Float32Array,
    wo: number,
    I: number,
  ) => {
    const rows = w.length;
    if (rows === 0) return;
    addOuter(ex.hGateUp, x, H, rows);
    addOuter(ex.hDown, expertHidden(x, rows, gateUp, wo, H, I), I, rows);
    ex.inputs = appendRows(ex.inputs, ex.tokens, x, H);
    const ws = new Float32Array(ex.tokens + rows);
    ws.set(ex.weights);
    ws.set(w, ex.tokens);
    ex.weights = ws;
    ex.tokens += rows;
  };
  let tokens = 0;
  sequences.forEach((ids, si) => {
    const cache = decoder.newCache(ids.length);
    decoder.forward(ids, 0, cache, false, {
      attention(l, xn, attn) {
        addOuter(layers[l].hQkv, xn, H, ids.length);
        addOuter(layers[l].hO, attn, qDim, ids.length);
      },
      feedForward(l, x, sel, wts, k) {
        const L = layers[l], w = weights.layers[l];
        const spec = c.layers[l];
        const I = spec.moe ? c.expertIntermediateSize : c.denseIntermediateSize;
        const T = x.length / H;
        const gateUp = w.get("gate_up")!;
        for (let e = 0; e < L.experts.length; e++) {
          const rows: number[] = [], rw: number[] = [];
          for (let t = 0; t < T; t++) {
            for (let j = 0; j < k; j++) {
              if (sel[t * k + j] === e) {
                rows.push(t);
                rw.push(wts[t * k + j]);
              }
            }
          }
          const xs = new Float32Array(rows.length * H);
          rows.forEach((t, i) => xs.set(x.subarray(t * H, (t + 1) * H), i * H));
          record(L.experts[e], xs, Float32Array.from(rw), gateUp, e * 2 * I * H, I);
        }
        if (L.shared) {
          const S = c.sharedExpertIntermediateSize;
          const g = w.get("shared_gate")!;
          const sw = new Float32Array(T);
          for (let t = 0; t < T; t++) {
            let s = 0;
            for (let i = 0; i < H; i++) s += x[t * H + i] * g[i];
            sw[t] = 1 / (1 + Math.exp(-s));
          }
          record(L.shared, x, sw, w.get("shared_gate_up")!, 0, S);
        }
      },
    });
    tokens += ids.length;
    onProgress?.(si + 1, sequences.length);
  });
  return { tokens, layers };
}
