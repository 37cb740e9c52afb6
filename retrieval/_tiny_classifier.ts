/**
 * Test support: writes a tiny token classifier in transformers.js layout (config.json, tokenizer.json,
 * tokenizer_config.json, onnx/model.onnx) without Python. The tokenizer is a real SentencePiece-Unigram (XLM-R
 * style) or WordPiece (BERT style) tokenizer over a small vocabulary; the ONNX graph gives every token fixed
 * logits `[0, v(id)]` (an embedding lookup times the attention mask), so its keep probabilities are known.
 * The fixtures made by `tools/make_compressor_fixtures.py` (real transformer encoders) are tested separately.
 *
 * @module
 */

import { join } from "node:path";
import type { TokenizerFamily } from "./lingua_algorithm.ts";

/** A written tiny model. */
export interface TinyClassifier {
  /** Its directory. */
  dir: string;
  /** Logits per token id: `[0, v(id)]`. */
  table: Float32Array; // (vocab, 2) float32
  /** Vocabulary size. */
  vocabSize: number;
}

const WORDS = (
  "John Sarah project need make changes timeline tight agree thinking believe want succeed consider revising " +
  "realistic extend the a to and of is we I it be so um uh well just like you know think that this have on for " +
  "with are was at as by from or an not but all can our they what when there about which will one would more " +
  "time some if no out up do how their them then than into only other new also its after first two years " +
  "answer Question The It We He She they're don't 2024 18 42 100 3 7 Paris France model compress tokens words " +
  "retrieval passage context rate keep drop"
).split(" ");
const SUBWORDS = ["pro", "ject", "time", "line", "com", "press", "ing", "ed", "er", "s", "ly", "re", "tion"];
const CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?!'\"-()[]/+=*%$#@&_";
const CJK = ["你好", "世界", "中文", "模型", "你", "好", "世", "界", "中", "文", "模", "型", "的", "是"];
const CYRILLIC = ["привет", "мир", "модель"];

/**
 * Writes a tiny classifier of `family` into `dir` (created if needed).
 *
 * @param dir where to write
 * @param family "xlmr" (SentencePiece Unigram, `<s> <pad> </s> <unk>`) or "bert" (WordPiece, `[PAD] [UNK] [CLS]`)
 * @param options `newTokens`: add `[NEW0]`..`[NEW99]` to the tokenizer, as the reference does
 * @returns the directory and the logit table
 */
export async function writeTinyClassifier(
  dir: string,
  family: TokenizerFamily,
  options: { newTokens?: boolean } = {},
): Promise<TinyClassifier> {
  await Deno.mkdir(join(dir, "onnx"), { recursive: true });
  const { tokenizer, config, vocabSize } = family === "xlmr"
    ? xlmrTokenizer(options.newTokens ?? false)
    : bertTokenizer(options.newTokens ?? false);
  const table = new Float32Array(vocabSize * 2);
  for (let i = 0; i < vocabSize; i++) table[2 * i + 1] = Math.fround(3 * Math.sin(i * 1.7 + 0.3));
  await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(tokenizer));
  await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(config));
  await Deno.writeTextFile(
    join(dir, "config.json"),
    JSON.stringify({
      model_type: family === "xlmr" ? "xlm-roberta" : "bert",
      architectures: [family === "xlmr" ? "XLMRobertaForTokenClassification" : "BertForTokenClassification"],
      vocab_size: vocabSize,
      pad_token_id: family === "xlmr" ? 1 : 0,
      id2label: { "0": "LABEL_0", "1": "LABEL_1" },
      label2id: { LABEL_0: 0, LABEL_1: 1 },
    }),
  );
  await Deno.writeFile(join(dir, "onnx", "model.onnx"), lookupClassifierOnnx(table, vocabSize));
  return { dir, table, vocabSize };
}

/**
 * The keep probability the tiny model gives token `id`: `softmax([0, v])[1]` in float32 steps.
 *
 * @param table the logit table
 * @param id the token id
 * @returns the probability
 */
export function tinyKeepProbability(table: Float32Array, id: number): number {
  const l0 = table[2 * id];
  const l1 = table[2 * id + 1];
  const m = Math.max(l0, l1);
  const e0 = Math.fround(Math.exp(Math.fround(l0 - m)));
  const e1 = Math.fround(Math.exp(Math.fround(l1 - m)));
  return Math.fround(e1 / Math.fround(e0 + e1));
}

function addedToken(id: number, content: string) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

function newTokens(start: number): ReturnType<typeof addedToken>[] {
  return Array.from({ length: 100 }, (_, i) => addedToken(start + i, `[NEW${i}]`));
}

function xlmrTokenizer(withNew: boolean) {
  const vocab: [string, number][] = [["<s>", 0], ["<pad>", 0], ["</s>", 0], ["<unk>", 0]];
  const seen = new Set(vocab.map(([p]) => p));
  const add = (piece: string, score: number) => {
    if (!seen.has(piece)) {
      seen.add(piece);
      vocab.push([piece, score]);
    }
  };
  for (const w of WORDS) add(`▁${w}`, -5 - w.length * 0.01);
  for (const w of [...CJK, ...CYRILLIC]) add(`▁${w}`, -6);
  for (const s of SUBWORDS) {
    add(`▁${s}`, -7);
    add(s, -7);
  }
  for (const c of [...CHARS, ...CJK.filter((w) => w.length === 1)]) {
    add(c, -10);
    add(`▁${c}`, -10.5);
  }
  for (const c of "приветмирмодль") add(c, -10);
  add("▁", -9);
  const mask = vocab.length;
  vocab.push(["<mask>", 0]);
  const added = [
    addedToken(0, "<s>"),
    addedToken(1, "<pad>"),
    addedToken(2, "</s>"),
    addedToken(3, "<unk>"),
    { ...addedToken(mask, "<mask>"), lstrip: true },
  ];
  let vocabSize = vocab.length;
  if (withNew) {
    added.push(...newTokens(vocabSize));
    vocabSize += 100;
  }
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: {
      type: "Sequence",
      normalizers: [{ type: "NFKC" }, { type: "Replace", pattern: { Regex: " {2,}" }, content: " " }],
    },
    pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: "always", split: true },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, {
        SpecialToken: { id: "</s>", type_id: 0 },
      }],
      pair: [{ Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
      special_tokens: {
        "<s>": { id: "<s>", ids: [0], tokens: ["<s>"] },
        "</s>": { id: "</s>", ids: [2], tokens: ["</s>"] },
      },
    },
    decoder: { type: "Metaspace", replacement: "▁", prepend_scheme: "always", split: true },
    model: { type: "Unigram", unk_id: 3, vocab, byte_fallback: false },
  };
  const config = {
    tokenizer_class: "PreTrainedTokenizerFast",
    bos_token: "<s>",
    eos_token: "</s>",
    unk_token: "<unk>",
    sep_token: "</s>",
    cls_token: "<s>",
    pad_token: "<pad>",
    mask_token: "<mask>",
    model_max_length: 512,
  };
  return { tokenizer, config, vocabSize };
}

function bertTokenizer(withNew: boolean) {
  const vocab: Record<string, number> = {};
  let n = 0;
  const add = (t: string) => {
    if (!(t in vocab)) vocab[t] = n++;
  };
  for (const s of ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) add(s);
  for (const w of WORDS) {
    // BERT's pre-tokenizer splits punctuation: "don't" is "don ' t".
    for (const part of w.split(/([^\p{L}\p{N}])/u)) if (part) add(part);
  }
  for (const w of CYRILLIC) add(w);
  for (const s of SUBWORDS) {
    add(s);
    add(`##${s}`);
  }
  for (const c of [...CHARS, ...CJK.filter((w) => w.length === 1), ..."приветмирмодль"]) {
    add(c);
    add(`##${c}`);
  }
  const added = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map((t) => addedToken(vocab[t], t));
  let vocabSize = n;
  if (withNew) {
    added.push(...newTokens(vocabSize));
    vocabSize += 100;
  }
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: {
      type: "BertNormalizer",
      clean_text: true,
      handle_chinese_chars: true,
      strip_accents: null,
      lowercase: false,
    },
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "[CLS]", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, {
        SpecialToken: { id: "[SEP]", type_id: 0 },
      }],
      pair: [{ Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
      special_tokens: {
        "[CLS]": { id: "[CLS]", ids: [vocab["[CLS]"]], tokens: ["[CLS]"] },
        "[SEP]": { id: "[SEP]", ids: [vocab["[SEP]"]], tokens: ["[SEP]"] },
      },
    },
    decoder: { type: "WordPiece", prefix: "##", cleanup: true },
    model: {
      type: "WordPiece",
      unk_token: "[UNK]",
      continuing_subword_prefix: "##",
      max_input_chars_per_word: 100,
      vocab,
    },
  };
  const config = {
    tokenizer_class: "PreTrainedTokenizerFast",
    unk_token: "[UNK]",
    sep_token: "[SEP]",
    pad_token: "[PAD]",
    cls_token: "[CLS]",
    mask_token: "[MASK]",
    model_max_length: 512,
  };
  return { tokenizer, config, vocabSize };
}

// --- a minimal ONNX (protobuf) writer ---------------------------------------------------------------------------

class Pb {
  readonly bytes: number[] = [];
  varint(v: number | bigint): this {
    let x = BigInt(v);
    if (x < 0n) x += 1n << 64n;
    while (x >= 0x80n) {
      this.bytes.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    this.bytes.push(Number(x));
    return this;
  }
  int(field: number, v: number | bigint): this {
    return this.varint(field << 3).varint(v);
  }
  data(field: number, d: Uint8Array): this {
    this.varint((field << 3) | 2).varint(d.length);
    for (const b of d) this.bytes.push(b);
    return this;
  }
  str(field: number, s: string): this {
    return this.data(field, new TextEncoder().encode(s));
  }
  msg(field: number, m: Pb): this {
    return this.data(field, Uint8Array.from(m.bytes));
  }
}

function valueInfo(name: string, elemType: number, dims: (number | string)[]): Pb {
  const shape = new Pb();
  for (const d of dims) shape.msg(1, typeof d === "number" ? new Pb().int(1, d) : new Pb().str(2, d));
  const tensorType = new Pb().int(1, elemType).msg(2, shape);
  return new Pb().str(1, name).msg(2, new Pb().msg(1, tensorType));
}

function node(op: string, inputs: string[], outputs: string[], attrs: Pb[] = []): Pb {
  const n = new Pb();
  for (const i of inputs) n.str(1, i);
  for (const o of outputs) n.str(2, o);
  n.str(3, `${op}_${outputs[0]}`).str(4, op);
  for (const a of attrs) n.msg(5, a);
  return n;
}

/** `logits[b, s, :] = table[input_ids[b, s], :] * attention_mask[b, s]` as an opset-17 ONNX model. */
function lookupClassifierOnnx(table: Float32Array, vocabSize: number): Uint8Array {
  const FLOAT = 1;
  const INT64 = 7;
  const graph = new Pb()
    .msg(1, node("Gather", ["table", "input_ids"], ["looked_up"]))
    .msg(1, node("Cast", ["attention_mask"], ["mask_f"], [new Pb().str(1, "to").int(3, FLOAT).int(20, 2)]))
    .msg(1, node("Unsqueeze", ["mask_f", "last_axis"], ["mask_3d"]))
    .msg(1, node("Mul", ["looked_up", "mask_3d"], ["logits"]))
    .str(2, "tiny_token_classifier")
    .msg(
      5,
      new Pb().int(1, vocabSize).int(1, 2).int(2, FLOAT).str(8, "table").data(
        9,
        new Uint8Array(table.buffer),
      ),
    )
    .msg(
      5,
      new Pb().int(1, 1).int(2, INT64).str(8, "last_axis").data(
        9,
        new Uint8Array(new BigInt64Array([-1n]).buffer),
      ),
    )
    .msg(11, valueInfo("input_ids", INT64, ["batch", "sequence"]))
    .msg(11, valueInfo("attention_mask", INT64, ["batch", "sequence"]))
    .msg(12, valueInfo("logits", FLOAT, ["batch", "sequence", 2]));
  const model = new Pb().int(1, 8).str(2, "edgemix-tests").msg(7, graph).msg(
    8,
    new Pb().str(1, "").int(2, 17),
  );
  return Uint8Array.from(model.bytes);
}
