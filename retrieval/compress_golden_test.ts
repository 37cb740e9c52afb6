/**
 * Parity with the Python reference on the fixtures of `tools/make_compressor_fixtures.py` (tiny XLM-R and BERT
 * token classifiers exported to ONNX, and the outputs of a Python port of LLMLingua-2's
 * `compress_prompt_llmlingua2`). These tests are skipped, with a note, when the fixtures are missing. The default
 * (trained) compressor is tested in `compress_default_test.ts`.
 *
 * Measured with the fixtures of transformers 5.17 / tokenizers 0.23 / onnxruntime 1.30: tokenization identical
 * (every tokenize case and all 48 chunks), keep probabilities within 4.2e-7 of torch's (native 3.6e-7, wasm
 * 4.2e-7; f32 summation order), every compression identical.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadCompressor } from "./compress.ts";
import {
  compressPromptLlmlingua2,
  encodeChunk,
  type KeepProbabilities,
  type LinguaOptions,
  type LinguaResult,
} from "./lingua_algorithm.ts";
import { HfLinguaTokenizer } from "./lingua_tokenizer.ts";
import { percentile, type PercentileDtype } from "./percentile.ts";

interface GoldenCase {
  name: string;
  contexts: string[];
  options: LinguaOptions;
  expected: {
    compressed_prompt: string;
    compressed_prompt_list: string[];
    kept_contexts: number[];
    origin_tokens: number;
    compressed_tokens: number;
    word_labels?: [string, number][];
  };
  /** Smallest gap between a probability and the threshold it was compared with. */
  margin: number;
}

interface GoldenFamily {
  dir: string;
  tokenize: { text: string; tokens: string[] }[];
  decode: { tokens: string[]; text: string }[];
  chunks: { text: string; tokens: string[]; probs: number[] }[];
  cases: GoldenCase[];
}

interface Golden {
  versions: Record<string, string>;
  percentile: { values: number[]; q: number; dtype: PercentileDtype; result: number }[];
  families: Record<"xlmr" | "bert", GoldenFamily>;
}

const FIXTURES = fileURLToPath(new URL("../fixtures/compressor", import.meta.url));
const golden = await readGolden();
const ignore = golden === undefined;
if (ignore) {
  console.warn(
    "compress_golden_test.ts: fixtures/compressor/golden.json is missing; run " +
      "`python3 tools/make_compressor_fixtures.py --out fixtures/compressor` on a machine with torch",
  );
}
const hasFfi = (await Deno.permissions.query({ name: "ffi" })).state === "granted";

async function readGolden(): Promise<Golden | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(join(FIXTURES, "golden.json")));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/** The goldens' stand-in for cl100k counts: ceil(utf8 bytes / 4). */
function count(text: string): number {
  return Math.ceil(new TextEncoder().encode(text).length / 4);
}

function families(): [string, GoldenFamily][] {
  return Object.entries(golden!.families);
}

/** Keep probabilities recorded from torch, found by the chunk's token strings. */
function torchProbabilities(family: GoldenFamily): KeepProbabilities {
  const byTokens = new Map(family.chunks.map((c) => [c.tokens.join("\u0000"), c.probs]));
  return (chunks) =>
    Promise.resolve(chunks.map((c) => {
      const probs = byTokens.get(c.tokens.join("\u0000"));
      if (!probs) {
        throw new Error(`No recorded probabilities for the chunk ${JSON.stringify(c.tokens.slice(0, 12))}`);
      }
      return Float32Array.from(probs);
    }));
}

function asGolden(r: LinguaResult): GoldenCase["expected"] {
  const out: GoldenCase["expected"] = {
    compressed_prompt: r.text,
    compressed_prompt_list: r.contexts,
    kept_contexts: r.keptContexts,
    origin_tokens: r.originTokens,
    compressed_tokens: r.compressedTokens,
  };
  if (r.wordLabels) out.word_labels = r.wordLabels.map((w) => [w.word, w.label]);
  return out;
}

Deno.test({
  name: "fixture tokenizers tokenize, encode and decode like transformers",
  ignore,
  fn: async () => {
    for (const [name, family] of families()) {
      const tok = await HfLinguaTokenizer.load(join(FIXTURES, family.dir));
      assert.equal(tok.family, name);
      assert.equal(tok.virtualNewTokens, false);
      for (const c of family.tokenize) assert.deepEqual(tok.tokenize(c.text), c.tokens, `${name} ${c.text}`);
      for (const c of family.chunks) {
        assert.deepEqual(
          encodeChunk(c.text, tok, 512).tokens,
          c.tokens,
          `${name} chunk ${c.text.slice(0, 40)}`,
        );
      }
      for (const c of family.decode) assert.equal(tok.tokensToString(c.tokens), c.text, `${name} decode`);
    }
  },
});

Deno.test({
  name: "percentile() equals NumPy on the fixture machine",
  ignore,
  fn: () => {
    for (const c of golden!.percentile) {
      assert.equal(percentile(c.values, c.q, c.dtype), c.result, `${c.dtype} q=${c.q} ${c.values}`);
    }
  },
});

Deno.test({
  name: "compressPromptLlmlingua2() with torch's probabilities reproduces the Python port exactly",
  ignore,
  fn: async () => {
    for (const [name, family] of families()) {
      const tokenizer = await HfLinguaTokenizer.load(join(FIXTURES, family.dir));
      for (const c of family.cases) {
        const r = await compressPromptLlmlingua2(c.contexts, c.options, {
          tokenizer,
          keepProbabilities: torchProbabilities(family),
          countTokens: count,
        });
        assert.deepEqual(asGolden(r), c.expected, `${name} ${c.name}`);
      }
    }
  },
});

for (const backend of ["native", "wasm"] as const) {
  Deno.test({
    name:
      `fixture models on backend ${backend} give torch's probabilities and the Python port's compressions`,
    ignore: ignore || (backend === "native" && !hasFfi),
    fn: async () => {
      for (const [name, family] of families()) {
        const compressor = await loadCompressor(join(FIXTURES, family.dir), { backend, progress: false });
        const clf = compressor.classifier;
        const encoded = family.chunks.map((c) => encodeChunk(c.text, clf.tokenizer, 512));
        const probs = await clf.keepProbabilities(encoded);
        family.chunks.forEach((c, i) => {
          let worst = 0;
          for (let j = 0; j < c.probs.length; j++) {
            worst = Math.max(worst, Math.abs(probs[i][j] - c.probs[j]));
          }
          assert.ok(worst < 2e-5, `${name} chunk ${i}: |onnxruntime - torch| = ${worst}`);
        });
        for (const c of family.cases) {
          const r = asGolden(
            await compressPromptLlmlingua2(c.contexts, c.options, {
              tokenizer: clf.tokenizer,
              keepProbabilities: (chunks) => clf.keepProbabilities(chunks),
              countTokens: count,
            }),
          );
          if (c.margin >= 1e-5) {
            assert.deepEqual(r, c.expected, `${name} ${c.name}`);
          } else {
            // A probability within 1e-5 of its threshold may fall on the other side with other float rounding.
            const got = r.word_labels ?? [];
            const want = c.expected.word_labels ?? [];
            const differ = want.filter((w, i) => got[i]?.[1] !== w[1]).length;
            assert.ok(differ <= 2, `${name} ${c.name}: ${differ} labels differ (margin ${c.margin})`);
          }
        }
        await compressor.dispose();
      }
    },
  });
}
