import assert from "node:assert/strict";
import { join } from "node:path";
import { ModelLoadError } from "./errors.ts";
import { HfTokenizer, loadTokenizer, TokenizerLoadError } from "./tokenizer.ts";

const FIXTURES = "fixtures/models";
const MODELS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe"] as const;

interface TokenizerCase {
  text: string;
  ids: number[];
  decoded: string;
  decoded_skip_special: string;
}

interface Golden {
  prompt: string;
  prompt_ids: number[];
  tokenizer_cases: TokenizerCase[];
}

function readJson(path: string): Record<string, unknown> {
  return JSON.parse(Deno.readTextFileSync(path));
}

/** The eos ids of `config.json` and `generation_config.json`, as the model loader passes them. */
function modelEosIds(dir: string): number[] {
  const ids: number[] = [];
  for (const file of ["config.json", "generation_config.json"]) {
    const value = readJson(join(dir, file)).eos_token_id;
    if (typeof value === "number") ids.push(value);
    if (Array.isArray(value)) ids.push(...value);
  }
  return ids;
}

for (const name of MODELS) {
  const dir = join(FIXTURES, name);
  const golden = readJson(join(dir, "golden.json")) as unknown as Golden;

  Deno.test(`${name}: every tokenizer case matches transformers (ids and both decodes)`, async () => {
    const tok = await loadTokenizer(dir, { eosTokenIds: modelEosIds(dir) });
    assert.ok(tok instanceof HfTokenizer);
    assert.ok(golden.tokenizer_cases.length >= 8);
    for (const c of golden.tokenizer_cases) {
      const label = JSON.stringify(c.text);
      assert.deepEqual(tok.encode(c.text), c.ids, `encode ${label}`);
      assert.deepEqual(tok.encode(c.text, { addSpecialTokens: true }), c.ids, `encode ${label}`);
      assert.equal(tok.decode(c.ids), c.decoded, `decode ${label}`);
      assert.equal(tok.decode(c.ids, { skipSpecialTokens: false }), c.decoded, `decode ${label}`);
      assert.equal(
        tok.decode(c.ids, { skipSpecialTokens: true }),
        c.decoded_skip_special,
        `decode ${label} skipping special tokens`,
      );
    }
  });

  Deno.test(`${name}: prompt ids match transformers`, async () => {
    const tok = await loadTokenizer(dir);
    assert.deepEqual(tok.encode(golden.prompt), golden.prompt_ids);
  });

  Deno.test(`${name}: special ids and vocabulary size`, async () => {
    const tok = await loadTokenizer(dir, { eosTokenIds: modelEosIds(dir) });
    const config = readJson(join(dir, "config.json"));
    assert.equal(tok.vocabSize, config.vocab_size);
    assert.equal(tok.hasChatTemplate, true);
    if (name === "mixtral") {
      assert.equal(tok.bosTokenId, 1);
      assert.deepEqual(tok.eosTokenIds, [2]);
    } else {
      assert.equal(tok.bosTokenId, undefined);
      assert.deepEqual(tok.eosTokenIds, [0]);
    }
    assert.ok(Object.isFrozen(tok.eosTokenIds));
  });
}

Deno.test("mixtral: addSpecialTokens false leaves out the BOS the post-processor adds", async () => {
  const dir = join(FIXTURES, "mixtral");
  const golden = readJson(join(dir, "golden.json")) as unknown as Golden;
  const tok = await loadTokenizer(dir);
  for (const c of golden.tokenizer_cases) {
    assert.equal(c.ids[0], 1);
    assert.deepEqual(tok.encode(c.text, { addSpecialTokens: false }), c.ids.slice(1), JSON.stringify(c.text));
  }
});

Deno.test("byte-level fixtures: addSpecialTokens false changes nothing (no post-processor template)", async () => {
  const dir = join(FIXTURES, "olmoe");
  const golden = readJson(join(dir, "golden.json")) as unknown as Golden;
  const tok = await loadTokenizer(dir);
  for (const c of golden.tokenizer_cases) {
    assert.deepEqual(tok.encode(c.text, { addSpecialTokens: false }), c.ids, JSON.stringify(c.text));
  }
});

Deno.test("ChatML special tokens in text are matched as single added tokens", async () => {
  const tok = await loadTokenizer(join(FIXTURES, "qwen3_moe"));
  const ids = tok.encode("<|im_start|>assistant\n");
  assert.equal(ids[0], 1);
  assert.equal(tok.decode(ids), "<|im_start|>assistant\n");
  assert.equal(tok.decode([2, 0]), "<|im_end|><|endoftext|>");
  assert.equal(tok.decode([2, 0], { skipSpecialTokens: true }), "");
});

Deno.test("decode: an empty list is the empty string; unknown ids are skipped; bad ids throw", async () => {
  const tok = await loadTokenizer(join(FIXTURES, "olmoe"));
  assert.equal(tok.decode([]), "");
  assert.equal(tok.decode([], { skipSpecialTokens: true }), "");
  const hello = tok.encode("Hello");
  assert.equal(tok.decode([...hello, tok.vocabSize, 1_000_000]), "Hello");
  assert.equal(tok.decode([tok.vocabSize]), "");
  assert.throws(() => tok.decode([-1]), RangeError);
  assert.throws(() => tok.decode([1.5]), RangeError);
});

Deno.test("eosTokenIds: the tokenizer's eos first, then the given ids, de-duplicated", async () => {
  const tok = await loadTokenizer(join(FIXTURES, "mixtral"), { eosTokenIds: [2, 7, 2, 9, 7] });
  assert.deepEqual(tok.eosTokenIds, [2, 7, 9]);
  const plain = await loadTokenizer(join(FIXTURES, "mixtral"));
  assert.deepEqual(plain.eosTokenIds, [2]);
  await assert.rejects(() => loadTokenizer(join(FIXTURES, "mixtral"), { eosTokenIds: [-1] }), RangeError);
});

const MIXTRAL_JSON = Deno.readTextFileSync(join(FIXTURES, "mixtral", "tokenizer.json"));

Deno.test("special tokens may be objects {content} in tokenizer_config.json", () => {
  const tok = new HfTokenizer("m", {
    "tokenizer.json": MIXTRAL_JSON,
    "tokenizer_config.json": JSON.stringify({
      bos_token: { __type: "AddedToken", content: "<s>", special: true },
      eos_token: { content: "</s>" },
      unk_token: null,
    }),
  });
  assert.equal(tok.bosTokenId, 1);
  assert.deepEqual(tok.eosTokenIds, [2]);
});

Deno.test("without tokenizer_config.json there are no bos/eos ids and no chat template", () => {
  const tok = new HfTokenizer("m", { "tokenizer.json": MIXTRAL_JSON }, { eosTokenIds: [2] });
  assert.equal(tok.bosTokenId, undefined);
  assert.deepEqual(tok.eosTokenIds, [2]);
  assert.equal(tok.hasChatTemplate, false);
  // The post-processor still adds BOS.
  assert.deepEqual(tok.encode("")[0], 1);
});

Deno.test("clean_up_tokenization_spaces defaults to false, as in transformers, and is honoured when set", () => {
  const dir = join(FIXTURES, "olmoe");
  const json = Deno.readTextFileSync(join(dir, "tokenizer.json"));
  const plain = new HfTokenizer(dir, { "tokenizer.json": json });
  const ids = plain.encode("a , b .");
  assert.equal(plain.decode(ids), "a , b .");
  const cleaned = new HfTokenizer(dir, {
    "tokenizer.json": json,
    "tokenizer_config.json": JSON.stringify({ clean_up_tokenization_spaces: true }),
  });
  assert.equal(cleaned.decode(ids), "a, b.");
});

Deno.test("a missing directory is a TokenizerLoadError that names it", async () => {
  const dir = join(FIXTURES, "no_such_model");
  await assert.rejects(() => loadTokenizer(dir), (e: unknown) => {
    assert.ok(e instanceof TokenizerLoadError);
    assert.ok(e instanceof ModelLoadError);
    assert.equal(e.name, "TokenizerLoadError");
    assert.equal(e.file, join(dir, "tokenizer.json"));
    assert.match(e.message, /^Cannot load the tokenizer: the directory .*no_such_model does not exist$/);
    return true;
  });
});

Deno.test("a missing tokenizer.json is a TokenizerLoadError that names the path", async () => {
  // engine/ exists and holds no tokenizer.json.
  await assert.rejects(() => loadTokenizer("engine"), (e: unknown) => {
    assert.ok(e instanceof TokenizerLoadError);
    assert.equal(e.file, join("engine", "tokenizer.json"));
    assert.equal(e.message, `Cannot load the tokenizer: ${join("engine", "tokenizer.json")} does not exist`);
    return true;
  });
});

Deno.test("a directory that is a file is a TokenizerLoadError", async () => {
  const dir = join(FIXTURES, "mixtral", "config.json");
  await assert.rejects(() => loadTokenizer(dir), (e: unknown) => {
    assert.ok(e instanceof TokenizerLoadError);
    assert.equal(e.file, join(dir, "tokenizer.json"));
    assert.ok(e.message.includes(join(dir, "tokenizer.json")), e.message);
    return true;
  });
});

Deno.test("tokenizer.json that is not valid JSON: the error says it could not be parsed", () => {
  assert.throws(() => new HfTokenizer("m", { "tokenizer.json": '{"model": ' }), (e: unknown) => {
    assert.ok(e instanceof TokenizerLoadError);
    assert.equal(e.file, join("m", "tokenizer.json"));
    assert.match(e.message, /^Cannot parse m\/tokenizer\.json: it is not valid JSON \(.+\)$/);
    assert.ok(e.cause instanceof SyntaxError);
    return true;
  });
});

Deno.test("tokenizer.json that is JSON but not a tokenizer is a TokenizerLoadError", () => {
  for (const text of ["[1, 2]", "null", '{"version": "1.0"}']) {
    assert.throws(() => new HfTokenizer("m", { "tokenizer.json": text }), (e: unknown) => {
      assert.ok(e instanceof TokenizerLoadError, text);
      assert.equal(e.file, join("m", "tokenizer.json"));
      return true;
    });
  }
  const unknownModel = JSON.stringify({ ...JSON.parse(MIXTRAL_JSON), model: { type: "Nonsense" } });
  assert.throws(() => new HfTokenizer("m", { "tokenizer.json": unknownModel }), (e: unknown) => {
    assert.ok(e instanceof TokenizerLoadError);
    assert.match(e.message, /^Cannot load m\/tokenizer\.json: the tokenizer could not be built \(.+\)$/);
    return true;
  });
});

Deno.test("tokenizer_config.json that is not valid JSON or has bad token fields is a TokenizerLoadError", () => {
  assert.throws(
    () => new HfTokenizer("m", { "tokenizer.json": MIXTRAL_JSON, "tokenizer_config.json": "{bos_token:" }),
    (e: unknown) => {
      assert.ok(e instanceof TokenizerLoadError);
      assert.equal(e.file, join("m", "tokenizer_config.json"));
      assert.match(e.message, /^Cannot parse m\/tokenizer_config\.json: it is not valid JSON/);
      return true;
    },
  );
  assert.throws(
    () =>
      new HfTokenizer("m", {
        "tokenizer.json": MIXTRAL_JSON,
        "tokenizer_config.json": JSON.stringify({ eos_token: 2 }),
      }),
    (e: unknown) => {
      assert.ok(e instanceof TokenizerLoadError);
      assert.equal(
        e.message,
        `Cannot read m/tokenizer_config.json: "eos_token" must be a string or an object with a "content" string`,
      );
      return true;
    },
  );
});
