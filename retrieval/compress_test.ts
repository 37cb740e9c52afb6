import assert from "node:assert/strict";
import { join } from "node:path";
import { tinyKeepProbability, writeTinyClassifier } from "./_tiny_classifier.ts";
import { cl100kCount } from "./cl100k.ts";
import { compress, type CompressOptions, loadCompressor } from "./compress.ts";
import { compressPromptLlmlingua2, type KeepProbabilities } from "./lingua_algorithm.ts";
import type { HfLinguaTokenizer } from "./lingua_tokenizer.ts";

const dir = await Deno.makeTempDir({ prefix: "compress_test_" });
const models = {
  xlmr: await writeTinyClassifier(join(dir, "xlmr"), "xlmr"),
  bert: await writeTinyClassifier(join(dir, "bert"), "bert", { newTokens: true }),
};
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const hasFfi = (await Deno.permissions.query({ name: "ffi" })).state === "granted";

const MEETING =
  "John: So, um, I've been thinking about the project, you know, and I believe we need to make some " +
  "changes. I mean, we want the project to succeed, right? So, like, I think we should consider maybe revising " +
  "the timeline.\n\nSarah: I totally agree, John. I mean, we have to be realistic, you know. The timeline is, " +
  "like, too tight. You know what I mean? We should definitely extend it.";

/** The tiny model's probabilities, computed here from its logit table instead of by ONNX Runtime. */
function tableProbabilities(
  table: Float32Array,
  tokenizer: HfLinguaTokenizer,
  vocab: number,
): KeepProbabilities {
  return (chunks) =>
    Promise.resolve(
      chunks.map((c) =>
        Float32Array.from(c.ids, (id) => tinyKeepProbability(table, id >= vocab ? tokenizer.unkTokenId : id))
      ),
    );
}

const CASES: [string, string[], CompressOptions][] = [
  ["rate .33 with force tokens", [MEETING], { rate: 0.33, forceTokens: ["\n", ".", "!", "?"] }],
  ["target 40, context filter", MEETING.split("\n\n"), {
    targetToken: 40,
    useContextLevelFilter: true,
    forceTokens: ["\n", ".", "!", "?"],
  }],
  ["digits and multi-token force tokens", [
    "Question: 18 + 24 = 42. The answer is 42.\nQuestion: 7 * 3 = 21.",
  ], {
    targetToken: 12,
    forceTokens: ["+", "-", "*", "=", "The answer is", "\n", "Question:"],
    forceReserveDigit: true,
  }],
  ["drop consecutive, first", [MEETING.replaceAll(".", ". . .")], {
    rate: 0.5,
    forceTokens: [".", "?"],
    dropConsecutive: true,
    tokenToWord: "first",
  }],
  ["word labels", [MEETING, "retrieval passage context", "你好世界 привет мир"], {
    rate: 0.6,
    useContextLevelFilter: true,
    returnWordLabel: true,
  }],
];

for (const backend of ["native", "wasm"] as const) {
  Deno.test({
    name:
      `Compressor.compress() on backend ${backend} equals the algorithm fed with the model's probabilities`,
    ignore: backend === "native" && !hasFfi,
    fn: async () => {
      for (const [family, model] of Object.entries(models)) {
        const compressor = await loadCompressor(model.dir, { backend, progress: false });
        assert.equal(compressor.backend, backend);
        const tokenizer = compressor.classifier.tokenizer as HfLinguaTokenizer;
        const vocab = tokenizer.virtualNewTokens ? tokenizer.vocabSize : model.vocabSize;
        for (const [name, contexts, options] of CASES) {
          const got = await compressor.compress(contexts, options);
          const want = await compressPromptLlmlingua2(contexts, options, {
            tokenizer,
            keepProbabilities: tableProbabilities(model.table, tokenizer, vocab),
            countTokens: cl100kCount,
          });
          const label = `${family} ${name}`;
          assert.equal(got.text, want.text, label);
          assert.deepEqual(got.contexts, want.contexts, label);
          assert.deepEqual(got.keptContexts, want.keptContexts, label);
          assert.equal(got.originTokens, want.originTokens, label);
          assert.equal(got.compressedTokens, want.compressedTokens, label);
          assert.equal(got.ratio, want.rate, label);
          assert.deepEqual(got.wordLabels, want.wordLabels, label);
          assert.ok(got.compressedTokens < got.originTokens, label);
        }
        await compressor.dispose();
      }
    },
  });
}

Deno.test("Compressor.compress() keeps words in their order and reports the rate asked for", async () => {
  const compressor = await loadCompressor(models.bert.dir, { progress: false });
  const out = await compressor.compress(MEETING, { rate: 0.4, returnWordLabel: true });
  // The kept words, in order, are the output text.
  const kept = out.wordLabels!.filter((w) => w.label === 1).map((w) => w.word);
  const tokenizer = compressor.classifier.tokenizer;
  assert.equal(out.text, tokenizer.tokensToString(kept));
  assert.ok(kept.length < out.wordLabels!.length);
  assert.equal(out.rate, 0.4);
  assert.equal(out.ratio, out.compressedTokens / out.originTokens);
  const target = await compressor.compress(MEETING, { targetToken: 30 });
  assert.equal(target.rate, 30 / target.originTokens);
  await compressor.dispose();
});

Deno.test("Compressor.compress() rejects bad contexts and options", async () => {
  const compressor = await loadCompressor(models.xlmr.dir, { progress: false });
  for (const rate of [0, -0.1, 1.5, NaN]) {
    await assert.rejects(compressor.compress("text", { rate }), RangeError, `rate ${rate}`);
  }
  for (const targetToken of [0, -5, Infinity]) {
    await assert.rejects(compressor.compress("text", { targetToken }), RangeError, `target ${targetToken}`);
  }
  await assert.rejects(compressor.compress(42 as unknown as string), TypeError);
  await assert.rejects(compressor.compress(["ok", 7 as unknown as string]), TypeError);
  await assert.rejects(compressor.compress("x", { forceTokens: Array(101).fill(".") }), RangeError);
  await assert.rejects(compressor.compress("x", { forceTokens: "." as unknown as string[] }), TypeError);
  await assert.rejects(compressor.compress(["a", "b"], { contextLevelRate: 2 }), RangeError);
  await compressor.dispose();
});

Deno.test("Compressor.compress() handles empty text, a target above the input and non-Latin scripts", async () => {
  const compressor = await loadCompressor(models.xlmr.dir, { progress: false });
  for (const text of ["", "   ", []]) {
    const out = await compressor.compress(text, { targetToken: 10 });
    assert.equal(out.text, "");
    assert.equal(out.compressedTokens, 0);
  }
  const whole = await compressor.compress("the project timeline.", { targetToken: 1000 });
  assert.equal(whole.text, "the project timeline.");
  assert.equal(whole.rate, 1);
  // Chinese, Cyrillic, and Arabic (unknown to the tiny vocabulary: <unk>, which is never kept).
  const text = "你好世界 中文模型 привет мир модель مرحبا بالعالم the project";
  const out = await compressor.compress(text, { rate: 0.5, returnWordLabel: true });
  assert.ok(out.compressedTokens > 0 && out.compressedTokens < out.originTokens);
  // XLM-R words: pieces without ▁ continue the word ("▁你好" "世" "界"); each Arabic word is "▁" plus an unknown
  // piece, which is skipped like the reference skips <unk>, leaving the word "▁" (label word "").
  const words = out.wordLabels!.map((w) => w.word);
  assert.deepEqual(words, ["你好世界", "中文模型", "привет", "мир", "модель", "", "", "the", "project"]);
  await compressor.dispose();
});

Deno.test("Compressor.compress() compresses an input of more than 100k cl100k tokens", async () => {
  const compressor = await loadCompressor(models.xlmr.dir, { progress: false });
  const text = MEETING.repeat(1300);
  const out = await compressor.compress([text], { rate: 0.33 });
  assert.ok(out.originTokens > 100_000, `${out.originTokens} tokens`);
  assert.ok(out.compressedTokens > 0.2 * out.originTokens && out.compressedTokens < 0.45 * out.originTokens);
  await compressor.dispose();
});

Deno.test("compress() uses the compressor it is given", async () => {
  const compressor = await loadCompressor(models.bert.dir, { progress: false });
  const direct = await compressor.compress(MEETING, { rate: 0.5 });
  const via = await compress(MEETING, { rate: 0.5, compressor });
  assert.deepEqual(via, direct);
  await compressor.dispose();
});
