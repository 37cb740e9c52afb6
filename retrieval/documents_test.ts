import assert from "node:assert/strict";
import { join } from "node:path";
import { documentFileKind, parseJsonlLine, readDocuments } from "./documents.ts";
import { DocumentFormatError } from "./errors.ts";
import type { StoreDocument } from "./store.ts";

async function collect(path: string): Promise<StoreDocument[]> {
  const docs: StoreDocument[] = [];
  for await (const doc of readDocuments(path)) docs.push(doc);
  return docs;
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-docs-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("documentFileKind: by extension, case-insensitive", () => {
  assert.equal(documentFileKind("a/b.txt"), "text");
  assert.equal(documentFileKind("README.MD"), "text");
  assert.equal(documentFileKind("x.markdown"), "text");
  assert.equal(documentFileKind("data.jsonl"), "jsonl");
  assert.equal(documentFileKind("data.ndjson"), "jsonl");
  assert.equal(documentFileKind("data.json"), undefined);
  assert.equal(documentFileKind("noext"), undefined);
});

Deno.test("readDocuments: a text or Markdown file is one document named by the file", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "notes.txt"), "Plain notes.\nSecond line.");
    await Deno.writeTextFile(join(dir, "guide.md"), "Intro line\n\n# The Guide ##\n\nBody text.");
    assert.deepEqual(await collect(join(dir, "notes.txt")), [
      { id: "notes.txt", text: "Plain notes.\nSecond line.", metadata: { source: join(dir, "notes.txt") } },
    ]);
    const [md] = await collect(join(dir, "guide.md"));
    assert.equal(md.id, "guide.md");
    assert.deepEqual(md.metadata, { source: join(dir, "guide.md"), title: "The Guide" });

    await Deno.writeTextFile(join(dir, "empty.txt"), " \n");
    await assert.rejects(() => collect(join(dir, "empty.txt")), /empty\.txt: the file is empty/);
    await assert.rejects(() => collect(join(dir, "missing.txt")), DocumentFormatError);
    await assert.rejects(() => collect(join(dir, "data.csv")), /unsupported file type "\.csv"/);
  });
});

Deno.test("readDocuments: JSONL gives one document per non-blank line; CRLF and a last line without newline", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "docs.jsonl");
    const lines = [
      JSON.stringify({ id: "a", text: "alpha", metadata: { lang: "en" } }),
      "",
      JSON.stringify({ id: 7, text: "numeric id" }),
      JSON.stringify({ id: "é", text: "ünïcödé 東京 🚀" }),
    ];
    await Deno.writeTextFile(path, lines.join("\r\n"));
    assert.deepEqual(await collect(path), [
      { id: "a", text: "alpha", metadata: { lang: "en" } },
      { id: "7", text: "numeric id" },
      { id: "é", text: "ünïcödé 東京 🚀" },
    ]);
    // A file larger than one read chunk, with many lines.
    const big = Array.from(
      { length: 3000 },
      (_, i) => JSON.stringify({ id: `d${i}`, text: `text ${i} ${"x".repeat(40)}` }),
    );
    await Deno.writeTextFile(path, big.join("\n") + "\n");
    const docs = await collect(path);
    assert.equal(docs.length, 3000);
    assert.equal(docs[2999].id, "d2999");
  });
});

Deno.test("readDocuments: a malformed JSONL line is reported with its file and line", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "bad.jsonl");
    await Deno.writeTextFile(path, `${JSON.stringify({ id: "a", text: "ok" })}\n\n{"id": "b", "text": \n`);
    const error = await collect(path).then(() => undefined, (e) => e);
    assert.ok(error instanceof DocumentFormatError);
    assert.equal(error.file, path);
    assert.equal(error.line, 3);
    assert.match(
      error.message,
      new RegExp(`^${path.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}:3: not valid JSON`),
    );
  });
});

Deno.test("parseJsonlLine: checks id, text and metadata", () => {
  const bad = (line: string, pattern: RegExp) =>
    assert.throws(
      () => parseJsonlLine(line, "f.jsonl", 9),
      (e: unknown) => e instanceof DocumentFormatError && e.line === 9 && pattern.test(e.message),
    );
  bad("[1, 2]", /expected an object/);
  bad('{"text": "x"}', /"id" must be/);
  bad('{"id": "", "text": "x"}', /"id" must be/);
  bad('{"id": true, "text": "x"}', /"id" must be/);
  bad('{"id": "a"}', /"text" must be/);
  bad('{"id": "a", "text": "   "}', /"text" must be/);
  bad('{"id": "a", "text": "x", "metadata": [1]}', /"metadata" must be an object/);
  bad('{"id": "a", "text": "x", "metadata": null}', /"metadata" must be an object/);
  assert.deepEqual(parseJsonlLine('{"id": "a", "text": "x", "extra": 1}', "f", 1), { id: "a", text: "x" });
});
