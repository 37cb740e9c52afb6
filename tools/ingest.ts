/**
 * `deno task ingest`: loads documents into a knowledge store.
 *
 * ```sh
 * deno task ingest --db data/kb [--embedder DIR_OR_REPO] [--table NAME] [--chunk-tokens 256] \
 *   [--overlap-tokens 32] [--batch 64] docs/*.md notes.txt corpus.jsonl
 * ```
 *
 * `.txt`/`.md` files are one document each, with the file name as id; `.jsonl` files hold one
 * `{"id", "text", "metadata"?}` per line. Every file is read and checked before anything is written, so a
 * malformed line (reported as `file:line: …`) leaves the store untouched. Documents whose id is already stored
 * replace the stored ones, so re-running an ingest is safe. Progress goes to stderr when it is a terminal; a
 * summary goes to stdout. Exit status: 0 done, 1 failed, 2 bad usage.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { documentFileKind, readDocuments } from "../retrieval/documents.ts";
import { type Embedder, loadEmbedder } from "../retrieval/embedder.ts";
import { DocumentFormatError, EmbedderError, StoreError } from "../retrieval/errors.ts";
import { type KnowledgeStore, openStore, type StoreDocument } from "../retrieval/store.ts";

const USAGE = `Usage: deno task ingest --db DIR [options] FILE...

Adds documents to the knowledge store at DIR (a directory or an object-storage URI such as s3://bucket/kb).
Files: .txt/.text/.md/.markdown (one document each, id = file name) and .jsonl/.ndjson (one
{"id", "text", "metadata"?} object per line). Re-adding an id replaces that document.

Options:
  --db URI               the store (required)
  --embedder SRC         embedding model: a local directory or a Hugging Face repo id (enables vector search;
                         a store built with one must be given the same one)
  --table NAME           table name (default: chunks)
  --chunk-tokens N       chunk budget in tokens (default: 256)
  --overlap-tokens N     overlap between chunks in tokens (default: 32)
  --batch N              documents per write (default: 64)
  --offline              never download the embedder
  -h, --help             show this help`;

/** Runs the ingest command line `args`; returns the exit status (0 done, 1 failed, 2 bad usage). */
export async function ingest(args: string[]): Promise<number> {
  let values;
  let files: string[];
  try {
    const parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        db: { type: "string" },
        embedder: { type: "string" },
        table: { type: "string" },
        "chunk-tokens": { type: "string" },
        "overlap-tokens": { type: "string" },
        batch: { type: "string" },
        offline: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
    values = parsed.values;
    files = parsed.positionals;
  } catch (error) {
    return usage((error as Error).message);
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!values.db) return usage("--db is required");
  if (files.length === 0) return usage("no input files");
  const unsupported = files.find((f) => !documentFileKind(f));
  if (unsupported) return usage(`unsupported file type: ${unsupported}`);
  const ints: Record<string, number | undefined> = {};
  for (const name of ["chunk-tokens", "overlap-tokens", "batch"] as const) {
    const raw = values[name];
    if (raw === undefined) continue;
    if (!/^\d+$/.test(raw) || Number(raw) < (name === "overlap-tokens" ? 0 : 1)) {
      return usage(`--${name} must be a ${name === "overlap-tokens" ? "non-negative" : "positive"} integer`);
    }
    ints[name] = Number(raw);
  }
  const batchSize = ints.batch ?? 64;

  let embedder: Embedder | undefined;
  let store: KnowledgeStore | undefined;
  try {
    // Pass 1: read and check everything before writing anything.
    let total = 0;
    let repeated = 0;
    const ids = new Set<string>();
    for (const file of files) {
      for await (const doc of readDocuments(file)) {
        total++;
        if (ids.has(doc.id)) repeated++;
        ids.add(doc.id);
      }
    }
    if (repeated > 0) {
      console.error(`ingest: ${repeated} documents repeat an earlier id and replace the earlier document`);
    }

    if (values.embedder) embedder = await loadEmbedder(values.embedder, { offline: values.offline === true });
    store = await openStore(values.db, {
      embedder,
      table: values.table,
      chunkTokens: ints["chunk-tokens"],
      overlapTokens: ints["overlap-tokens"],
    });

    // Pass 2: write in batches; the indexes are brought up to date once at the end.
    const progress = new IngestProgress(total, files.length);
    let chunks = 0;
    let batch: StoreDocument[] = [];
    const flush = async () => {
      if (batch.length === 0) return;
      const result = await store!.add(batch, { optimize: false });
      chunks += result.chunks;
      progress.update(batch.length, chunks);
      batch = [];
    };
    for (const file of files) {
      for await (const doc of readDocuments(file)) {
        batch.push(doc);
        if (batch.length >= batchSize) await flush();
      }
      progress.fileDone();
    }
    await flush();
    progress.finish("indexing");
    await store.optimize();
    progress.finish();
    const counts = await store.count();
    const mode = store.vectorSearch ? `vectors from ${embedder!.id}` : "full-text only";
    console.log(
      `ingested ${total} documents (${chunks} chunks) from ${files.length} files into ${values.db} ` +
        `(table ${store.table}, ${mode}, version ${await store.version()}; ` +
        `now ${counts.documents} documents, ${counts.chunks} chunks)`,
    );
    return 0;
  } catch (error) {
    if (
      error instanceof DocumentFormatError || error instanceof StoreError || error instanceof EmbedderError
    ) {
      console.error(`ingest: ${error.message}`);
      return 1;
    }
    throw error;
  } finally {
    await store?.close();
    await embedder?.dispose();
  }
}

function usage(message: string): number {
  console.error(`ingest: ${message}\n\n${USAGE}`);
  return 2;
}

/** A one-line progress report on stderr, drawn only when stderr is a terminal. */
class IngestProgress {
  #total: number;
  #files: number;
  #filesDone = 0;
  #docs = 0;
  #chunks = 0;
  #start = performance.now();
  #lastDraw = -Infinity;
  #terminal = Deno.stderr.isTerminal();
  #encoder = new TextEncoder();

  constructor(total: number, files: number) {
    this.#total = total;
    this.#files = files;
  }

  update(docs: number, chunks: number): void {
    this.#docs += docs;
    this.#chunks = chunks;
    this.#draw(false);
  }

  fileDone(): void {
    this.#filesDone++;
    this.#draw(false);
  }

  finish(stage?: string): void {
    this.#draw(true, stage);
  }

  #draw(force: boolean, stage?: string): void {
    if (!this.#terminal) return;
    const now = performance.now();
    if (!force && now - this.#lastDraw < 100) return;
    this.#lastDraw = now;
    const seconds = (now - this.#start) / 1000;
    const rate = seconds > 0 ? this.#docs / seconds : 0;
    const line = `ingest  files ${this.#filesDone}/${this.#files}  documents ${this.#docs}/${this.#total}  ` +
      `chunks ${this.#chunks}  ${rate.toFixed(1)} docs/s${stage ? `  ${stage}…` : ""}`;
    Deno.stderr.writeSync(this.#encoder.encode(`\r\x1b[K${line}${force && !stage ? "\n" : ""}`));
  }
}

if (import.meta.main) Deno.exit(await ingest(Deno.args));
