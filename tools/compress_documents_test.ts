import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { DEFAULT_COMPRESSOR_MODEL, loadCompressor } from "../retrieval/compress.ts";
import { compressDocuments, parseCompressDocumentsArgs } from "./compress_documents.ts";
import { readWorldDocuments } from "./world/mod.ts";

const WORLD = join(fileURLToPath(new URL("..", import.meta.url)), "fixtures/world");

Deno.test("parseCompressDocumentsArgs() reads rates, paths and batch, and rejects bad values", () => {
  const cmd = parseCompressDocumentsArgs(["--world", "w", "--rates", "0.5, 0.33", "--batch", "8"]);
  assert.deepEqual(cmd, {
    world: "w",
    model: DEFAULT_COMPRESSOR_MODEL,
    rates: [0.5, 0.33],
    out: "w/compressed_documents.jsonl",
    batch: 8,
  });
  for (
    const bad of [["--rates", "0"], ["--rates", "0.5,1.5"], ["--rates", ""], ["--batch", "0"], ["--nope"]]
  ) {
    const r = parseCompressDocumentsArgs(bad);
    assert.ok("usage" in r && r.usage !== "", bad.join(" "));
  }
});

Deno.test({
  name: "compressDocuments(): a document's text is the same alone and among others, and fixtures match it",
  permissions: { read: true, env: true, sys: true, ffi: true, net: false },
  fn: async () => {
    const docs = (await readWorldDocuments(WORLD)).slice(0, 5);
    const compressor = await loadCompressor();
    try {
      const together = await compressDocuments(docs, compressor, [0.5, 0.33], 5);
      const alone = await compressDocuments(docs, compressor, [0.5, 0.33], 1);
      assert.deepEqual(together, alone);
      for (const t of together) assert.ok(t["0.33"].length < t["0.5"].length);
      // The committed training file was made by the same compressor from the same documents.
      const lines = (await Deno.readTextFile(join(WORLD, "compressed_documents.jsonl"))).split("\n");
      docs.forEach((d, i) => {
        const row = JSON.parse(lines[i]);
        assert.equal(row.id, d.id);
        assert.equal(row.texts["0.5"], together[i]["0.5"]);
        assert.equal(row.texts["0.33"], together[i]["0.33"]);
      });
    } finally {
      await compressor.dispose();
    }
  },
});
