import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { openStore } from "../retrieval/store.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const FIXTURE = join(ROOT, "fixtures", "embedder");

async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-sys",
      "--allow-ffi",
      "tools/ingest.ts",
      ...args,
    ],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

async function withFiles(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-ingest-" });
  try {
    await Deno.writeTextFile(join(dir, "fox.txt"), "The quick brown fox jumps over the lazy dog.");
    await Deno.writeTextFile(join(dir, "guide.md"), "# Guide\n\nHybrid search fuses two rankings.");
    await Deno.writeTextFile(
      join(dir, "more.jsonl"),
      [
        { id: "paris", text: "Paris is the capital of France.", metadata: { lang: "en" } },
        { id: "cats", text: "Cats sleep in the sun." },
      ].map((d) => JSON.stringify(d)).join("\n") + "\n",
    );
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("ingest: text, Markdown and JSONL files into a full-text store; re-running replaces", async () => {
  await withFiles(async (dir) => {
    const db = join(dir, "kb");
    const files = ["fox.txt", "guide.md", "more.jsonl"].map((f) => join(dir, f));
    const first = await run(["--db", db, ...files]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /ingested 4 documents \(4 chunks\) from 3 files .*full-text only/);
    assert.equal(first.stderr, "", "no progress output when stderr is not a terminal");

    const again = await run(["--db", db, "--batch", "1", ...files]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /now 4 documents, 4 chunks/);

    const store = await openStore(db);
    try {
      assert.deepEqual(await store.count(), { documents: 4, chunks: 4 });
      const [paris] = await store.search("capital of France", { k: 1 });
      assert.deepEqual([paris.id, paris.metadata], ["paris", { lang: "en" }]);
      const [guide] = await store.search("hybrid rankings", { k: 1 });
      assert.equal(guide.id, "guide.md");
      assert.equal(guide.metadata.title, "Guide");
    } finally {
      await store.close();
    }
  });
});

Deno.test("ingest: a malformed line names file and line and writes nothing; usage errors exit 2", async () => {
  await withFiles(async (dir) => {
    const db = join(dir, "kb");
    const bad = join(dir, "bad.jsonl");
    await Deno.writeTextFile(bad, `${JSON.stringify({ id: "ok", text: "fine" })}\n{"id": "x"}\n`);
    const failed = await run(["--db", db, join(dir, "fox.txt"), bad]);
    assert.equal(failed.code, 1);
    assert.ok(failed.stderr.includes(`${bad}:2: "text" must be`), failed.stderr);
    await assert.rejects(() => Deno.stat(db), Deno.errors.NotFound);

    for (
      const args of [
        [join(dir, "fox.txt")],
        ["--db", db],
        ["--db", db, join(dir, "data.csv")],
        ["--db", db, "--chunk-tokens", "0", join(dir, "fox.txt")],
        ["--db", db, "--bogus", join(dir, "fox.txt")],
      ]
    ) {
      const r = await run(args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, /Usage: deno task ingest/);
    }
    const help = await run(["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--embedder SRC/);
  });
});

Deno.test({
  name: "ingest: with the fixture embedder the store gets vectors",
  ignore: (() => {
    try {
      return !Deno.statSync(join(FIXTURE, "onnx", "model.onnx")).isFile;
    } catch {
      return true;
    }
  })(),
  async fn() {
    await withFiles(async (dir) => {
      const db = join(dir, "kb");
      const r = await run(["--db", db, "--embedder", FIXTURE, "--offline", join(dir, "more.jsonl")]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /vectors from /);
      // Without the embedder the store opens full-text only and refuses to add vector-less rows.
      const refused = await run(["--db", db, join(dir, "fox.txt")]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /without an embedder/);
    });
  },
});
