import assert from "node:assert/strict";
import * as lancedb from "@lancedb/lancedb";
import type { Embedder } from "./embedder.ts";
import { StoreError } from "./errors.ts";
import { reciprocalRankFusion } from "./fusion.ts";
import { type KnowledgeStore, openStore, type SearchHit } from "./store.ts";

/**
 * Test double for the vector path: a bag of "concepts" hashed into 32 buckets, L2-normalised. Synonyms map to one
 * concept, so vector search finds paraphrases that full-text search cannot. (The real transformers.js embedder
 * is tested against torch goldens in embedder_test.ts.)
 */
class ConceptEmbedder implements Embedder {
  readonly dim: number;
  readonly id: string;
  calls = 0;
  static readonly SYNONYMS: Record<string, string> = {
    automobile: "car",
    vehicle: "car",
    repair: "fix",
    maintenance: "fix",
    feline: "cat",
    kitten: "cat",
    cats: "cat",
  };

  constructor(dim = 32, id = "test/concepts") {
    this.dim = dim;
    this.id = id;
  }

  embed(texts: readonly string[]): Promise<Float32Array[]> {
    this.calls++;
    return Promise.resolve(texts.map((text) => {
      const v = new Float32Array(this.dim);
      for (const word of text.toLowerCase().match(/[a-z0-9]+/g) ?? []) {
        const concept = ConceptEmbedder.SYNONYMS[word] ?? word;
        let h = 2166136261;
        for (const ch of concept) h = Math.imul(h ^ ch.charCodeAt(0), 16777619) >>> 0;
        v[h % this.dim] += 1;
      }
      const norm = Math.hypot(...v);
      return norm > 0 ? v.map((x) => x / norm) : v;
    }));
  }

  dispose(): Promise<void> {
    return Promise.resolve();
  }
}

const DOCS = [
  { id: "fox", text: "The quick brown fox jumps over the lazy dog.", metadata: { topic: "animals" } },
  {
    id: "car",
    text: "Car maintenance: change the oil and fix the brakes of the car.",
    metadata: { topic: "cars" },
  },
  { id: "paris", text: "Paris is the capital of France. The Seine flows through Paris." },
  { id: "kitten", text: "A kitten sleeps in the sun; cats like warm places." },
];

async function withStore(
  fn: (store: KnowledgeStore, dir: string) => Promise<void>,
  options: Parameters<typeof openStore>[1] = {},
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-store-" });
  const store = await openStore(dir, options);
  try {
    await fn(store, dir);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
}

function keys(hits: SearchHit[]): string[] {
  return hits.map((h) => `${h.id}#${h.chunk}`);
}

Deno.test("store: full-text only — add, search, count, round trip of text and metadata", async () => {
  await withStore(async (store) => {
    assert.equal(store.vectorSearch, false);
    assert.equal(store.dim, undefined);
    const added = await store.add(DOCS);
    assert.equal(added.documents, 4);
    assert.equal(added.chunks, 4);
    assert.deepEqual(await store.count(), { documents: 4, chunks: 4 });

    const hits = await store.search("capital of France", { k: 2 });
    assert.equal(hits[0].id, "paris");
    assert.equal(hits[0].chunk, 0);
    assert.equal(hits[0].text, DOCS[2].text);
    assert.deepEqual(hits[0].metadata, {});
    assert.equal(hits[0].mode, "fts");
    assert.ok(hits[0].score > 0);
    for (let i = 1; i < hits.length; i++) assert.ok(hits[i - 1].score >= hits[i].score);

    const fox = await store.search("lazy dog", { k: 1 });
    assert.deepEqual(fox.map((h) => [h.id, h.metadata]), [["fox", { topic: "animals" }]]);

    // Without an embedder every mode falls back to full text, and says so on each hit.
    for (const mode of ["vector", "hybrid"] as const) {
      const fallback = await store.search("capital of France", { k: 2, mode });
      assert.deepEqual(keys(fallback), keys(hits));
      assert.ok(fallback.every((h) => h.mode === "fts"));
    }
    assert.deepEqual(await store.search("zebra quantum", { k: 3 }), []);
    assert.deepEqual(await store.search("   ", { k: 3 }), []);
    // Query syntax is not interpreted: quotes, operators and field prefixes are plain words.
    const odd = await store.search('"lazy dog" AND (fox) OR text:brown', { k: 1 });
    assert.equal(odd[0].id, "fox");
  });
});

Deno.test("store: a long document becomes several chunks, all returned with its id and metadata", async () => {
  await withStore(async (store) => {
    const sentences = Array.from({ length: 40 }, (_, i) => `Sentence ${i} talks about topic${i}.`);
    await store.add([{ id: "long", text: sentences.join(" "), metadata: { n: 40 } }]);
    const { documents, chunks } = await store.count();
    assert.equal(documents, 1);
    assert.ok(chunks >= 4, `only ${chunks} chunks`);
    const hit = (await store.search("topic37", { k: 1 }))[0];
    assert.equal(hit.id, "long");
    assert.ok(hit.text.includes("topic37"));
    assert.deepEqual(hit.metadata, { n: 40 });
    assert.ok(hit.chunk > 0);
  }, { chunkTokens: 24, overlapTokens: 6 });
});

Deno.test("store: re-adding a document replaces all its chunks (upsert), repeated ids keep the last", async () => {
  await withStore(async (store) => {
    const long = Array.from({ length: 30 }, (_, i) => `Old sentence ${i} mentions walrus.`).join(" ");
    await store.add([{ id: "doc", text: long }, DOCS[0]]);
    const before = await store.count();
    assert.ok(before.chunks >= 4);

    await store.add([{ id: "doc", text: "New short text about penguins.", metadata: { v: 2 } }]);
    assert.deepEqual(await store.count(), { documents: 2, chunks: 2 });
    assert.deepEqual(await store.search("walrus", { k: 5 }), []);
    const hits = await store.search("penguins", { k: 5 });
    assert.deepEqual(hits.map((h) => [h.id, h.chunk, h.metadata]), [["doc", 0, { v: 2 }]]);

    const result = await store.add([
      { id: "dup", text: "first version mentions otters" },
      { id: "dup", text: "second version mentions beavers" },
    ]);
    assert.equal(result.documents, 1);
    assert.deepEqual(await store.search("otters", { k: 5 }), []);
    assert.equal((await store.search("beavers", { k: 5 }))[0].id, "dup");
    assert.deepEqual(await store.count(), { documents: 3, chunks: 3 });
  }, { chunkTokens: 16, overlapTokens: 0 });
});

Deno.test("store: delete removes every chunk of the given documents; ids are quoted safely", async () => {
  await withStore(async (store) => {
    const tricky = "it's a 'quoted' \\ id\") OR 1=1 --";
    await store.add([...DOCS, { id: tricky, text: "Tricky ids are stored verbatim. Mongoose." }]);
    assert.equal((await store.search("mongoose", { k: 1 }))[0].id, tricky);

    const removed = await store.delete([tricky, "fox", "no-such-id"]);
    assert.equal(removed.chunks, 2);
    assert.deepEqual(await store.count(), { documents: 3, chunks: 3 });
    assert.deepEqual(await store.search("mongoose", { k: 3 }), []);
    assert.deepEqual(await store.search("lazy dog", { k: 3 }), []);
    assert.equal((await store.search("capital", { k: 1 }))[0].id, "paris");
    assert.deepEqual((await store.delete([])).chunks, 0);
  });
});

Deno.test("store: a fresh add is found and ranked by BM25 over indexed and new rows alike", async () => {
  await withStore(async (store) => {
    // Many rows sharing one word, then one row repeating the query's rare word.
    const filler = Array.from(
      { length: 30 },
      (_, i) => ({ id: `f${i}`, text: `common filler row ${i} about weather` }),
    );
    await store.add(filler);
    await store.add([{ id: "target", text: "heron heron heron weather" }]);
    assert.equal((await store.search("heron weather", { k: 1 }))[0].id, "target");

    // A bulk load without per-batch index refresh, then one optimize: ranking is right afterwards.
    await store.add([{ id: "bulk1", text: "ibis ibis ibis" }], { optimize: false });
    await store.add([{ id: "bulk2", text: "ibis and weather" }], { optimize: false });
    await store.optimize();
    const hits = await store.search("ibis", { k: 2 });
    assert.deepEqual(hits.map((h) => h.id), ["bulk1", "bulk2"]);
    assert.ok(hits[0].score > hits[1].score);
  });
});

Deno.test("store: vector search finds paraphrases; hybrid is the RRF of the two rankings", async () => {
  const embedder = new ConceptEmbedder();
  await withStore(async (store) => {
    assert.equal(store.vectorSearch, true);
    assert.equal(store.dim, 32);
    await store.add(DOCS);

    // Full text cannot match "automobile repair"; the embedding maps it to car + fix.
    assert.deepEqual(await store.search("automobile repair", { k: 3, mode: "fts" }), []);
    const vec = await store.search("automobile repair", { k: 2, mode: "vector" });
    assert.equal(vec[0].id, "car");
    assert.equal(vec[0].mode, "vector");
    assert.ok(vec[0].score > 0.3 && vec[0].score <= 1 + 1e-6, `cosine ${vec[0].score}`);
    assert.ok(vec[0].score > vec[1].score);

    // Exact text: cosine similarity 1.
    const self = await store.search(DOCS[2].text, { k: 1, mode: "vector" });
    assert.equal(self[0].id, "paris");
    assert.ok(Math.abs(self[0].score - 1) < 1e-5);

    // Hybrid = reciprocal-rank fusion of the fts and vector rankings over the same candidates.
    const query = "sleeping feline in the sun with the brown fox";
    const fts = await store.search(query, { k: 4, mode: "fts" });
    const vector = await store.search(query, { k: 4, mode: "vector" });
    const hybrid = await store.search(query, { k: 3, mode: "hybrid", candidates: 4 });
    const expected = reciprocalRankFusion([fts, vector], (h) => `${h.id}#${h.chunk}`).slice(0, 3);
    assert.deepEqual(keys(hybrid), expected.map((f) => `${f.item.id}#${f.item.chunk}`));
    for (let i = 0; i < hybrid.length; i++) {
      assert.ok(Math.abs(hybrid[i].score - expected[i].score) < 1e-12);
      assert.equal(hybrid[i].mode, "hybrid");
    }
    assert.ok(new Set(keys(hybrid)).size === hybrid.length, "hybrid hits are unique");
    // "kitten" is found through the synonym (vector) and "fox" through words (fts): both are in the fusion.
    assert.ok(keys(hybrid).includes("kitten#0") && keys(hybrid).includes("fox#0"));
    // The default mode with an embedder is hybrid.
    assert.deepEqual(keys(await store.search(query, { k: 3, candidates: 4 })), keys(hybrid));
  }, { embedder });
});

Deno.test("store: builds a vector index past vectorIndexMinRows and still ranks exact matches first", async () => {
  // 256 dimensions: with fewer, the hashed words of two documents can collide into the same vector (a tie).
  const embedder = new ConceptEmbedder(256);
  await withStore(async (store, dir) => {
    const docs = Array.from(
      { length: 60 },
      (_, i) => ({ id: `d${i}`, text: `document ${i} word${i} word${i * 7}` }),
    );
    await store.add(docs);
    const db = await lancedb.connect(dir);
    const table = await db.openTable("chunks");
    const indices = await table.listIndices();
    table.close();
    db.close();
    assert.ok(indices.some((i) => i.columns.includes("vector")), JSON.stringify(indices));
    assert.ok(indices.some((i) => i.columns.includes("text")));
    assert.ok(indices.some((i) => i.columns.includes("doc_id")));
    const hits = await store.search(docs[17].text, { k: 1, mode: "vector" });
    assert.equal(hits[0].id, "d17");
  }, { embedder, vectorIndexMinRows: 50 });
});

Deno.test("store: reopening checks the embedder against the table", async () => {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-store-" });
  try {
    const built = await openStore(dir, { embedder: new ConceptEmbedder(32, "/models/concepts") });
    await built.add(DOCS);
    await built.close();
    await assert.rejects(() => built.search("fox"), StoreError);

    // Another dimension: refused.
    await assert.rejects(() => openStore(dir, { embedder: new ConceptEmbedder(8, "concepts") }), StoreError);
    // Another model of the same size: refused unless allowed; same model name in another place: accepted.
    await assert.rejects(
      () => openStore(dir, { embedder: new ConceptEmbedder(32, "other/model") }),
      /built with/,
    );
    const moved = await openStore(dir, { embedder: new ConceptEmbedder(32, "org/concepts@v1") });
    assert.equal(moved.vectorSearch, true);
    await moved.close();
    const allowed = await openStore(dir, {
      embedder: new ConceptEmbedder(32, "x"),
      allowEmbedderChange: true,
    });
    await allowed.close();

    // No embedder: searches fall back to full text; adding would leave rows without vectors, so it is refused.
    const plain = await openStore(dir);
    assert.equal(plain.vectorSearch, false);
    assert.equal(plain.dim, 32);
    const hits = await plain.search("capital of France", { mode: "vector", k: 1 });
    assert.deepEqual(hits.map((h) => [h.id, h.mode]), [["paris", "fts"]]);
    await assert.rejects(() => plain.add([{ id: "x", text: "y" }]), StoreError);
    await plain.close();

    // A full-text store cannot be opened with an embedder.
    const ftsOnly = await openStore(dir, { table: "plain" });
    await ftsOnly.add(DOCS);
    await ftsOnly.close();
    await assert.rejects(
      () => openStore(dir, { table: "plain", embedder: new ConceptEmbedder() }),
      /without an embedder/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("store: bad arguments are TypeErrors and RangeErrors", async () => {
  await withStore(async (store) => {
    await assert.rejects(() => store.add([{ id: "", text: "x" }]), TypeError);
    await assert.rejects(() => store.add([{ id: "a", text: "  " }]), TypeError);
    await assert.rejects(
      () => store.add([{ id: "a", text: "x", metadata: [] as unknown as Record<string, unknown> }]),
      TypeError,
    );
    await assert.rejects(() => store.add("nope" as unknown as []), TypeError);
    await assert.rejects(() => store.search("x", { k: 0 }), RangeError);
    await assert.rejects(() => store.search("x", { k: 1.5 }), RangeError);
    await assert.rejects(() => store.search("x", { mode: "bm25" as "fts" }), TypeError);
    await assert.rejects(() => store.delete([1 as unknown as string]), TypeError);
  });
  await assert.rejects(() => openStore(""), TypeError);
  await assert.rejects(() => openStore("/tmp/x", { table: "bad name" }), TypeError);
  await assert.rejects(() => openStore("/tmp/x", { chunkTokens: 8, overlapTokens: 9 }), RangeError);
});

Deno.test("store: concurrent adds and searches from one store and from two stores on one directory", async () => {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-store-" });
  const a = await openStore(dir, { chunkTokens: 10, overlapTokens: 0 });
  const b = await openStore(dir, { chunkTokens: 10, overlapTokens: 0 });
  try {
    // Each version of a document has a different number of chunks, every chunk tagged with the version.
    const version = (id: string, v: number) => ({
      id,
      text: Array.from({ length: 2 + (v % 3) }, (_, i) => `Shared marker osprey ${id} v${v} part ${i}.`).join(
        " ",
      ),
      metadata: { v },
    });
    const ids = ["r0", "r1", "r2"];
    await a.add(ids.map((id) => version(id, 0)));

    let stop = false;
    let searches = 0;
    const searcher = async (store: KnowledgeStore) => {
      while (!stop) {
        const hits = await store.search("osprey marker", { k: 50, mode: "fts" });
        searches++;
        const seen = keys(hits);
        assert.equal(new Set(seen).size, seen.length, `duplicate chunks in one search: ${seen}`);
        // One search reads one table version: all chunks of a document come from the same version.
        for (const id of ids) {
          const versions = new Set(hits.filter((h) => h.id === id).map((h) => h.metadata.v));
          assert.ok(versions.size <= 1, `${id} mixes versions ${[...versions]}`);
          const count = hits.filter((h) => h.id === id).length;
          if (count > 0) {
            assert.equal(count, 2 + (Number([...versions][0]) % 3), `${id} has a partial version`);
          }
        }
      }
    };
    const writer = async (store: KnowledgeStore, doc: string, rounds: number, offset: number) => {
      for (let v = 1; v <= rounds; v++) await store.add([version(doc, v + offset)]);
    };
    const searching = Promise.all([searcher(a), searcher(b)]);
    await Promise.all([
      writer(a, "r0", 4, 0),
      writer(b, "r1", 4, 0),
      writer(a, "r2", 3, 0),
      writer(b, "r2", 3, 10), // both stores rewrite r2: commit conflicts are retried
      b.add([{ id: "extra", text: "An extra osprey document from store b." }]),
    ]);
    stop = true;
    await searching;
    assert.ok(searches >= 2, `only ${searches} searches ran`);

    const counts = await a.count();
    assert.equal(counts.documents, 4);
    const final = await b.search("osprey", { k: 50, mode: "fts" });
    const r2 = new Set(final.filter((h) => h.id === "r2").map((h) => h.metadata.v));
    assert.equal(r2.size, 1);
    assert.ok([3, 13].includes(Number([...r2][0])), `r2 ends at version ${[...r2]}`);
    assert.equal(counts.chunks, 1 + [4, 4, Number([...r2][0])].reduce((s, v) => s + 2 + (v % 3), 0));
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});
