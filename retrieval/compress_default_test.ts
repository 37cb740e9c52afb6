/**
 * The default compressor (`fixtures/compressor/default`, trained by `tools/train_compressor.py` on the synthetic
 * world): parity of our tokenizer and ONNX path with torch (its `golden.json`), and what it does to a world
 * document: at rate 0.5 the answers of the document's questions survive far more often than chance.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { compress, DEFAULT_COMPRESSOR_MODEL, loadCompressor } from "./compress.ts";
import type { EncodedChunk, LinguaTokenizer } from "./lingua_algorithm.ts";

interface DefaultGolden {
  heldout: { token_accuracy: number };
  cases: { text: string; input_ids: number[]; logits: [number, number][] }[];
}

const FIXTURES = fileURLToPath(new URL("../fixtures", import.meta.url));
const MODEL = join(FIXTURES, "compressor", "default");
const golden: DefaultGolden = JSON.parse(await Deno.readTextFile(join(MODEL, "golden.json")));
const hasFfi = (await Deno.permissions.query({ name: "ffi" })).state === "granted";

/** The golden logits are rounded to 5 decimals (±5e-6); onnxruntime and torch then differ by f32 summation
 * order, measured up to 1.6e-5 (wasm) and 1.2e-5 (native) on these cases. */
const LOGIT_TOLERANCE = 5e-5;
/** Softmax has slope at most 1/4 per logit: half the logit tolerance bounds the probability error. */
const PROB_TOLERANCE = LOGIT_TOLERANCE / 2;

/** `<s> tokens </s>`, as the training script's tokenizer (post-processor included) encodes a text. */
function encodeWithSpecials(text: string, tok: LinguaTokenizer): EncodedChunk {
  const tokens = ["<s>", ...tok.tokenize(text), "</s>"];
  const ids = Int32Array.from(tokens, (t) => tok.tokenToId(t) ?? tok.unkTokenId);
  return { ids, mask: new Uint8Array(ids.length).fill(1), tokens };
}

const hasGpu = "gpu" in navigator && (await navigator.gpu.requestAdapter()) !== null;

for (
  const [backend, device] of [["native", "cpu"], ["wasm", "cpu"], ["wasm", "webgpu"]] as const
) {
  Deno.test({
    name:
      `default compressor on backend ${backend}/${device}: tokenizer ids and ONNX logits equal torch's (golden.json)`,
    ignore: (backend === "native" && !hasFfi) || (device === "webgpu" && !hasGpu),
    fn: async () => {
      const compressor = await loadCompressor(MODEL, { backend, device, progress: false });
      const clf = compressor.classifier;
      const chunks = golden.cases.map((c) => encodeWithSpecials(c.text, clf.tokenizer));
      chunks.forEach((c, i) => assert.deepEqual([...c.ids], golden.cases[i].input_ids, `case ${i} ids`));
      // All cases in one call: the shorter ones are padded, which must not change their logits.
      const logits = await clf.logits(chunks);
      const probs = await clf.keepProbabilities(chunks);
      golden.cases.forEach((c, i) => {
        assert.equal(logits[i].labels, 2);
        assert.equal(logits[i].data.length, c.input_ids.length * 2);
        let worstLogit = 0;
        let worstProb = 0;
        c.logits.forEach(([l0, l1], t) => {
          worstLogit = Math.max(
            worstLogit,
            Math.abs(logits[i].data[2 * t] - l0),
            Math.abs(logits[i].data[2 * t + 1] - l1),
          );
          worstProb = Math.max(worstProb, Math.abs(probs[i][t] - 1 / (1 + Math.exp(l0 - l1))));
        });
        assert.ok(worstLogit < LOGIT_TOLERANCE, `case ${i}: |onnxruntime - torch| logit ${worstLogit}`);
        assert.ok(worstProb < PROB_TOLERANCE, `case ${i}: |onnxruntime - torch| probability ${worstProb}`);
      });
      await compressor.dispose();
    },
  });
}

async function readJsonl<T>(name: string): Promise<T[]> {
  const text = await Deno.readTextFile(join(FIXTURES, "world", name));
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as T);
}

/** P(X >= k) for X ~ Binomial(n, p). */
function binomialTail(k: number, n: number, p: number): number {
  let logC = 0; // log C(n, i), built up from i = 0
  let tail = 0;
  for (let i = 0; i <= n; i++) {
    if (i > 0) logC += Math.log((n - i + 1) / i);
    if (i >= k) tail += Math.exp(logC + i * Math.log(p) + (n - i) * Math.log1p(-p));
  }
  return tail;
}

/** Whether `word` occurs in `text` as a whole word (not inside a longer word or number). */
function hasWord(text: string, word: string): boolean {
  const escaped = word.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(?<![\\p{L}\\p{N}])${escaped}(?![\\p{L}\\p{N}])`, "u").test(text);
}

Deno.test("default compressor at rate 0.5 keeps the answers of held-out world documents far above chance", async () => {
  const heldout = new Set(
    (await readJsonl<{ id: string; heldout: boolean }>("compressor_train.jsonl"))
      .filter((r) => r.heldout).map((r) => r.id),
  );
  const documents = await readJsonl<{ id: string; text: string; metadata: { kind: string } }>(
    "documents.jsonl",
  );
  const questions = await readJsonl<{ doc_id: string; answer: string }>("questions.jsonl");
  // The first held-out document (not trained on) of each kind: person, town, company, ...
  const picked = new Map<string, { id: string; text: string }>();
  for (const d of documents) {
    if (heldout.has(d.id) && !picked.has(d.metadata.kind)) picked.set(d.metadata.kind, d);
  }
  assert.ok(picked.size >= 5, `held-out documents of ${picked.size} kinds`);
  const compressor = await loadCompressor(MODEL, { progress: false });
  let answerWords = 0;
  let keptAnswerWords = 0;
  let words = 0;
  let keptWords = 0;
  const lost: string[] = [];
  for (const doc of picked.values()) {
    const out = await compressor.compress(doc.text, { rate: 0.5, returnWordLabel: true });
    assert.ok(Math.abs(out.ratio - 0.5) < 0.15, `${doc.id}: kept ${out.ratio} of the tokens`);
    words += out.wordLabels!.length;
    keptWords += out.wordLabels!.filter((w) => w.label === 1).length;
    const answers = questions.filter((q) => q.doc_id === doc.id).map((q) => String(q.answer));
    assert.ok(answers.length >= 3, `${doc.id} has ${answers.length} questions`);
    for (const word of answers.flatMap((a) => a.split(/\s+/))) {
      answerWords++;
      if (hasWord(out.text, word)) keptAnswerWords++;
      else lost.push(`${doc.id}: ${word}`);
    }
  }
  await compressor.dispose();
  // Chance: a compressor that keeps as many words, but at random, keeps each answer word with this probability.
  const chance = Math.max(keptWords / words, 0.5);
  const recall = keptAnswerWords / answerWords;
  const p = binomialTail(keptAnswerWords, answerWords, chance);
  assert.ok(
    recall >= 0.9 && p < 1e-6,
    `kept ${keptAnswerWords}/${answerWords} answer words (chance ${chance.toFixed(3)}, p = ${
      p.toExponential(2)
    }); ` +
      `lost ${lost.join(", ")}`,
  );
});

Deno.test("compress() loads the default compressor offline and keeps about `rate` of the cl100k tokens", async () => {
  assert.equal(DEFAULT_COMPRESSOR_MODEL, MODEL);
  // Text of the model's domain (English, ASCII: its vocabulary has no other script, whose words all become
  // <unk>, tie, and are dropped together by the reference's strict threshold).
  const documents = (await readJsonl<{ text: string }>("documents.jsonl")).slice(0, 3).map((d) => d.text);
  const texts = [
    ...documents,
    "John: So, um, I've been thinking about the project, you know, and I believe we need to make some changes.",
    "Numbers like 3.14159, 2048 and 1e-5 appear in configs; prices like $200 and 10,000 appear in budgets.",
  ];
  let previous = 0;
  for (const rate of [0.33, 0.5, 0.8]) {
    const out = await compress(texts, { rate });
    assert.equal(out.keptContexts.length, texts.length);
    assert.equal(out.rate, rate);
    // The reference weighs each word by the cl100k tokens of "▁word", which over-weighs short words; a trained
    // model drops mostly short filler words, so it keeps somewhat more than `rate` (measured: +0.03 to +0.08;
    // "a" weighs 3 tokens as "▁a", "Brernsyth" 6 instead of 4).
    assert.ok(out.ratio > rate - 0.05 && out.ratio < rate + 0.12, `rate ${rate}: kept ${out.ratio}`);
    assert.ok(out.ratio > previous, `rate ${rate}: kept ${out.ratio}, not more than at the lower rate`);
    previous = out.ratio;
  }
});
