/**
 * The weight plan: which checkpoint tensors make up each weight the decoder reads, for every naming scheme
 * the supported architectures use (per-expert `experts.{e}.w1` / `gate_proj`, transformers-5 fused
 * `experts.gate_up_proj`, Granite's `input_linear` / `output_linear`). Each logical weight is the row-major
 * concatenation of its parts, so both backends assemble it the same way and every shape is checked here.
 *
 * Logical weights (H hidden, V vocab, hd head dim, nH / nKV heads, E experts, I expert width, S shared width,
 * D dense width), all row-major, out-features first like torch's Linear:
 *
 * | key | shape | notes |
 * | --- | --- | --- |
 * | `embed` | [V, H] | |
 * | `final_norm` | [H] | |
 * | `lm_head` | [V, H] | the embedding when tied |
 * | `L.attn_norm`, `L.ffn_norm` | [H] | input / post-attention RMSNorm |
 * | `L.qkv` | [(nH + 2 nKV) hd, H] | q rows, then k rows, then v rows |
 * | `L.qkv_bias` | [(nH + 2 nKV) hd] | when the config has q/k/v biases |
 * | `L.q_norm`, `L.k_norm` | [nH hd] and [nKV hd] (full) or [hd] (per head) | when the config has q/k norms |
 * | `L.o`, `L.o_bias` | [H, nH hd], [H] | |
 * | `L.router` | [E, H] | MoE layers |
 * | `L.gate_up` | [E, 2I, H] | per expert: I gate rows, then I up rows; dense layers: [1, 2D, H] |
 * | `L.down` | [E, H, I] | dense layers: [1, H, D] |
 * | `L.shared_gate_up`, `L.shared_down`, `L.shared_gate` | [2S, H], [H, S], [1, H] | Qwen2-MoE shared expert |
 *
 * @module
 */

import type { Checkpoint } from "./checkpoint.ts";
import { ModelLoadError } from "./errors.ts";

/** One checkpoint tensor placed at an element offset of a logical weight. */
export interface WeightPart {
  /** Checkpoint tensor name. */
  tensor: string;
  /** Element offset in the logical weight. */
  offset: number;
  /** Elements it contributes. */
  elements: number;
}

/** A logical weight and the parts it is made of. */
export interface WeightSpec {
  /** Key, e.g. "3.gate_up" or "embed". */
  key: string;
  /** Logical shape. */
  shape: number[];
  /** Parts that tile the weight without gaps. */
  parts: WeightPart[];
}

/** The whole plan: global weights, then per-layer weights by short key. */
export interface WeightPlan {
  /** `embed`, `final_norm`, `lm_head`. */
  global: Map<string, WeightSpec>;
  /** One map per layer: `attn_norm`, `qkv`, ... */
  layers: Map<string, WeightSpec>[];
}

function prod(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Builds the plan for `ckpt`, checking every tensor's presence and shape against the config. */
export function planWeights(ckpt: Checkpoint): WeightPlan {
  const c = ckpt.config;
  const H = c.hiddenSize, hd = c.headDim, nH = c.numHeads, nKV = c.numKvHeads;

  const expectShape = (tensor: string, shape: readonly number[]) => {
    const info = ckpt.info(tensor);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new ModelLoadError(
        `Cannot load tensor ${tensor} from ${info.file}: its shape is [${info.shape}] but the config needs [${shape}]`,
        { file: info.file, tensor },
      );
    }
  };
  const first = (candidates: string[], what: string): string => {
    for (const n of candidates) if (ckpt.has(n)) return n;
    throw new ModelLoadError(
      `Cannot load ${what}: none of the tensors ${candidates.join(", ")} is in the checkpoint ${ckpt.dir}`,
      { tensor: candidates[0] },
    );
  };
  /** A weight made of whole tensors placed one after another. */
  const concat = (
    key: string,
    shape: number[],
    pieces: { tensor: string; shape: number[] }[],
  ): WeightSpec => {
    const parts: WeightPart[] = [];
    let offset = 0;
    for (const p of pieces) {
      expectShape(p.tensor, p.shape);
      parts.push({ tensor: p.tensor, offset, elements: prod(p.shape) });
      offset += prod(p.shape);
    }
    if (offset !== prod(shape)) {
      throw new Error(`internal: parts of ${key} cover ${offset} of ${prod(shape)} elements`);
    }
    return { key, shape, parts };
  };
  const single = (key: string, tensor: string, shape: number[]) => concat(key, shape, [{ tensor, shape }]);

  const global = new Map<string, WeightSpec>();
  const embedName = first(["model.embed_tokens.weight"], "the token embedding");
  global.set("embed", single("embed", embedName, [c.vocabSize, H]));
  global.set("final_norm", single("final_norm", first(["model.norm.weight"], "the final norm"), [H]));
  const lmHead = c.tieWordEmbeddings || !ckpt.has("lm_head.weight") ? embedName : "lm_head.weight";
  if (!c.tieWordEmbeddings && !ckpt.has("lm_head.weight")) {
    throw new ModelLoadError(
      `Cannot load the LM head: lm_head.weight is missing and tie_word_embeddings is false in ${ckpt.dir}/config.json`,
      { tensor: "lm_head.weight" },
    );
  }
  global.set("lm_head", single("lm_head", lmHead, [c.vocabSize, H]));

  const layers: Map<string, WeightSpec>[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const m = new Map<string, WeightSpec>();
    const set = (w: WeightSpec) => m.set(w.key.slice(w.key.indexOf(".") + 1), w);
    const k = (name: string) => `${l}.${name}`;
    set(single(k("attn_norm"), `${p}input_layernorm.weight`, [H]));
    set(single(k("ffn_norm"), `${p}post_attention_layernorm.weight`, [H]));
    const a = `${p}self_attn.`;
    set(concat(k("qkv"), [(nH + 2 * nKV) * hd, H], [
      { tensor: `${a}q_proj.weight`, shape: [nH * hd, H] },
      { tensor: `${a}k_proj.weight`, shape: [nKV * hd, H] },
      { tensor: `${a}v_proj.weight`, shape: [nKV * hd, H] },
    ]));
    if (c.qkvBias) {
      set(concat(k("qkv_bias"), [(nH + 2 * nKV) * hd], [
        { tensor: `${a}q_proj.bias`, shape: [nH * hd] },
        { tensor: `${a}k_proj.bias`, shape: [nKV * hd] },
        { tensor: `${a}v_proj.bias`, shape: [nKV * hd] },
      ]));
    }
    if (c.qkNorm !== "none") {
      const full = c.qkNorm === "full";
      set(single(k("q_norm"), `${a}q_norm.weight`, [full ? nH * hd : hd]));
      set(single(k("k_norm"), `${a}k_norm.weight`, [full ? nKV * hd : hd]));
    }
    set(single(k("o"), `${a}o_proj.weight`, [H, nH * hd]));
    if (c.oBias) set(single(k("o_bias"), `${a}o_proj.bias`, [H]));

    if (c.layers[l].moe) {
      const E = c.numExperts, I = c.expertIntermediateSize;
      const moe = ckpt.has(`${p}block_sparse_moe.gate.weight`) ||
          ckpt.has(`${p}block_sparse_moe.router.layer.weight`) ||
          ckpt.has(`${p}block_sparse_moe.router.weight`) ||
          ckpt.has(`${p}block_sparse_moe.input_linear.weight`)
        ? `${p}block_sparse_moe.`
        : `${p}mlp.`;
      set(single(
        k("router"),
        first(
          [`${moe}gate.weight`, `${moe}router.layer.weight`, `${moe}router.weight`],
          `the router of layer ${l}`,
        ),
        [E, H],
      ));
      if (ckpt.has(`${moe}input_linear.weight`)) {
        set(single(k("gate_up"), `${moe}input_linear.weight`, [E, 2 * I, H]));
        set(single(k("down"), first([`${moe}output_linear.weight`], `the experts of layer ${l}`), [E, H, I]));
      } else if (ckpt.has(`${moe}experts.gate_up_proj`)) {
        set(single(k("gate_up"), `${moe}experts.gate_up_proj`, [E, 2 * I, H]));
        set(single(k("down"), first([`${moe}experts.down_proj`], `the experts of layer ${l}`), [E, H, I]));
      } else {
        const mixtralNames = ckpt.has(`${moe}experts.0.w1.weight`);
        const [g, u, d] = mixtralNames ? ["w1", "w3", "w2"] : ["gate_proj", "up_proj", "down_proj"];
        const gateUp: { tensor: string; shape: number[] }[] = [];
        const down: { tensor: string; shape: number[] }[] = [];
        for (let e = 0; e < E; e++) {
          gateUp.push({ tensor: `${moe}experts.${e}.${g}.weight`, shape: [I, H] });
          gateUp.push({ tensor: `${moe}experts.${e}.${u}.weight`, shape: [I, H] });
          down.push({ tensor: `${moe}experts.${e}.${d}.weight`, shape: [H, I] });
        }
        set(concat(k("gate_up"), [E, 2 * I, H], gateUp));
        set(concat(k("down"), [E, H, I], down));
      }
      if (c.sharedExpertIntermediateSize > 0) {
        const S = c.sharedExpertIntermediateSize;
        set(concat(k("shared_gate_up"), [2 * S, H], [
          { tensor: `${moe}shared_expert.gate_proj.weight`, shape: [S, H] },
          { tensor: `${moe}shared_expert.up_proj.weight`, shape: [S, H] },
        ]));
        set(single(k("shared_down"), `${moe}shared_expert.down_proj.weight`, [H, S]));
        set(single(k("shared_gate"), `${moe}shared_expert_gate.weight`, [1, H]));
      }
    } else {
      const D = c.denseIntermediateSize;
      set(concat(k("gate_up"), [1, 2 * D, H], [
        { tensor: `${p}mlp.gate_proj.weight`, shape: [D, H] },
        { tensor: `${p}mlp.up_proj.weight`, shape: [D, H] },
      ]));
      set(concat(k("down"), [1, H, D], [{ tensor: `${p}mlp.down_proj.weight`, shape: [H, D] }]));
    }
    layers.push(m);
  }
  return { global, layers };
}

/** Reads weight `spec` from `ckpt` as one float32 array. */
export async function readWeightF32(ckpt: Checkpoint, spec: WeightSpec): Promise<Float32Array> {
  if (spec.parts.length === 1) return await ckpt.readF32(spec.parts[0].tensor);
  const out = new Float32Array(prod(spec.shape));
  for (const part of spec.parts) out.set(await ckpt.readF32(part.tensor), part.offset);
  return out;
}

/** Element count of a weight. */
export function weightElements(spec: WeightSpec): number {
  return prod(spec.shape);
}
