/**
 * The single error mapper of the HTTP surface: every error a route throws, and every unmatched route, becomes
 * an OpenAI-style envelope `{ "error": { "message", "type", "param", "code" } }` with the matching status.
 *
 * Engine code throws domain errors; only this file knows about HTTP statuses.
 *
 * @module
 */

import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { ZodError } from "zod";
import { ChatTemplateError } from "../engine/chat_template.ts";
import { ContextOverflowError, GpuError, ModelDisposedError } from "../engine/errors.ts";
import { DeadlineExceededError, QueueFullError, SchedulerClosedError } from "../engine/scheduler.ts";
import {
  DocumentStoreError,
  FeatureUnavailableError,
  InvalidRequestError,
  PromptTooLongError,
} from "../pipeline.ts";

/** The `type` of an error envelope, as OpenAI's API names them. */
export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "rate_limit_error"
  | "exceed_context_size_error"
  | "server_error";

/** The body of every error response: `{ "error": { "message", "type", "param", "code" } }`. */
export interface ErrorEnvelope {
  /** What went wrong. */
  error: {
    /** A sentence for people; never a stack trace. */
    message: string;
    /** The class of the error. */
    type: ErrorType;
    /** The request field at fault, when one is. */
    param: string | null;
    /** The HTTP status of the response. */
    code: number;
    /** Tokens of the prompt (`exceed_context_size_error` only). */
    n_prompt_tokens?: number;
    /** Positions of the context (`exceed_context_size_error` only). */
    n_ctx?: number;
  };
}

/** An error mapped to its HTTP status and envelope. */
export interface MappedError {
  /** The HTTP status of the response. */
  status: ContentfulStatusCode;
  /** The response body. */
  body: ErrorEnvelope;
  /** Headers the response needs (`Retry-After` of a 429). */
  headers?: Record<string, string>;
}

const INTERNAL_MESSAGE = "Internal server error";

/**
 * Maps any thrown value to an HTTP status and an error envelope.
 *
 * - `HTTPException` (including Hono's "Malformed JSON in request body") keeps its status;
 * - a zod validation error, `InvalidRequestError` (with its `param`), `RangeError`, `TypeError`, a chat template
 *   that cannot render the messages, and `SyntaxError` (a body that is not JSON) are 400 `invalid_request_error`;
 * - `ContextOverflowError` is 400 `exceed_context_size_error`, with `n_prompt_tokens` and `n_ctx` when known;
 * - `FeatureUnavailableError` (the request needs a stage this server lacks) is 422;
 * - `QueueFullError` is 429 with `Retry-After`;
 * - `ModelDisposedError`, `GpuError`, `SchedulerClosedError` (shutting down) and `DocumentStoreError` are 503;
 * - `DeadlineExceededError` is 504;
 * - anything else is 500 `server_error` with a generic message.
 *
 * @example
 * ```ts
 * const { status, body } = mapError(new RangeError("Cannot generate: maxTokens must be positive"));
 * // status 400, body.error.type "invalid_request_error"
 * ```
 */
export function mapError(err: unknown): MappedError {
  const zod = err instanceof HTTPException && err.cause instanceof ZodError ? err.cause : err;
  if (zod instanceof ZodError) {
    const issue = zod.issues[0];
    const param = issue && issue.path.length > 0 ? issue.path.map(String).join(".") : null;
    const message = zod.issues
      .map((i) => i.path.length > 0 ? `${i.path.map(String).join(".")}: ${i.message}` : i.message)
      .join("; ");
    return envelope(400, message || "Invalid request", param);
  }
  if (err instanceof HTTPException) {
    return envelope(err.status, err.message || defaultMessage(err.status), null);
  }
  if (err instanceof QueueFullError) {
    const mapped = envelope(429, err.message, null);
    mapped.headers = { "Retry-After": String(err.retryAfterSeconds) };
    return mapped;
  }
  if (err instanceof DeadlineExceededError) return envelope(504, err.message, null);
  if (err instanceof FeatureUnavailableError) return envelope(422, err.message, err.param);
  if (
    err instanceof ModelDisposedError || err instanceof GpuError || err instanceof SchedulerClosedError ||
    err instanceof DocumentStoreError
  ) {
    return envelope(503, err.message || "The model is unavailable", null);
  }
  if (err instanceof ContextOverflowError) {
    const mapped = envelope(400, err.message, null);
    mapped.body.error.type = "exceed_context_size_error";
    if (err instanceof PromptTooLongError) {
      mapped.body.error.n_prompt_tokens = err.nPromptTokens;
      mapped.body.error.n_ctx = err.nCtx;
    }
    return mapped;
  }
  if (err instanceof InvalidRequestError) return envelope(400, err.message, err.param);
  if (err instanceof ChatTemplateError) return envelope(400, err.message, "messages");
  if (err instanceof SyntaxError && /\bJSON\b/.test(err.message)) {
    // What `c.req.json()` throws for a body that is not JSON; Hono's validator says the same in its own words.
    return envelope(400, `Malformed JSON in request body: ${err.message}`, null);
  }
  if (err instanceof RangeError || err instanceof TypeError || err instanceof SyntaxError) {
    return envelope(400, err.message || "Invalid request", null);
  }
  return envelope(500, INTERNAL_MESSAGE, null);
}

/** Builds the envelope of `status` with `message`; the type follows from the status. */
export function envelope(status: ContentfulStatusCode, message: string, param: string | null): MappedError {
  return { status, body: { error: { message, type: errorType(status), param, code: status } } };
}

/** The envelope type of an HTTP status. */
export function errorType(status: number): ErrorType {
  if (status === 401) return "authentication_error";
  if (status === 403) return "permission_error";
  if (status === 404) return "not_found_error";
  if (status === 429) return "rate_limit_error";
  if (status >= 400 && status < 500) return "invalid_request_error";
  return "server_error";
}

/**
 * The `app.onError` handler: answers with the envelope of {@linkcode mapError}. Errors that map to 500 are
 * logged with their stack on the server; the client sees only a generic message.
 */
export function handleError(err: Error, c: Context): Response {
  const { status, body, headers } = mapError(err);
  logError(err, status);
  const res = c.json(body, status, headers);
  if (err instanceof HTTPException && err.res) {
    // Keep headers such as WWW-Authenticate that middleware put on the exception's response.
    for (const [name, value] of err.res.headers) {
      if (!/^content-(type|length)$/i.test(name)) res.headers.set(name, value);
    }
  }
  return res;
}

/**
 * Logs what a client cannot see: every 500 with its stack, and the cause of a failing document store.
 */
export function logError(err: unknown, status: number): void {
  if (status >= 500 && status !== 503 && status !== 504) console.error(err);
  else if (err instanceof DocumentStoreError) console.error(err.message, err.cause);
}

/** The `app.notFound` handler: a 404 envelope naming the method and path. */
export function handleNotFound(c: Context): Response {
  const { status, body } = envelope(404, `Cannot ${c.req.method} ${c.req.path}: no such route`, null);
  return c.json(body, status);
}

function defaultMessage(status: number): string {
  if (status === 404) return "Not found";
  if (status >= 500) return INTERNAL_MESSAGE;
  return "Invalid request";
}
