/**
 * The default knowledge base: where `serve` keeps its LanceDB directory when no `--db` is given, and the
 * bulk load of a documents file into a store (batches written without index maintenance, then one
 * `optimize`), once per store: a marker file beside the store records a completed load, so a restart does
 * not load again, while a load that was interrupted (no marker) or a store that was emptied is loaded again.
 * Loading is an upsert by document id, so loading twice never duplicates a document.
 *
 * Paths: the per-user data directory is `$EDGEMIX_HOME`, else `$XDG_CACHE_HOME/edgemix`, else
 * `~/.cache/edgemix`; the store is its `db` directory and the marker its `db.ingested.json`.
 *
 * @example
 * ```ts ignore
 * import { defaultDbDir, DEFAULT_DOCUMENTS, ensureIngested, ingestedMarker } from "./knowledge_base.ts";
 * import { openStore } from "./store.ts";
 * const dir = defaultDbDir();
 * const store = await openStore(dir);
 * const r = await ensureIngested(store, DEFAULT_DOCUMENTS, ingestedMarker(dir));
 * console.log(r.ingested ? `loaded ${r.documents} documents` : "already loaded");
 * ```
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { readDocuments } from "./documents.ts";
import type { KnowledgeStore, StoreDocument } from "./store.ts";

const DOCUMENTS_URL = new URL("../fixtures/world/documents.jsonl", import.meta.url);

/** The documents `serve` loads into its default knowledge base: the synthetic world of `tools/world`. */
export const DEFAULT_DOCUMENTS: string = DOCUMENTS_URL.protocol === "file:"
  ? fileURLToPath(DOCUMENTS_URL)
  : DOCUMENTS_URL.href;

/** Documents per write of a bulk load. */
export const DEFAULT_INGEST_BATCH = 256;

/** Reads an environment variable; `undefined` when unset or empty. */
export type EnvReader = (name: string) => string | undefined;

const processEnv: EnvReader = (name) => {
  const v = Deno.env.get(name);
  return v === "" ? undefined : v;
};

/**
 * The per-user data directory of edgemix: `$EDGEMIX_HOME`, else `$XDG_CACHE_HOME/edgemix`, else
 * `~/.cache/edgemix` (`%USERPROFILE%\.cache\edgemix` on Windows).
 *
 * @throws {Error} when none of `EDGEMIX_HOME`, `XDG_CACHE_HOME`, `HOME` and `USERPROFILE` is set.
 */
export function edgemixHome(env: EnvReader = processEnv): string {
  const home = env("EDGEMIX_HOME");
  if (home) return home;
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "edgemix");
  const user = env("HOME") ?? env("USERPROFILE");
  if (!user) {
    throw new Error(
      "Cannot locate the edgemix data directory: HOME is not set; set EDGEMIX_HOME or pass --db",
    );
  }
  return join(user, ".cache", "edgemix");
}

/** The LanceDB directory of the default knowledge base: `db` in {@linkcode edgemixHome}. */
export function defaultDbDir(env: EnvReader = processEnv): string {
  return join(edgemixHome(env), "db");
}

/** The marker of a completed load into the store directory `dbDir`: `<dbDir>.ingested.json` beside it. */
export function ingestedMarker(dbDir: string): string {
  const trimmed = dbDir.replace(/[\\/]+$/, "");
  return join(dirname(trimmed), `${basename(trimmed)}.ingested.json`);
}

/** Options of {@linkcode ingestFile} and {@linkcode ensureIngested}. */
export interface IngestFileOptions {
  /** Documents per write (default {@linkcode DEFAULT_INGEST_BATCH}). */
  batch?: number;
  /** Called once the file is read and checked, before the first write, with the number of documents. */
  onStart?: (total: number) => void;
  /** Called after each written batch with the documents written so far and in all. */
  onProgress?: (done: number, total: number) => void;
  /** Called once when the writes are done and the indexes are being brought up to date. */
  onIndexing?: () => void;
}

/** What a load wrote. */
export interface IngestFileResult {
  /** Documents written. */
  documents: number;
  /** Chunks written. */
  chunks: number;
}

/**
 * Adds every document of `path` (a `.jsonl`, `.txt` or `.md` file, as `readDocuments` reads it) to `store`:
 * the whole file is read and checked first, then written in batches without index maintenance, then the
 * table is optimized once.
 *
 * @throws {DocumentFormatError} for an unreadable or malformed file (nothing is written then);
 * {@linkcode StoreError} when the store fails.
 */
export async function ingestFile(
  store: KnowledgeStore,
  path: string,
  options: IngestFileOptions = {},
): Promise<IngestFileResult> {
  const batch = options.batch ?? DEFAULT_INGEST_BATCH;
  if (!Number.isSafeInteger(batch) || batch < 1) {
    throw new RangeError(`Cannot ingest ${path}: batch must be a positive integer, got ${batch}`);
  }
  const docs: StoreDocument[] = [];
  for await (const doc of readDocuments(path)) docs.push(doc);
  options.onStart?.(docs.length);
  let chunks = 0;
  for (let start = 0; start < docs.length; start += batch) {
    const written = await store.add(docs.slice(start, start + batch), { optimize: false });
    chunks += written.chunks;
    options.onProgress?.(Math.min(start + batch, docs.length), docs.length);
  }
  options.onIndexing?.();
  await store.optimize();
  return { documents: docs.length, chunks };
}

/** The content of a marker file. */
interface Marker {
  source: string;
  bytes: number;
  documents: number;
  chunks: number;
  ingested_at: string;
}

/** What {@linkcode ensureIngested} did. */
export interface EnsureIngestedResult {
  /** Whether the file was loaded now (false: the marker showed an earlier complete load). */
  ingested: boolean;
  /** Documents in the store afterwards. */
  documents: number;
  /** Chunks written now (0 when nothing was loaded). */
  chunks: number;
}

/**
 * Loads `path` into `store` unless `marker` records a complete load of the same file (same path and size)
 * and the store holds documents; writes the marker after a complete load.
 *
 * @throws {DocumentFormatError} / {@linkcode StoreError} as {@linkcode ingestFile}; `Deno.errors.NotFound`
 * when `path` does not exist.
 */
export async function ensureIngested(
  store: KnowledgeStore,
  path: string,
  marker: string,
  options: IngestFileOptions = {},
): Promise<EnsureIngestedResult> {
  const bytes = (await Deno.stat(path)).size;
  const previous = await readMarker(marker);
  const counts = await store.count();
  if (previous && previous.source === path && previous.bytes === bytes && counts.documents > 0) {
    return { ingested: false, documents: counts.documents, chunks: 0 };
  }
  const written = await ingestFile(store, path, options);
  const record: Marker = {
    source: path,
    bytes,
    documents: written.documents,
    chunks: written.chunks,
    ingested_at: new Date().toISOString(),
  };
  await Deno.mkdir(dirname(marker), { recursive: true });
  await Deno.writeTextFile(marker, JSON.stringify(record, null, 1) + "\n");
  return { ingested: true, documents: (await store.count()).documents, chunks: written.chunks };
}

async function readMarker(path: string): Promise<Marker | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  try {
    const m = JSON.parse(text);
    return typeof m?.source === "string" && typeof m?.bytes === "number" ? m as Marker : undefined;
  } catch {
    return undefined; // A damaged marker means: load again (an upsert, so harmless).
  }
}
