import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Tokenizer } from "@huggingface/tokenizers";
import { ModelLoadError } from "../engine/errors.ts";
import { writeTinyClassifier } from "./_tiny_classifier.ts";
import { alignWithRustTokenizers, detectFamily, HfLinguaTokenizer } from "./lingua_tokenizer.ts";

const dir = await Deno.makeTempDir({ prefix: "lingua_tokenizer_test_" });
const models = {
  xlmr: await writeTinyClassifier(join(dir, "xlmr"), "xlmr"),
  xlmrNew: await writeTinyClassifier(join(dir, "xlmr_new"), "xlmr", { newTokens: true }),
  bert: await writeTinyClassifier(join(dir, "bert"), "bert"),
};
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

async function library(modelDir: string): Promise<Tokenizer> {
  const json = JSON.parse(await Deno.readTextFile(join(modelDir, "tokenizer.json")));
  const config = JSON.parse(await Deno.readTextFile(join(modelDir, "tokenizer_config.json")));
  return new Tokenizer(json, config);
}

Deno.test("HfLinguaTokenizer.load() reads the family, special tokens and unknown id of each tokenizer", async () => {
  const x = await HfLinguaTokenizer.load(models.xlmr.dir);
  assert.equal(x.family, "xlmr");
  assert.deepEqual([...x.specialTokens].sort(), ["</s>", "<mask>", "<pad>", "<s>", "<unk>"]);
  assert.equal(x.unkTokenId, 3);
  assert.equal(x.padTokenId, 1);
  assert.ok(x.virtualNewTokens);
  const b = await HfLinguaTokenizer.load(models.bert.dir);
  assert.equal(b.family, "bert");
  assert.deepEqual([...b.specialTokens].sort(), ["[CLS]", "[MASK]", "[PAD]", "[SEP]", "[UNK]"]);
  assert.equal(b.unkTokenId, 1);
  assert.equal((await HfLinguaTokenizer.load(models.xlmrNew.dir)).virtualNewTokens, false);
  assert.equal((await HfLinguaTokenizer.load(models.bert.dir, { family: "xlmr" })).family, "xlmr");
});

Deno.test("HfLinguaTokenizer tokenizes and decodes like its tokenizer.json", async () => {
  const text = "John: So, um, I've been thinking about the project timeline.";
  for (const m of [models.xlmr, models.bert]) {
    const tok = await HfLinguaTokenizer.load(m.dir);
    const lib = await library(m.dir);
    const tokens = tok.tokenize(text);
    assert.deepEqual(tokens, lib.tokenize(text));
    assert.equal(tok.tokensToString(tokens), lib.decoder!.decode(tokens));
    for (const t of tokens) assert.equal(tok.idToToken(tok.tokenToId(t)!), t);
  }
  const x = await HfLinguaTokenizer.load(models.xlmr.dir);
  assert.equal(x.tokensToString(["▁John", ":", "▁the", "▁pro", "ject", "."]), "John: the project.");
  const b = await HfLinguaTokenizer.load(models.bert.dir);
  assert.equal(b.tokensToString(["John", ":", "the", "pro", "##ject", "."]), "John : the project.");
});

Deno.test("HfLinguaTokenizer handles [NEW{i}] as virtual tokens when the vocabulary lacks them", async () => {
  const x = await HfLinguaTokenizer.load(models.xlmr.dir);
  const xn = await HfLinguaTokenizer.load(models.xlmrNew.dir);
  const text = "the answer is[NEW7] 18[NEW99][NEW100]";
  // Split out like added tokens, as the reference's tokenizer does with its real [NEW] tokens.
  assert.deepEqual(x.tokenize(text).slice(0, 4), ["▁the", "▁answer", "▁is", "[NEW7]"]);
  assert.deepEqual(x.tokenize(text).slice(0, 7), xn.tokenize(text).slice(0, 7));
  assert.equal(x.tokenToId("[NEW7]"), x.vocabSize + 7);
  assert.equal(x.idToToken(x.vocabSize + 7), "[NEW7]");
  assert.equal(x.tokenToId("[NEW100]"), undefined);
  assert.equal(x.tokenToId("[NEW07]"), undefined);
  assert.equal(xn.tokenToId("[NEW7]"), xn.vocabSize - 100 + 7);
});

Deno.test("HfLinguaTokenizer tokenizes long texts in segments that give the same tokens", async () => {
  const words = "the project timeline need make changes agree tight we I it so um well".split(" ");
  const long = Array.from({ length: 4000 }, (_, i) => words[(i * 7) % words.length]).join(" ") + ".";
  assert.ok(long.length > 16384);
  for (const m of [models.xlmr, models.bert]) {
    const tok = await HfLinguaTokenizer.load(m.dir);
    const lib = await library(m.dir);
    assert.deepEqual(tok.tokenize(long), lib.tokenize(long));
  }
  // Far longer than the library can take in one piece (it overflows its stack), Chinese without spaces included.
  const x = await HfLinguaTokenizer.load(models.xlmr.dir);
  const huge = "你好世界。".repeat(40000);
  const tokens = x.tokenize(huge);
  assert.ok(tokens.length >= 80000);
  assert.equal(tokens.filter((t) => t === "世").length, 40000);
});

Deno.test("HfLinguaTokenizer runs a Metaspace split: a word's pieces do not depend on the text before it", async () => {
  // fixtures/compressor/xlmr (trained by tools/make_compressor_fixtures.py): "0"+"00" and "00"+"0" score the same.
  // Rust tokenizes "▁$10,000" alone and gives "0", "00"; searching the whole text at once, as the JavaScript
  // Metaspace does, rounds the long sums so that this text gives "00", "0" (what failed the golden test).
  const fixture = fileURLToPath(new URL("../fixtures/compressor/xlmr", import.meta.url));
  const tok = await HfLinguaTokenizer.load(fixture);
  const text =
    "Recommendation to increase appropriation in the special advertising and promotion fund group " +
    "and the city manager department by $10,000 to";
  assert.deepEqual(tok.tokenize(text), text.split(" ").flatMap((w) => tok.tokenize(w)));
  assert.deepEqual(tok.tokenize(text).slice(-6), ["▁$", "10", ",", "0", "00", "▁to"]);
  // Added tokens split the text into sections; each starts a word again ("always" prepends ▁ to each).
  assert.deepEqual(tok.tokenize("is[NEW6] 42"), ["▁is", "[NEW6]", "▁4", "2"]);
});

Deno.test("alignWithRustTokenizers() rewrites Metaspace pre-tokenizers as Rust runs them", () => {
  const meta = { type: "Metaspace", replacement: "▁", prepend_scheme: "always", split: true };
  const split = alignWithRustTokenizers({ model: {}, pre_tokenizer: meta });
  const seq = split.pre_tokenizer as { type: string; pretokenizers: Record<string, unknown>[] };
  assert.equal(seq.type, "Sequence");
  assert.deepEqual(seq.pretokenizers[0], { ...meta, split: false });
  assert.equal(seq.pretokenizers[1].type, "Split");
  assert.equal(meta.split, true, "the input is not modified");
  // split defaults to true; nested in a Sequence; legacy add_prefix_space: false means "never".
  const legacy = alignWithRustTokenizers({
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [{ type: "WhitespaceSplit" }, { type: "Metaspace", add_prefix_space: false }],
    },
  });
  const parts = (legacy.pre_tokenizer as { pretokenizers: { type: string; pretokenizers?: unknown[] }[] })
    .pretokenizers;
  assert.equal(parts[0].type, "WhitespaceSplit");
  assert.deepEqual(parts[1].pretokenizers![0], {
    type: "Metaspace",
    add_prefix_space: false,
    split: false,
    prepend_scheme: "never",
  });
  // Nothing to change: the same object.
  const bert = { pre_tokenizer: { type: "BertPreTokenizer" } };
  assert.equal(alignWithRustTokenizers(bert), bert);
  const noSplit = { pre_tokenizer: { type: "Metaspace", split: false, prepend_scheme: "first" } };
  assert.equal(alignWithRustTokenizers(noSplit), noSplit);
  // The rewritten tokenizer splits before every ▁, keeping a first piece without one.
  const lib = new Tokenizer(
    alignWithRustTokenizers({
      model: { type: "WordLevel", vocab: { "[UNK]": 0 }, unk_token: "[UNK]" },
      normalizer: null,
      pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: "never", split: true },
      post_processor: null,
      decoder: null,
      added_tokens: [],
    }),
    {},
  );
  assert.deepEqual(lib.pre_tokenizer!.pre_tokenize_text("ab cd  e", {}), ["ab", "▁cd", "▁", "▁e"]);
});

Deno.test("detectFamily() recognises WordPiece and SentencePiece tokenizers and rejects others", () => {
  assert.equal(detectFamily({ model: { type: "WordPiece" } }), "bert");
  assert.equal(detectFamily({ model: { type: "Unigram" } }), "xlmr");
  assert.equal(detectFamily({ model: { type: "BPE" }, pre_tokenizer: { type: "Metaspace" } }), "xlmr");
  assert.throws(
    () => detectFamily({ model: { type: "BPE" }, pre_tokenizer: { type: "ByteLevel" } }),
    ModelLoadError,
  );
});

Deno.test("HfLinguaTokenizer.load() reports missing and broken files", async () => {
  await assert.rejects(HfLinguaTokenizer.load(join(dir, "nothing")), ModelLoadError);
  const broken = join(dir, "broken");
  await Deno.mkdir(broken);
  await Deno.writeTextFile(join(broken, "tokenizer.json"), "{not json");
  await Deno.writeTextFile(join(broken, "tokenizer_config.json"), "{}");
  await assert.rejects(HfLinguaTokenizer.load(broken), /Cannot parse/);
});
