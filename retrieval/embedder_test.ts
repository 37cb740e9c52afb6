import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { loadEmbedder, meanPool } from "./embedder.ts";
import { EmbedderError } from "./errors.ts";
import { openStore } from "./store.ts";

const FIXTURE = fileURLToPath(new URL("../fixtures/embedder", import.meta.url));
const GOLDEN = `${FIXTURE}/golden.json`;

interface Golden {
  dim: number;
  max_length: number;
  texts: string[];
  input_ids: number[][];
  embeddings: number[][];
}

function fixturePresent(): boolean {
  try {
    return Deno.statSync(GOLDEN).isFile && Deno.statSync(`${FIXTURE}/onnx/model.onnx`).isFile;
  } catch {
    return false;
  }
}

const ignore = !fixturePresent();
if (ignore) {
  console.warn(
    "embedder_test: fixtures/embedder is absent, so the golden tests are skipped; " +
      "make it with `python3 tools/make_embedder.py --out fixtures/embedder` (torch, transformers, onnx)",
  );
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

Deno.test("meanPool: mean over the attention mask, L2-normalised, padding ignored", () => {
  // hidden [2, 3, 2]: row 0 has tokens 0 and 1, row 1 has token 0 only; padded positions hold junk.
  const hidden = new Float32Array([1, 2, 3, 4, 100, 100, 0, -5, 7, 7, 9, 9]);
  const [a, b] = meanPool(hidden, [1, 1, 0, 1, 0, 0], 2, 3, 2);
  // Row 0: mean (2, 3) → / sqrt(13).
  assert.ok(maxAbsDiff(a, [2 / Math.sqrt(13), 3 / Math.sqrt(13)]) < 1e-7);
  assert.ok(maxAbsDiff(b, [0, -1]) < 1e-7);
  // bigint masks (as transformers.js tensors hold them) and an all-padding row.
  const [c, d] = meanPool(hidden, [1n, 1n, 0n, 0n, 0n, 0n], 2, 3, 2);
  assert.ok(maxAbsDiff(c, a) < 1e-7);
  assert.deepEqual(Array.from(d), [0, 0]);
  assert.throws(() => meanPool(hidden, [1, 1], 2, 3, 2), RangeError);
  assert.throws(() => meanPool(hidden, [1, 1, 1, 1, 1, 1], 2, 3, 3), RangeError);
});

Deno.test({
  name: "embedder: transformers.js embeddings match torch's goldens (batched with padding, truncation)",
  ignore,
  async fn() {
    const golden: Golden = JSON.parse(await Deno.readTextFile(GOLDEN));
    // Batch of 3 so that texts of different lengths share padded batches.
    const embedder = await loadEmbedder(FIXTURE, { batchSize: 3 });
    try {
      assert.equal(embedder.dim, golden.dim);
      assert.equal(embedder.id, FIXTURE);
      const vectors = await embedder.embed(golden.texts);
      assert.equal(vectors.length, golden.texts.length);
      vectors.forEach((v, i) => {
        const diff = maxAbsDiff(v, golden.embeddings[i]);
        assert.ok(
          diff < 1e-4,
          `text ${i} (${JSON.stringify(golden.texts[i].slice(0, 30))}): max |diff| ${diff}`,
        );
        const norm = Math.hypot(...v);
        assert.ok(Math.abs(norm - 1) < 1e-5);
      });
      // One at a time gives the same vectors as in a padded batch.
      for (const i of [2, 6]) {
        const [single] = await embedder.embed([golden.texts[i]]);
        assert.ok(maxAbsDiff(single, vectors[i]) < 1e-5);
      }
      // The long text was truncated to max_length keeping [CLS] … [SEP]; the golden ids show it.
      const long = golden.input_ids[6];
      assert.equal(long.length, golden.max_length);
      assert.deepEqual([long[0], long.at(-1)], [golden.input_ids[0][0], golden.input_ids[0].at(-1)]);
      assert.deepEqual(await embedder.embed([]), []);
      await assert.rejects(() => embedder.embed([1 as unknown as string]), TypeError);
    } finally {
      await embedder.dispose();
    }
    await assert.rejects(() => embedder.embed(["x"]), EmbedderError);
  },
});

Deno.test({
  name: "embedder: a store with the fixture embedder finds a chunk by its own text",
  ignore,
  async fn() {
    const embedder = await loadEmbedder(FIXTURE);
    const dir = await Deno.makeTempDir({ prefix: "edgemix-store-" });
    try {
      const store = await openStore(dir, { embedder });
      const docs = [
        { id: "a", text: "Hybrid search fuses full-text and vector rankings." },
        { id: "b", text: "Cats sleep in the sun. Dogs bark at the mail carrier." },
        { id: "c", text: "The capital of France is Paris." },
      ];
      await store.add(docs);
      for (const doc of docs) {
        const [hit] = await store.search(doc.text, { k: 1, mode: "vector" });
        assert.equal(hit.id, doc.id);
        assert.ok(Math.abs(hit.score - 1) < 1e-4, `cosine ${hit.score}`);
      }
      const hybrid = await store.search("capital of France", { k: 3 });
      assert.equal(hybrid[0].id, "c");
      assert.equal(hybrid[0].mode, "hybrid");
      await store.close();
    } finally {
      await embedder.dispose();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("embedder: a source that is neither a directory nor a repo id, or an uncached repo offline, fails", async () => {
  await assert.rejects(() => loadEmbedder("not a/valid/source"), EmbedderError);
  const cacheDir = await Deno.makeTempDir({ prefix: "edgemix-cache-" });
  try {
    await assert.rejects(
      () => loadEmbedder("edgemix-test/no-such-model", { offline: true, cacheDir }),
      (e: unknown) => e instanceof EmbedderError && e.source === "edgemix-test/no-such-model",
    );
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
  await assert.rejects(() => loadEmbedder(""), TypeError);
  await assert.rejects(() => loadEmbedder(FIXTURE, { batchSize: 0 }), RangeError);
  await assert.rejects(() => loadEmbedder(FIXTURE, { maxTokens: 1 }), RangeError);
});
