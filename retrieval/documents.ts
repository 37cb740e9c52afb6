/**
 * Reads documents for ingestion from files: plain text and Markdown (one document per file, the file name as
 * id) and JSONL (one `{ "id", "text", "metadata"? }` object per line).
 *
 * @module
 */

import { basename, extname } from "node:path";
import { DocumentFormatError } from "./errors.ts";
import type { StoreDocument } from "./store.ts";

/** How a file is read: `text` (.txt, .text, .md, .markdown) or `jsonl` (.jsonl, .ndjson). */
export type DocumentFileKind = "text" | "jsonl";

const KINDS: Record<string, DocumentFileKind> = {
  ".txt": "text",
  ".text": "text",
  ".md": "text",
  ".markdown": "text",
  ".jsonl": "jsonl",
  ".ndjson": "jsonl",
};

/** The kind of `path` by its extension (case-insensitive), or undefined for an unsupported file. */
export function documentFileKind(path: string): DocumentFileKind | undefined {
  return KINDS[extname(path).toLowerCase()];
}

/**
 * Yields the documents of `path`. A text or Markdown file is one document: id = the file name (without
 * directories), metadata `{ source: path }` plus `title` (the first `# ` heading) for Markdown. A JSONL file
 * yields one document per non-blank line; `id` may be a string or a number (stored as a string).
 * Throws {@link DocumentFormatError} naming the file (and line) for an unreadable, empty or malformed input.
 */
export async function* readDocuments(path: string): AsyncGenerator<StoreDocument> {
  const kind = documentFileKind(path);
  if (!kind) {
    throw new DocumentFormatError(
      `unsupported file type "${extname(path)}" (expected ${Object.keys(KINDS).join(", ")})`,
      path,
    );
  }
  if (kind === "text") {
    const text = await readText(path);
    if (text.trim() === "") throw new DocumentFormatError("the file is empty", path);
    const metadata: Record<string, unknown> = { source: path };
    if (/\.(md|markdown)$/i.test(path)) {
      const title = /^#[ \t]+(.+?)[ \t#]*$/m.exec(text)?.[1];
      if (title) metadata.title = title;
    }
    yield { id: basename(path), text, metadata };
    return;
  }
  let lineNo = 0;
  for await (const line of readLines(path)) {
    lineNo++;
    if (line.trim() === "") continue;
    yield parseJsonlLine(line, path, lineNo);
  }
}

/** Parses one JSONL line into a document; `file` and `line` (1-based) name the place in errors. */
export function parseJsonlLine(text: string, file: string, line: number): StoreDocument {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new DocumentFormatError(`not valid JSON (${(cause as Error).message})`, file, line, { cause });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new DocumentFormatError('expected an object { "id", "text", "metadata"? }', file, line);
  }
  const { id, text: body, metadata } = value as Record<string, unknown>;
  if (!((typeof id === "string" && id !== "") || (typeof id === "number" && Number.isFinite(id)))) {
    throw new DocumentFormatError('"id" must be a non-empty string or a number', file, line);
  }
  if (typeof body !== "string" || body.trim() === "") {
    throw new DocumentFormatError('"text" must be a string with some non-space text', file, line);
  }
  if (
    metadata !== undefined && (typeof metadata !== "object" || metadata === null || Array.isArray(metadata))
  ) {
    throw new DocumentFormatError('"metadata" must be an object when present', file, line);
  }
  const doc: StoreDocument = { id: String(id), text: body };
  if (metadata !== undefined) doc.metadata = metadata as Record<string, unknown>;
  return doc;
}

async function readText(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (cause) {
    throw new DocumentFormatError(`cannot read the file (${(cause as Error).message})`, path, undefined, {
      cause,
    });
  }
}

/** The lines of a UTF-8 file, without their line terminators (`\n` or `\r\n`), read as a stream. */
async function* readLines(path: string): AsyncGenerator<string> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (cause) {
    throw new DocumentFormatError(`cannot read the file (${(cause as Error).message})`, path, undefined, {
      cause,
    });
  }
  let rest = "";
  const decoder = file.readable.pipeThrough(new TextDecoderStream());
  for await (const part of decoder) {
    rest += part;
    let start = 0;
    for (let nl = rest.indexOf("\n"); nl >= 0; nl = rest.indexOf("\n", start)) {
      yield rest.slice(start, nl).replace(/\r$/, "");
      start = nl + 1;
    }
    rest = rest.slice(start);
  }
  if (rest !== "") yield rest.replace(/\r$/, "");
}
