/**
 * The knowledge store on object storage: two store objects (two service replicas) share one LanceDB table at
 * an `s3://` URI served by s3rver, a local S3 implementation (npm `s3rver`), so the object-storage code path of
 * LanceDB runs for real: writes from either replica are read by the other, and deletes are seen everywhere.
 * s3rver has no conditional writes (If-None-Match), on which LanceDB's commits rely for concurrent writers
 * (docs/retrieval.md): with it, two commits at the same instant can overwrite each other, so the replicas
 * here write in turn.
 */

import assert from "node:assert/strict";
import S3rver from "s3rver";
import { openStore } from "./store.ts";

Deno.test("openStore on s3:// (local S3 server): replicas share one knowledge base", async () => {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-s3-" });
  const server = new S3rver({
    port: 0,
    address: "127.0.0.1",
    directory: dir,
    silent: true,
    configureBuckets: [{ name: "kb" }],
  });
  const { port } = await server.run();
  const storageOptions = {
    endpoint: `http://127.0.0.1:${port}`,
    allow_http: "true",
    aws_access_key_id: "S3RVER",
    aws_secret_access_key: "S3RVER",
    region: "us-east-1",
  };
  const a = await openStore("s3://kb/world", { storageOptions });
  const b = await openStore("s3://kb/world", { storageOptions });
  try {
    await a.add([
      { id: "sextant", text: "The Kambyl sextant dates from 1930. Its main material is tin." },
      { id: "thavin", text: "The mayor of Thavin is Gumaen Haemathmo. The population of Thavin is 84300." },
    ]);
    // The other replica sees the first one's commit.
    const hits = await b.search("Kambyl sextant", { k: 1 });
    assert.equal(hits[0]?.id, "sextant");
    // Each replica writes on top of the other's latest version.
    await a.add([{ id: "river", text: "The Dratas River flows through Thavin." }]);
    await b.add([{ id: "mount", text: "Mount Maendrobe was first climbed by Vocy Baesnist." }]);
    assert.deepEqual(await a.count(), { documents: 4, chunks: 4 });
    assert.equal((await a.search("Maendrobe", { k: 1 }))[0]?.id, "mount");
    await b.delete(["thavin"]);
    assert.deepEqual(await a.count(), { documents: 3, chunks: 3 });
    assert.ok((await a.search("mayor of Thavin", { k: 4 })).every((h) => h.id !== "thavin"));
    // The objects really are in the bucket.
    const stored: string[] = [];
    for await (const e of Deno.readDir(`${dir}/kb`)) stored.push(e.name);
    assert.ok(stored.includes("world"), `bucket holds ${stored}`);
  } finally {
    await a.close();
    await b.close();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});
