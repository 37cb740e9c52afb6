/**
 * Errors of the knowledge store, the embedder and document loading. Bad arguments raise the built-in
 * `TypeError`/`RangeError`; these classes are for conditions a caller handles (a store that cannot be opened or
 * written, an embedder that cannot be loaded, a malformed input file).
 *
 * @module
 */

/** The knowledge store could not be opened, written or searched (schema mismatch, closed store, LanceDB failure). */
export class StoreError extends Error {
  /** The store's URI. */
  readonly uri: string;

  /** Makes the error for the store at `uri`; `cause` is the underlying LanceDB error, if any. */
  constructor(message: string, uri: string, options?: { cause?: unknown }) {
    super(message, { cause: options?.cause });
    this.name = "StoreError";
    this.uri = uri;
  }
}

/** A write kept losing to concurrent commits after every retry. */
export class CommitConflictError extends StoreError {
  /** How many attempts were made. */
  readonly attempts: number;

  /** Makes the error after `attempts` failed attempts on the store at `uri`. */
  constructor(message: string, uri: string, attempts: number, options?: { cause?: unknown }) {
    super(message, uri, options);
    this.name = "CommitConflictError";
    this.attempts = attempts;
  }
}

/** The embedding model could not be loaded or run. */
export class EmbedderError extends Error {
  /** The model source as given: a directory or a Hugging Face repo id. */
  readonly source: string;

  /** Makes the error for the embedder loaded from `source`. */
  constructor(message: string, source: string, options?: { cause?: unknown }) {
    super(message, { cause: options?.cause });
    this.name = "EmbedderError";
    this.source = source;
  }
}

/** An input file for ingestion is unreadable, of an unknown kind, or malformed at some line. */
export class DocumentFormatError extends Error {
  /** The file concerned. */
  readonly file: string;
  /** The 1-based line, when the error is about one line of a JSONL file. */
  readonly line: number | undefined;

  /** Makes the error for `file` (and `line`, 1-based, when known); the message names both. */
  constructor(message: string, file: string, line?: number, options?: { cause?: unknown }) {
    super(`${file}${line === undefined ? "" : `:${line}`}: ${message}`, { cause: options?.cause });
    this.name = "DocumentFormatError";
    this.file = file;
    this.line = line;
  }
}
