import assert from "node:assert/strict";
import { join } from "node:path";
import { writeTinyClassifier } from "./_tiny_classifier.ts";
import { cl100kCount } from "./cl100k.ts";
import {
  chunkContext,
  compressPromptLlmlingua2,
  encodeChunk,
  type KeepProbabilities,
  type LinguaOptions,
  type LinguaTokenizer,
  mergeTokensToWords,
  splitWords,
} from "./lingua_algorithm.ts";
import { HfLinguaTokenizer } from "./lingua_tokenizer.ts";

// Real tokenizers (tiny vocabularies, see _tiny_classifier.ts); the classifier is replaced by given probabilities.
const dir = await Deno.makeTempDir({ prefix: "lingua_algorithm_test_" });
const bert = await HfLinguaTokenizer.load((await writeTinyClassifier(join(dir, "bert"), "bert")).dir);
const xlmr = await HfLinguaTokenizer.load((await writeTinyClassifier(join(dir, "xlmr"), "xlmr")).dir);
const xlmrNew = await HfLinguaTokenizer.load(
  (await writeTinyClassifier(join(dir, "xlmr_new"), "xlmr", { newTokens: true })).dir,
);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

const f = Math.fround;

/** A classifier that gives each token string a fixed probability (0.5 for tokens not listed). */
function byToken(probs: Record<string, number>): KeepProbabilities {
  return (chunks) => Promise.resolve(chunks.map((c) => Float32Array.from(c.tokens, (t) => probs[t] ?? 0.5)));
}

function run(
  tokenizer: LinguaTokenizer,
  contexts: string[],
  options: LinguaOptions,
  probs: Record<string, number>,
) {
  return compressPromptLlmlingua2(contexts, options, {
    tokenizer,
    keepProbabilities: byToken(probs),
    countTokens: cl100kCount,
  });
}

Deno.test("compressPromptLlmlingua2() keeps the words above the cl100k-weighted 51st percentile at rate 0.5", async () => {
  // BERT words: the .1, project .9, timeline .6, compressing = mean(.2, .8) = .5 (float32), weighted by cl100k
  // tokens 1, 1, 1, 2: [.1, .9, .6, .5, .5]. q = int(100 * .5 + 1) = 51, index 4 * .51 = 2.04 between .5 and
  // .6: threshold ≈ .504, so "project" and "timeline" stay.
  const probs = { the: 0.1, project: 0.9, timeline: 0.6, compress: 0.2, "##ing": 0.8 };
  const text = "the project timeline compressing";
  assert.deepEqual(["the", "project", "timeline", "compressing"].map(cl100kCount), [1, 1, 1, 2]);
  const r = await run(bert, [text], { rate: 0.5, returnWordLabel: true }, probs);
  assert.equal(r.text, "project timeline");
  assert.deepEqual(r.contexts, ["project timeline"]);
  assert.equal(r.originTokens, cl100kCount(text));
  assert.equal(r.compressedTokens, 2);
  assert.equal(r.rate, 2 / r.originTokens);
  assert.equal(r.ratio, r.originTokens / 2);
  assert.deepEqual(r.wordLabels, [
    { word: "the", label: 0 },
    { word: "project", label: 1 },
    { word: "timeline", label: 1 },
    { word: "compressing", label: 0 },
  ]);
  // rate 0.8: q = int(100 * (1 - .8) + 1) = 20 (not 21), index .8 between .1 and .5: threshold .42.
  const r8 = await run(bert, [text], { rate: 0.8 }, probs);
  assert.equal(r8.text, "project timeline compressing");
});

Deno.test("compressPromptLlmlingua2() merges XLM-R pieces and forces single and multi-token force tokens", async () => {
  // "\n" is two XLM-R tokens (▁, \n), so it becomes [NEW0]; "." is one and stays. Words and cl100k weights:
  // ▁John .7 ×3, : .05 ×1, ▁the .1 ×3, ▁project .8 ×3, . 1.0, \n 1.0, ▁Sarah .6 ×3, ▁agree .4 ×3, . 1.0.
  // 19 values (float64: forced ones are Python floats); q 51: index 18 * .51 = 9.18 between .6 and .7, ≈ .618.
  const probs = {
    "▁John": 0.7,
    ":": 0.05,
    "▁the": 0.1,
    "▁project": 0.8,
    ".": 0.3,
    "[NEW0]": 0.2,
    "▁Sarah": 0.6,
    "▁agree": 0.4,
  };
  const text = "John: the project.\nSarah agree.";
  for (const tokenizer of [xlmr, xlmrNew]) {
    const r = await run(
      tokenizer,
      [text],
      { rate: 0.5, forceTokens: ["\n", "."], returnWordLabel: true },
      probs,
    );
    assert.equal(r.text, "John project.\n.");
    assert.deepEqual(r.wordLabels!.map((w) => w.word), [
      "John",
      ":",
      "the",
      "project",
      ".",
      "\n",
      "Sarah",
      "agree",
      ".",
    ]);
    assert.deepEqual(r.wordLabels!.map((w) => w.label), [1, 0, 0, 1, 1, 1, 0, 0, 1]);
  }
});

Deno.test("compressPromptLlmlingua2() with forceReserveDigit keeps words containing a digit", async () => {
  // the .3, 2024 → 1.0 (2 cl100k tokens), rate .2: weighted [.3, 1, 1, .2], index 1.53: threshold ≈ .671.
  const probs = { the: 0.3, "2024": 0.1, rate: 0.2 };
  assert.equal((await run(bert, ["the 2024 rate"], { forceReserveDigit: true }, probs)).text, "2024");
  // Without it: [.3, .1, .1, .2], threshold ≈ .153.
  assert.equal((await run(bert, ["the 2024 rate"], {}, probs)).text, "the rate");
});

Deno.test("compressPromptLlmlingua2() with dropConsecutive drops a repeated force token with nothing kept between", async () => {
  // Words the .9, . 1, . 1, project .1, . 1, timeline .8. First threshold: percentile 50 of them ≈ .95; nothing
  // between the dots exceeds it, so the 2nd and 3rd "." get 0. Then [.9, 1, 0, .1, 0, .8], q 51: ≈ .485.
  const probs = { the: 0.9, project: 0.1, timeline: 0.8 };
  const text = "the . . project . timeline";
  const r = await run(
    bert,
    [text],
    { forceTokens: ["."], dropConsecutive: true, returnWordLabel: true },
    probs,
  );
  assert.equal(r.text, "the. timeline");
  assert.deepEqual(r.wordLabels!.map((w) => w.label), [1, 1, 0, 0, 0, 1]);
  // Without it the three forced dots are the only words above the threshold (≈ .955).
  assert.equal((await run(bert, [text], { forceTokens: ["."] }, probs)).text, "...");
});

Deno.test("compressPromptLlmlingua2() takes the first piece's probability with tokenToWord first", async () => {
  const probs = { the: 0.45, compress: 0.2, "##ing": 0.8, model: 0.4 };
  // mean: compressing .5, weighted [.45, .5, .5, .4]: threshold ≈ .4765 keeps it alone; first: compressing .2,
  // weighted [.45, .2, .2, .4]: threshold ≈ .306 keeps "the" and "model".
  assert.equal((await run(bert, ["the compressing model"], {}, probs)).text, "compressing");
  assert.equal(
    (await run(bert, ["the compressing model"], { tokenToWord: "first" }, probs)).text,
    "the model",
  );
});

Deno.test("compressPromptLlmlingua2() filters contexts by their mean no-force word probability, keeping order", async () => {
  // Scores: c0 mean(.9, .8) = .85; c1 mean(.5, first piece .1 repeated: .1) = .3 (the reference's stale variable;
  // the true mean would be .5 and keep c1 instead of c2); c2 mean(.5, .4) = .45. Rate .5 → context rate .75,
  // percentile int(100 * .25) = 25 of [.3, .45, .85] = .375: c0 and c2 stay. Then each keeps its top word.
  const probs = {
    the: 0.9,
    project: 0.8,
    timeline: 0.5,
    compress: 0.1,
    "##ing": 0.9,
    keep: 0.5,
    words: 0.4,
  };
  const contexts = ["the project", "timeline compressing", "keep words"];
  const r = await run(
    bert,
    contexts,
    { rate: 0.5, useContextLevelFilter: true, returnWordLabel: true },
    probs,
  );
  assert.deepEqual(r.keptContexts, [0, 2]);
  assert.deepEqual(r.contexts, ["the", "keep"]);
  assert.equal(r.text, "the\n\nkeep");
  assert.equal(r.originTokens, contexts.reduce((n, c) => n + cl100kCount(c), 0));
  assert.deepEqual(r.wordLabels, [
    { word: "the", label: 1 },
    { word: "project", label: 0 },
    { word: "timeline", label: 0 },
    { word: "compressing", label: 0 },
    { word: "keep", label: 1 },
    { word: "words", label: 0 },
  ]);
  // forceContextIds keeps c1 whatever its score; one context disables the filter.
  const forced = await run(bert, contexts, { useContextLevelFilter: true, forceContextIds: [1] }, probs);
  assert.deepEqual(forced.keptContexts, [0, 1, 2]);
  const single = await run(bert, ["the project"], { useContextLevelFilter: true }, probs);
  assert.deepEqual(single.keptContexts, [0]);
});

Deno.test("compressPromptLlmlingua2() with targetToken and the context filter derives both budgets", async () => {
  const probs = { the: 0.9, project: 0.8, timeline: 0.5, compress: 0.1, "##ing": 0.9, keep: 0.5, words: 0.4 };
  const contexts = ["the project", "timeline compressing", "keep words"];
  // targetToken 1 → context target 2 tokens of 7: context rate 2/7, percentile int(100 * 5/7) = 71 of the scores
  // [.3, .45, .85] ≈ .656: c0 alone; then rate = min(1 / 2, 1) on its 2 tokens.
  const r = await run(bert, contexts, { targetToken: 1, useContextLevelFilter: true }, probs);
  assert.deepEqual(r.keptContexts, [0]);
  assert.equal(r.text, "the");
});

Deno.test("compressPromptLlmlingua2() returns the chunk texts joined with nothing at rate 1", async () => {
  // With maxSeqLen 6 the text is chunked as "a b." / "c d e f." / "g" and the chunks are joined with "".
  const r = await run(bert, ["a b . c d e f . g"], { rate: 1, maxSeqLen: 6, returnWordLabel: true }, {});
  assert.equal(r.text, "a b.c d e f.g");
  assert.deepEqual(r.wordLabels!.map((w) => [w.word, w.label]), [
    ["a", 1],
    ["b", 1],
    ["c", 1],
    ["d", 1],
    ["e", 1],
    ["f", 1],
    ["g", 1],
  ]);
  // A target above the input is a rate of 1.
  const big = await run(bert, ["a b . c"], { targetToken: 1000 }, {});
  assert.equal(big.text, "a b. c");
});

Deno.test("compressPromptLlmlingua2() answers empty inputs with an empty result", async () => {
  for (const contexts of [[], [""], ["   "]]) {
    const r = await run(bert, contexts, { targetToken: 10 }, {});
    assert.equal(r.text, "");
    assert.equal(r.compressedTokens, 0);
    assert.equal(r.ratio, 1);
  }
  assert.equal((await run(bert, [], {}, {})).rate, 1);
});

Deno.test("compressPromptLlmlingua2() rejects too many or empty force tokens", async () => {
  const many = Array.from({ length: 101 }, (_, i) => `t${i}`);
  await assert.rejects(run(bert, ["x"], { forceTokens: many }, {}), RangeError);
  await assert.rejects(run(bert, ["x"], { forceTokens: [""] }, {}), TypeError);
  await assert.rejects(run(bert, ["x"], { tokenToWord: "max" as "mean" }, {}), TypeError);
});

Deno.test("chunkContext() ends chunks at the last chunk-end token within maxSeqLen - 2 tokens", () => {
  // tokens a b . c d e f . g; max_len 4: st 0 → ed 4, back to "." at 2; st 3 → ed 7 is "."; st 8 → rest.
  assert.deepEqual(chunkContext("a b . c d e f . g", new Set(["."]), bert, 6), ["a b.", "c d e f.", "g"]);
  // Without a chunk end in range the chunk is max_len + 1 tokens.
  assert.deepEqual(chunkContext("a b c d e f g", new Set(["."]), bert, 6), ["a b c d e", "f g"]);
  assert.deepEqual(chunkContext("", new Set(["."]), bert, 6), []);
});

Deno.test("encodeChunk() wraps with [CLS]/[SEP] strings, truncates, and masks [PAD] text", () => {
  const b = encodeChunk("the project", bert, 512);
  assert.deepEqual(b.tokens, ["[CLS]", "the", "project", "[SEP]"]);
  assert.deepEqual([...b.ids], ["[CLS]", "the", "project", "[SEP]"].map((t) => bert.tokenToId(t)!));
  assert.deepEqual([...b.mask], [1, 1, 1, 1]);
  // XLM-R has no [CLS]/[SEP]: the reference feeds <unk> there.
  const x = encodeChunk("John", xlmr, 512);
  assert.deepEqual(x.tokens, ["<unk>", "▁John", "<unk>"]);
  assert.deepEqual([...x.ids], [xlmr.unkTokenId, xlmr.tokenToId("▁John")!, xlmr.unkTokenId]);
  // A 5-token chunk with maxSeqLen 6 loses its [SEP].
  assert.deepEqual(encodeChunk("c d e f .", bert, 6).tokens, ["[CLS]", "c", "d", "e", "f", "."]);
  assert.deepEqual([...encodeChunk("[PAD] the", bert, 512).mask], [1, 0, 1, 1]);
});

Deno.test("mergeTokensToWords() follows each family's word starts and adds probabilities in float32", () => {
  const base = {
    forceTokens: new Set<string>(),
    tokenMap: new Map<string, string>(),
    forceReserveDigit: false,
    tokenToWord: "mean" as const,
  };
  const b = mergeTokensToWords(
    ["[CLS]", "Hel", "##lo", "world", "##s", "#", "[SEP]"],
    Float32Array.of(0.5, 0.2, 0.7, 0.1, 0.3, 0.9, 0.5),
    { ...base, family: "bert", specialTokens: bert.specialTokens },
  );
  assert.deepEqual(b.words, ["Hello", "worlds", "#"]);
  assert.deepEqual(b.probs, [f(f(f(0.2) + f(0.7)) / 2), f(f(f(0.1) + f(0.3)) / 2), f(0.9)]);
  // No-force probabilities repeat the first piece's: mean(.2, .2) = .2.
  assert.deepEqual(b.probsNoForce, [f(0.2), f(0.1), f(0.9)]);
  const x = mergeTokensToWords(
    ["<unk>", "▁pro", "ject", "()", "▁x", "-.", "y", "<unk>"],
    Float32Array.of(0.5, 0.25, 0.75, 0.5, 0.5, 0.5, 0.5, 0.5),
    { ...base, family: "xlmr", specialTokens: xlmr.specialTokens },
  );
  // "()" and "-." are substrings of string.punctuation, so they start words; "y" continues one.
  assert.deepEqual(x.words, ["▁project", "()", "▁x", "-.y"]);
  assert.deepEqual(x.probs.slice(0, 1), [0.5]);
  assert.deepEqual(x.pyFloat, [false, false, false, false]);
});

Deno.test("splitWords() splits like the reference's regular expression, Unicode words included", () => {
  assert.deepEqual(splitWords("Hi, it's 3pm! a_b (x) 東京 café"), [
    "Hi",
    "it",
    "s",
    "3pm",
    "!",
    "a_b",
    "(",
    "x",
    ")",
    "東京",
    "café",
  ]);
});

Deno.test("compressPromptLlmlingua2() keeps about `rate` of the cl100k tokens of a long text", async () => {
  // Pseudo-random keep probabilities per token and position; ~2400 cl100k tokens over several chunks.
  const words =
    "the project timeline need make changes agree tight we think that this have on for with are " +
    "was at as by from or an not but all can our they what when there about which will one would more time";
  const list = words.split(" ");
  const text = Array.from(
    { length: 2400 },
    (_, i) => list[(i * 7919) % list.length] + (i % 17 === 16 ? "." : ""),
  )
    .join(" ");
  const random: KeepProbabilities = (chunks) =>
    Promise.resolve(chunks.map((c) => {
      const p = new Float32Array(c.ids.length);
      for (let j = 0; j < p.length; j++) p[j] = ((c.ids[j] * 2654435761 + j * 40503) % 1000003) / 1000003;
      return p;
    }));
  for (const tokenizer of [bert, xlmr]) {
    for (const rate of [0.33, 0.5, 0.8]) {
      const r = await compressPromptLlmlingua2([text], { rate }, {
        tokenizer,
        keepProbabilities: random,
        countTokens: cl100kCount,
      });
      assert.ok(Math.abs(r.rate - rate) < 0.05, `${tokenizer.family} rate ${rate}: kept ${r.rate}`);
    }
  }
});
