/**
 * The zod schemas of every request body and query, and {@linkcode readJson}, which reads a body strictly:
 * a JSON content type, valid UTF-8, valid JSON, then the schema. Unknown fields are ignored (as vLLM and the
 * OpenAI clients expect); known fields are never coerced from another type.
 *
 * @module
 */

import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import { z } from "zod";
import { MAX_REQUEST_DOCUMENTS, MAX_STOP_STRINGS } from "../pipeline.ts";

/** A string that is well-formed Unicode (no lone surrogates). */
const text = () =>
  z.string().refine((s) => s.isWellFormed(), "contains a lone surrogate (not valid Unicode)");

/** Sampling fields shared by `/ask` and `/v1/chat/completions`. */
const sampling = {
  max_tokens: z.int().min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: z.int().min(0).nullish(),
  seed: z.int().nullish(),
  stop: z.union([text().min(1), z.array(text().min(1)).max(MAX_STOP_STRINGS)]).nullish(),
  stream: z.boolean().nullish(),
};

/** The body of `POST /ask`. */
export const AskBody = z.object({
  question: text(),
  documents: z.array(z.union([text(), z.object({ id: text().optional(), text: text() })]))
    .max(MAX_REQUEST_DOCUMENTS).optional(),
  retrieval: z.enum(["auto", "always", "never"]).optional(),
  compression: z.union([z.object({ rate: z.number().gt(0).max(1) }), z.literal(false)]).optional(),
  lfd: z.object({
    layer: z.union([z.enum(["off", "auto"]), z.number().int().min(0)]),
    alpha: z.number().finite().optional(),
  }).strict().optional(),
  ...sampling,
});

/** A parsed `POST /ask` body. */
export type AskBody = z.infer<typeof AskBody>;

/** One part of a message's content; only text parts are supported. */
const ContentPart = z.object({ type: z.literal("text"), text: text() });

/** One chat message in the OpenAI shape. */
const Message = z.object({
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  content: z.union([text(), z.array(ContentPart).max(1024)]),
  name: text().optional(),
});

/** The body of `POST /v1/chat/completions`. */
export const ChatBody = z.object({
  model: text().nullish(),
  messages: z.array(Message).min(1).max(4096),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  max_completion_tokens: z.int().min(1).nullish(),
  n: z.literal(1).nullish(),
  presence_penalty: z.literal(0).nullish(),
  frequency_penalty: z.literal(0).nullish(),
  ...sampling,
});

/** A parsed `POST /v1/chat/completions` body. */
export type ChatBody = z.infer<typeof ChatBody>;

/** The body of `POST /documents`. */
export const DocumentsBody = z.object({
  documents: z.array(z.object({
    id: text().min(1).max(256),
    text: text(),
    metadata: z.record(z.string(), z.unknown()).optional(),
  })).min(1).max(10_000),
});

/** A parsed `POST /documents` body. */
export type DocumentsBody = z.infer<typeof DocumentsBody>;

/** The query of `GET /documents/search` (query strings are text, so `k` is parsed from its digits). */
export const SearchQuery = z.object({
  q: text().min(1),
  k: z.string().regex(/^\d{1,4}$/, "must be an integer from 1 to 1000").transform(Number)
    .pipe(z.int().min(1).max(1000)).optional(),
  mode: z.enum(["fts", "vector", "hybrid"]).optional(),
});

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

/**
 * Reads the JSON body of `c` and validates it with `schema`.
 *
 * @throws {HTTPException} 415 for a content type other than JSON, 400 for a body that is not UTF-8 or not JSON,
 * 400 with the zod error as `cause` (mapped to `param`) for a body that does not match.
 */
export async function readJson<S extends z.ZodType>(c: Context, schema: S): Promise<z.infer<S>> {
  const type = c.req.header("content-type");
  if (type !== undefined && !/^application\/([a-z0-9.+-]+\+)?json\s*(;|$)/i.test(type.trim())) {
    throw new HTTPException(415, {
      message: `Unsupported content type ${JSON.stringify(type)}: send application/json`,
    });
  }
  const bytes = new Uint8Array(await c.req.arrayBuffer());
  let body: string;
  try {
    body = utf8.decode(bytes);
  } catch {
    throw new HTTPException(400, { message: "The request body is not valid UTF-8" });
  }
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch (e) {
    throw new HTTPException(400, {
      message: `Malformed JSON in request body: ${e instanceof Error ? e.message : String(e)}`,
    });
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new HTTPException(400, { cause: parsed.error });
  return parsed.data;
}

/** The text of a message's content: a string, or its text parts joined. */
export function contentText(content: string | { text: string }[]): string {
  return typeof content === "string" ? content : content.map((p) => p.text).join("");
}
