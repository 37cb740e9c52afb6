import assert from "node:assert/strict";
import { join } from "node:path";
import {
  DEFAULT_DOCUMENTS,
  defaultDbDir,
  edgemixHome,
  ensureIngested,
  ingestedMarker,
  ingestFile,
} from "./knowledge_base.ts";
import { openStore } from "./store.ts";

const env = (vars: Record<string, string>) => (name: string) => vars[name];

Deno.test("edgemixHome: EDGEMIX_HOME, then XDG_CACHE_HOME/edgemix, then ~/.cache/edgemix", () => {
  assert.equal(edgemixHome(env({ EDGEMIX_HOME: "/data/em", XDG_CACHE_HOME: "/x", HOME: "/h" })), "/data/em");
  assert.equal(edgemixHome(env({ XDG_CACHE_HOME: "/x", HOME: "/h" })), join("/x", "edgemix"));
  assert.equal(edgemixHome(env({ HOME: "/h" })), join("/h", ".cache", "edgemix"));
  assert.equal(defaultDbDir(env({ HOME: "/h" })), join("/h", ".cache", "edgemix", "db"));
  assert.throws(() => edgemixHome(env({})), /set EDGEMIX_HOME or pass --db/);
  assert.equal(ingestedMarker("/h/.cache/edgemix/db/"), join("/h/.cache/edgemix", "db.ingested.json"));
});

Deno.test("the default documents are the world's knowledge base", async () => {
  const first = (await Deno.readTextFile(DEFAULT_DOCUMENTS)).split("\n")[0];
  assert.match(JSON.parse(first).id, /^doc-/);
});

Deno.test("ensureIngested loads once, again after an interrupted load or an emptied store", async () => {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-kb-test-" });
  try {
    const docs = join(dir, "docs.jsonl");
    await Deno.writeTextFile(
      docs,
      [
        { id: "a", text: "Alpha river flows into the Ormic Sea." },
        { id: "b", text: "Beta mountain is 4,213 m high." },
        { id: "c", text: "Gamma town was founded in 1802." },
      ].map((d) => JSON.stringify(d)).join("\n") + "\n",
    );
    const db = join(dir, "db");
    const marker = ingestedMarker(db);
    const store = await openStore(db);
    try {
      const progress: [number, number][] = [];
      const first = await ensureIngested(store, docs, marker, {
        batch: 2,
        onProgress: (d, t) => progress.push([d, t]),
      });
      assert.deepEqual(first, { ingested: true, documents: 3, chunks: 3 });
      assert.deepEqual(progress, [[2, 3], [3, 3]]);
      assert.equal((await store.search("Ormic Sea", { k: 1 }))[0].id, "a");

      assert.deepEqual(await ensureIngested(store, docs, marker), {
        ingested: false,
        documents: 3,
        chunks: 0,
      });

      // No marker (a load that stopped half way): load again, as an upsert.
      await Deno.remove(marker);
      assert.equal((await ensureIngested(store, docs, marker)).ingested, true);
      assert.deepEqual(await store.count(), { documents: 3, chunks: 3 });

      // An emptied store is loaded again even with its marker.
      await store.delete(["a", "b", "c"]);
      assert.deepEqual(await ensureIngested(store, docs, marker), {
        ingested: true,
        documents: 3,
        chunks: 3,
      });
    } finally {
      await store.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ingestFile writes nothing when a line is malformed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-kb-test-" });
  try {
    const docs = join(dir, "bad.jsonl");
    await Deno.writeTextFile(docs, '{"id":"a","text":"fine"}\n{"id":"b"}\n');
    const store = await openStore(join(dir, "db"));
    try {
      await assert.rejects(() => ingestFile(store, docs), /bad\.jsonl:2: "text" must be/);
      assert.deepEqual(await store.count(), { documents: 0, chunks: 0 });
      await assert.rejects(() => ingestFile(store, docs, { batch: 0 }), RangeError);
    } finally {
      await store.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
