/**
 * The knowledge store: documents split into chunks in one LanceDB table, with a full-text (BM25) index on the
 * text, a B-tree index on the document id, and, when an embedder is configured, a vector column searched by
 * cosine similarity.
 *
 * Rows: `doc_id` (string), `chunk` (int32, 0-based position in the document), `text`, `metadata` (JSON string,
 * the document's metadata on every chunk) and, with an embedder, `vector` (float32 × dim, L2-normalised).
 *
 * Consistency: `add` writes each batch of documents with one `mergeInsert` keyed on (doc_id, chunk) that
 * updates the chunks that exist, inserts new ones and deletes the document's surplus old chunks, so re-adding a
 * document replaces all its chunks in a single commit. A search reads one table version, so it sees a document's
 * old chunks or its new ones, never both and never twice. Writes that lose to a concurrent commit (another store
 * object or process on the same URI) are retried with backoff after reloading the latest version.
 *
 * @module
 */

import type * as lancedb from "@lancedb/lancedb";
import * as arrow from "apache-arrow";
import { basename } from "node:path";
import { chunkText, DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP_TOKENS, type TokenCounter } from "./chunk.ts";
import type { Embedder } from "./embedder.ts";
import { CommitConflictError, StoreError } from "./errors.ts";
import { DEFAULT_RRF_K, reciprocalRankFusion } from "./fusion.ts";
import { RetriesExhausted, withCommitRetry } from "./retry.ts";

/** How `search` ranks: BM25 full text, cosine similarity of embeddings, or both fused by reciprocal rank. */
export type SearchMode = "fts" | "vector" | "hybrid";

/** A document to store. */
export interface StoreDocument {
  /** Unique id; adding a document with an id already stored replaces it. */
  id: string;
  /** The text; must contain something other than white space. */
  text: string;
  /** JSON-serialisable metadata, returned with every hit from this document. */
  metadata?: Record<string, unknown>;
}

/** One search result: a chunk of a document. */
export interface SearchHit {
  /** The document id. */
  id: string;
  /** The chunk's 0-based position in the document. */
  chunk: number;
  /** The chunk's text. */
  text: string;
  /**
   * Higher is better. `fts`: BM25 score (≥ 0, unbounded, depends on the corpus). `vector`: cosine similarity in
   * [-1, 1]. `hybrid`: reciprocal-rank-fusion score Σ 1/(k + rank) over the two rankings, in (0, 2/(k + 1)].
   */
  score: number;
  /** The document's metadata. */
  metadata: Record<string, unknown>;
  /** The ranking that produced `score`: `fts` when a vector or hybrid search fell back for lack of an embedder. */
  mode: SearchMode;
}

/** Options of {@link KnowledgeStore.search}. */
export interface SearchOptions {
  /** Hits to return, 1–1000; default 5. */
  k?: number;
  /** Default `hybrid` when the store has an embedder, else `fts`; without an embedder every mode runs `fts`. */
  mode?: SearchMode;
  /** Hits fetched from each ranking before a hybrid fusion; default max(20, 4k). */
  candidates?: number;
  /** The rank offset of reciprocal-rank fusion; default 60. */
  rrfK?: number;
}

/** Options of {@link KnowledgeStore.add} and {@link KnowledgeStore.delete}. */
export interface WriteOptions {
  /**
   * Compact the table and bring its indexes up to date after the write; default true. Pass false for all but the
   * last batch of a bulk load, then call {@link KnowledgeStore.optimize}. Until then LanceDB still finds the new
   * rows by a flat scan, but their BM25 scores are not comparable with indexed rows and a table whose index
   * covers no row at all ranks full-text hits wrongly (observed with @lancedb/lancedb 0.31).
   */
  optimize?: boolean;
  /** Called after each committed batch with the documents written so far and in all. */
  onProgress?: (done: number, total: number) => void;
}

/** What {@link KnowledgeStore.add} wrote. */
export interface AddResult {
  /** Documents written (after collapsing repeated ids: the last one wins). */
  documents: number;
  /** Chunks written. */
  chunks: number;
  /** Table version after the write. */
  version: number;
}

/** What {@link KnowledgeStore.delete} removed. */
export interface DeleteResult {
  /** Chunk rows removed. */
  chunks: number;
  /** Table version after the delete. */
  version: number;
}

/** Sizes of the store. */
export interface StoreCounts {
  /** Documents stored. */
  documents: number;
  /** Chunks stored. */
  chunks: number;
}

/** A knowledge store opened by {@link openStore}. */
export interface KnowledgeStore {
  /** The LanceDB URI (a directory or an object-storage URI). */
  readonly uri: string;
  /** The table name. */
  readonly table: string;
  /** Whether vector and hybrid searches run as asked (an embedder is configured and the table has vectors). */
  readonly vectorSearch: boolean;
  /** Embedding size of the table's vector column, or undefined when the table has none. */
  readonly dim: number | undefined;
  /** Adds or replaces documents (upsert by id). */
  add(docs: readonly StoreDocument[], options?: WriteOptions): Promise<AddResult>;
  /** Removes every chunk of the documents `ids`; unknown ids are ignored. */
  delete(ids: readonly string[], options?: Pick<WriteOptions, "optimize">): Promise<DeleteResult>;
  /** The `k` best chunks for `query`, best first. */
  search(query: string, options?: SearchOptions): Promise<SearchHit[]>;
  /** How many documents and chunks are stored. */
  count(): Promise<StoreCounts>;
  /** The current table version (record it to reproduce an answer). */
  version(): Promise<number>;
  /** Compacts the table, prunes versions older than a week and brings the indexes up to date. */
  optimize(): Promise<void>;
  /** Waits for pending writes and closes the store; later calls reject with a {@link StoreError}. */
  close(): Promise<void>;
  /** Same as {@link KnowledgeStore.close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Options of {@link openStore}. */
export interface OpenStoreOptions {
  /** Embeds chunks and queries; without one the table has no vector column and every search is full-text. */
  embedder?: Embedder;
  /** Table name; default `chunks`. */
  table?: string;
  /** Chunk budget in tokens; default 256. */
  chunkTokens?: number;
  /** Overlap between consecutive chunks in tokens; default 32. */
  overlapTokens?: number;
  /** Token counter for chunking; default the tokenizer-agnostic approximation of `chunk.ts`. */
  countTokens?: TokenCounter;
  /** Object-storage settings passed to LanceDB (credentials, region, endpoint, timeouts). */
  storageOptions?: Record<string, string>;
  /**
   * How stale a read may be, in seconds, with respect to commits by other store objects or processes; default 0
   * (every read checks for a newer version: one extra metadata request per search on object storage).
   */
  readConsistencySeconds?: number;
  /** Attempts of a write that loses to concurrent commits; default 8. */
  writeAttempts?: number;
  /** Rows from which a vector (IVF-HNSW-SQ) index is built; below, vector search is an exact scan. Default 20000. */
  vectorIndexMinRows?: number;
  /** Accept an embedder whose name differs from the one the table was built with; default false. */
  allowEmbedderChange?: boolean;
}

const DEFAULT_TABLE = "chunks";
const EMBEDDER_KEY = "edgemix.embedder";
const FORMAT_KEY = "edgemix.store";
const FORMAT = "1";
const WRITE_BATCH_DOCS = 256;
const SQL_IN_BATCH = 500;
const MAX_K = 1000;
const COLUMNS = ["doc_id", "chunk", "text", "metadata"];

type LanceModule = typeof lancedb;
let lanceModule: Promise<LanceModule> | undefined;

/** LanceDB is a native addon (it needs --allow-ffi): loaded on first use, so importing this module is free. */
function loadLance(): Promise<LanceModule> {
  return lanceModule ??= import("@lancedb/lancedb");
}

/**
 * Opens (creating when absent) the knowledge store at `uri`: a local directory, or any URI LanceDB accepts
 * (`s3://bucket/prefix`, `gs://…`, `az://…`), so several replicas can share one knowledge base.
 */
export async function openStore(uri: string, options: OpenStoreOptions = {}): Promise<KnowledgeStore> {
  if (typeof uri !== "string" || uri === "") throw new TypeError("openStore: uri must be a non-empty string");
  const tableName = options.table ?? DEFAULT_TABLE;
  if (!/^[A-Za-z0-9_.-]+$/.test(tableName)) {
    throw new TypeError(
      `openStore: table name "${tableName}" may only hold letters, digits, "_", "-" and "."`,
    );
  }
  // Validate the chunking options now rather than at the first add.
  chunkText("", { chunkTokens: options.chunkTokens, overlapTokens: options.overlapTokens });
  const consistency = options.readConsistencySeconds ?? 0;
  if (!(consistency >= 0)) throw new RangeError(`readConsistencySeconds must be >= 0, got ${consistency}`);

  let lance: LanceModule;
  let db: lancedb.Connection;
  let table: lancedb.Table;
  try {
    lance = await loadLance();
    db = await lance.connect(uri, {
      readConsistencyInterval: consistency,
      storageOptions: options.storageOptions,
    });
    const embedder = options.embedder;
    if ((await db.tableNames()).includes(tableName)) {
      table = await db.openTable(tableName);
    } else {
      // existOk: another replica may create the table at the same moment.
      table = await db.createEmptyTable(tableName, makeSchema(embedder), { existOk: true });
    }
  } catch (cause) {
    throw new StoreError(`Cannot open the knowledge store at ${uri}: ${message(cause)}`, uri, { cause });
  }
  const store = new LanceStore(lance, uri, tableName, db, table, options);
  try {
    await store.init();
  } catch (error) {
    table.close();
    db.close();
    throw error;
  }
  return store;
}

function makeSchema(embedder: Embedder | undefined): arrow.Schema {
  const fields: arrow.Field[] = [
    new arrow.Field("doc_id", new arrow.Utf8(), false),
    new arrow.Field("chunk", new arrow.Int32(), false),
    new arrow.Field("text", new arrow.Utf8(), false),
    new arrow.Field("metadata", new arrow.Utf8(), false),
  ];
  const meta = new Map([[FORMAT_KEY, FORMAT]]);
  if (embedder) {
    fields.push(
      new arrow.Field(
        "vector",
        new arrow.FixedSizeList(embedder.dim, new arrow.Field("item", new arrow.Float32())),
        false,
      ),
    );
    meta.set(EMBEDDER_KEY, embedder.id);
  }
  return new arrow.Schema(fields, meta);
}

interface Row {
  doc_id: string;
  chunk: number;
  text: string;
  metadata: string;
  vector?: number[];
}

class LanceStore implements KnowledgeStore {
  readonly uri: string;
  readonly table: string;
  vectorSearch = false;
  dim: number | undefined;
  #lance: LanceModule;
  #db: lancedb.Connection;
  #table: lancedb.Table;
  #options: OpenStoreOptions;
  #schema: arrow.Schema | undefined;
  #writes: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(
    lance: LanceModule,
    uri: string,
    table: string,
    db: lancedb.Connection,
    tbl: lancedb.Table,
    options: OpenStoreOptions,
  ) {
    this.#lance = lance;
    this.uri = uri;
    this.table = table;
    this.#db = db;
    this.#table = tbl;
    this.#options = options;
  }

  async init(): Promise<void> {
    const schema = await this.#read("read the table schema of", () => this.#table.schema());
    for (const name of COLUMNS) {
      if (!schema.fields.some((f) => f.name === name)) {
        throw new StoreError(
          `The table "${this.table}" at ${this.uri} is not a knowledge store: it has no "${name}" column`,
          this.uri,
        );
      }
    }
    const vector = schema.fields.find((f) => f.name === "vector");
    this.dim = vector && arrow.DataType.isFixedSizeList(vector.type) ? vector.type.listSize : undefined;
    const embedder = this.#options.embedder;
    if (embedder) {
      if (this.dim === undefined) {
        throw new StoreError(
          `The table "${this.table}" at ${this.uri} was built without an embedder, so it has no vectors; ` +
            `open it without one, or ingest into a new table`,
          this.uri,
        );
      }
      if (this.dim !== embedder.dim) {
        throw new StoreError(
          `The embedder "${embedder.id}" makes vectors of ${embedder.dim} values but the table "${this.table}" ` +
            `at ${this.uri} holds vectors of ${this.dim}`,
          this.uri,
        );
      }
      const built = schema.metadata.get(EMBEDDER_KEY);
      if (built && !this.#options.allowEmbedderChange && modelName(built) !== modelName(embedder.id)) {
        throw new StoreError(
          `The table "${this.table}" at ${this.uri} was built with the embedder "${built}", not ` +
            `"${embedder.id}"; pass allowEmbedderChange if they are the same model`,
          this.uri,
        );
      }
      this.vectorSearch = true;
    }
    this.#schema = schema;
    await this.#ensureIndex("text", this.#lance.Index.fts());
    await this.#ensureIndex("doc_id", this.#lance.Index.btree());
  }

  async add(docs: readonly StoreDocument[], options: WriteOptions = {}): Promise<AddResult> {
    this.#checkOpen();
    const unique = validateDocuments(docs);
    if (this.dim !== undefined && !this.#options.embedder) {
      throw new StoreError(
        `Cannot add documents to the table "${this.table}" at ${this.uri} without an embedder: it holds ` +
          `vectors of ${this.dim} values (built with "${this.#schema?.metadata.get(EMBEDDER_KEY) ?? "?"}")`,
        this.uri,
      );
    }
    let chunks = 0;
    for (let start = 0; start < unique.length; start += WRITE_BATCH_DOCS) {
      const batch = unique.slice(start, start + WRITE_BATCH_DOCS);
      const rows = await this.#rows(batch);
      const ids = batch.map((d) => d.id);
      await this.#write(`add ${batch.length} documents to`, async () => {
        await this.#table
          .mergeInsert(["doc_id", "chunk"])
          .whenMatchedUpdateAll()
          .whenNotMatchedInsertAll()
          .whenNotMatchedBySourceDelete({ where: `doc_id IN (${ids.map(sqlString).join(", ")})` })
          .execute(
            this.#lance.makeArrowTable(rows as unknown as Record<string, unknown>[], {
              schema: this.#schema,
            }),
          );
      });
      chunks += rows.length;
      options.onProgress?.(start + batch.length, unique.length);
    }
    if (options.optimize !== false) await this.optimize();
    await this.#maybeIndexVectors();
    return { documents: unique.length, chunks, version: await this.version() };
  }

  async delete(ids: readonly string[], options: Pick<WriteOptions, "optimize"> = {}): Promise<DeleteResult> {
    this.#checkOpen();
    if (!Array.isArray(ids) || ids.some((id) => typeof id !== "string")) {
      throw new TypeError("delete: ids must be an array of strings");
    }
    const unique = [...new Set(ids)];
    let chunks = 0;
    for (let start = 0; start < unique.length; start += SQL_IN_BATCH) {
      const list = unique.slice(start, start + SQL_IN_BATCH).map(sqlString).join(", ");
      chunks += await this.#write(`delete ${unique.length} documents from`, async () => {
        const result = await this.#table.delete(`doc_id IN (${list})`);
        return result.numDeletedRows;
      });
    }
    if (chunks > 0 && options.optimize !== false) await this.optimize();
    return { chunks, version: await this.version() };
  }

  async search(query: string, options: SearchOptions = {}): Promise<SearchHit[]> {
    this.#checkOpen();
    if (typeof query !== "string") throw new TypeError("search: query must be a string");
    const k = options.k ?? 5;
    if (!Number.isInteger(k) || k < 1 || k > MAX_K) {
      throw new RangeError(`k must be an integer in [1, ${MAX_K}]`);
    }
    const requested = options.mode ?? (this.vectorSearch ? "hybrid" : "fts");
    if (requested !== "fts" && requested !== "vector" && requested !== "hybrid") {
      throw new TypeError(
        `search: mode must be "fts", "vector" or "hybrid", got ${JSON.stringify(requested)}`,
      );
    }
    const mode: SearchMode = this.vectorSearch ? requested : "fts";
    if (query.trim() === "") return [];
    if (mode === "fts") return await this.#fts(query, k);
    const vector = await this.#embedQuery(query);
    if (mode === "vector") return await this.#vector(vector, k);

    const candidates = options.candidates ?? Math.max(20, 4 * k);
    if (!Number.isInteger(candidates) || candidates < 1 || candidates > MAX_K) {
      throw new RangeError(`candidates must be an integer in [1, ${MAX_K}]`);
    }
    const [fts, vec] = await Promise.all([this.#fts(query, candidates), this.#vector(vector, candidates)]);
    const fused = reciprocalRankFusion([fts, vec], (h) => `${h.id}\u0000${h.chunk}`, {
      k: options.rrfK ?? DEFAULT_RRF_K,
    });
    return fused.slice(0, k).map(({ item, score }) => ({ ...item, score, mode: "hybrid" as const }));
  }

  async count(): Promise<StoreCounts> {
    this.#checkOpen();
    return await this.#read("count the rows of", async () => {
      const [documents, chunks] = await Promise.all([
        this.#table.countRows("chunk = 0"),
        this.#table.countRows(),
      ]);
      return { documents, chunks };
    });
  }

  async version(): Promise<number> {
    this.#checkOpen();
    return await this.#read("read the version of", () => this.#table.version());
  }

  async optimize(): Promise<void> {
    this.#checkOpen();
    await this.#write("optimize", () => this.#table.optimize());
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#writes.catch(() => {});
    this.#table.close();
    this.#db.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #checkOpen(): void {
    if (this.#closed) throw new StoreError(`The knowledge store at ${this.uri} is closed`, this.uri);
  }

  async #rows(docs: StoreDocument[]): Promise<Row[]> {
    const rows: Row[] = [];
    for (const doc of docs) {
      const metadata = JSON.stringify(doc.metadata ?? {});
      const chunks = chunkText(doc.text, {
        chunkTokens: this.#options.chunkTokens ?? DEFAULT_CHUNK_TOKENS,
        overlapTokens: this.#options.overlapTokens ?? DEFAULT_OVERLAP_TOKENS,
        countTokens: this.#options.countTokens,
      });
      chunks.forEach((c, i) => rows.push({ doc_id: doc.id, chunk: i, text: c.text, metadata }));
    }
    const embedder = this.#options.embedder;
    if (embedder) {
      const vectors = await embedder.embed(rows.map((r) => r.text));
      vectors.forEach((v, i) => rows[i].vector = Array.from(v));
    }
    return rows;
  }

  async #embedQuery(query: string): Promise<number[]> {
    const [v] = await this.#options.embedder!.embed([query]);
    return Array.from(v);
  }

  async #fts(query: string, limit: number): Promise<SearchHit[]> {
    const rows = await this.#read("run a full-text search on", () =>
      this.#table.query()
        .fullTextSearch(new this.#lance.MatchQuery(query, "text"))
        .select([...COLUMNS, "_score"])
        .limit(limit)
        .toArray());
    // Sorted here too: LanceDB merges flat-scanned unindexed rows with index hits, and has returned them unsorted.
    return rows.map((r) => hit(r, Number(r._score), "fts")).sort((a, b) => b.score - a.score);
  }

  async #vector(vector: number[], limit: number): Promise<SearchHit[]> {
    const rows = await this.#read("run a vector search on", () =>
      this.#table.vectorSearch(vector)
        .distanceType("cosine")
        // The index's SQ codes are approximate: rerank 4× the candidates on the full vectors, and search wider
        // in the HNSW graph, so that an exact match is never lost to quantization ties.
        .refineFactor(4)
        .ef(Math.max(64, 4 * limit))
        .select([...COLUMNS, "_distance"])
        .limit(limit)
        .toArray());
    return rows.map((r) => hit(r, 1 - Number(r._distance), "vector")).sort((a, b) => b.score - a.score);
  }

  async #ensureIndex(column: string, config: lancedb.Index): Promise<void> {
    const has = async () => (await this.#table.listIndices()).some((i) => i.columns.includes(column));
    if (await this.#read("list the indexes of", has)) return;
    await this.#write(`index the column "${column}" of`, async () => {
      try {
        await this.#table.createIndex(column, { config, replace: false });
      } catch (error) {
        // Another store object or replica created it first.
        if (!(await has())) throw error;
      }
    });
  }

  async #maybeIndexVectors(): Promise<void> {
    if (this.dim === undefined) return;
    const threshold = this.#options.vectorIndexMinRows ?? 20_000;
    const indices = await this.#read("list the indexes of", () => this.#table.listIndices());
    if (indices.some((i) => i.columns.includes("vector"))) return;
    if ((await this.#read("count the rows of", () => this.#table.countRows())) < threshold) return;
    await this.#ensureIndex("vector", this.#lance.Index.hnswSq({ distanceType: "cosine" }));
  }

  /** Runs a write under this store's write lock, retrying commit conflicts; wraps LanceDB errors. */
  #write<T>(what: string, op: () => Promise<T>): Promise<T> {
    const run = this.#writes.then(async () => {
      try {
        return await withCommitRetry(async () => {
          // A handle may match against a stale snapshot (lancedb#3377): write against the latest version.
          await this.#table.checkoutLatest();
          return await op();
        }, { attempts: this.#options.writeAttempts ?? 8 });
      } catch (cause) {
        if (cause instanceof RetriesExhausted) {
          throw new CommitConflictError(
            `Cannot ${what} the knowledge store at ${this.uri}: concurrent writers kept winning (${cause.message})`,
            this.uri,
            cause.attempts,
            { cause: cause.cause },
          );
        }
        if (cause instanceof StoreError) throw cause;
        throw new StoreError(
          `Cannot ${what} the knowledge store at ${this.uri}: ${message(cause)}`,
          this.uri,
          {
            cause,
          },
        );
      }
    });
    this.#writes = run.catch(() => {});
    return run;
  }

  async #read<T>(what: string, op: () => Promise<T>): Promise<T> {
    try {
      return await op();
    } catch (cause) {
      throw new StoreError(`Cannot ${what} the knowledge store at ${this.uri}: ${message(cause)}`, this.uri, {
        cause,
      });
    }
  }
}

function validateDocuments(docs: readonly StoreDocument[]): StoreDocument[] {
  if (!Array.isArray(docs)) throw new TypeError("add: docs must be an array of { id, text, metadata? }");
  const byId = new Map<string, StoreDocument>();
  docs.forEach((doc, i) => {
    if (typeof doc !== "object" || doc === null) throw new TypeError(`add: docs[${i}] is not an object`);
    if (typeof doc.id !== "string" || doc.id === "") {
      throw new TypeError(`add: docs[${i}].id must be a non-empty string`);
    }
    if (typeof doc.text !== "string") throw new TypeError(`add: docs[${i}].text must be a string`);
    if (doc.text.trim() === "") throw new TypeError(`add: document "${doc.id}" has no text`);
    const m = doc.metadata;
    if (m !== undefined && (typeof m !== "object" || m === null || Array.isArray(m))) {
      throw new TypeError(`add: the metadata of document "${doc.id}" must be a plain object`);
    }
    byId.delete(doc.id); // keep the last occurrence, in its position
    byId.set(doc.id, doc);
  });
  return [...byId.values()];
}

function hit(row: Record<string, unknown>, score: number, mode: SearchMode): SearchHit {
  let metadata: Record<string, unknown> = {};
  try {
    const parsed = JSON.parse(String(row.metadata));
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) metadata = parsed;
  } catch {
    // Metadata written by another tool that is not JSON: return none rather than fail the search.
  }
  return { id: String(row.doc_id), chunk: Number(row.chunk), text: String(row.text), score, metadata, mode };
}

/** A SQL string literal (DataFusion: single quotes doubled, no backslash escapes). */
function sqlString(s: string): string {
  return `'${s.replaceAll("'", "''")}'`;
}

/** The model's name without directories or revision: `intfloat/e5-small@main` and `/models/e5-small` → `e5-small`. */
function modelName(id: string): string {
  return basename(id.replace(/@[^/]*$/, "").replace(/[\\/]+$/, ""));
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
