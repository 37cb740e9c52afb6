/**
 * Request limits: the size of a body (413 before it is buffered, also for chunked bodies) and 405 for a
 * method a path does not answer.
 *
 * @module
 */

import type { Hono, MiddlewareHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import { methodNotAllowed } from "hono/method-not-allowed";
import { envelope } from "./errors.ts";

/**
 * Middleware that answers 413 for a body over `maxBytes`: from `Content-Length` without reading the body, or
 * while reading a chunked body, stopping at the limit. The rest of a refused body is cancelled, not buffered.
 */
export function limitBody(maxBytes: number): MiddlewareHandler {
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) {
    throw new RangeError(`Cannot limit bodies: maxBytes must be a positive integer, got ${maxBytes}`);
  }
  const tooLarge = () =>
    new HTTPException(413, { message: `The request body is larger than ${maxBytes} bytes` });
  return async (c, next) => {
    const raw = c.req.raw;
    if (!raw.body) return await next();
    const length = raw.headers.get("content-length");
    if (length !== null && !raw.headers.has("transfer-encoding")) {
      if (Number(length) > maxBytes) {
        await raw.body.cancel().catch(() => {});
        throw tooLarge();
      }
      return await next();
    }
    // No trustworthy length: read up to the limit.
    const reader = raw.body.getReader();
    const chunks: Uint8Array[] = [];
    let size = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > maxBytes) {
        await reader.cancel().catch(() => {});
        throw tooLarge();
      }
      chunks.push(value);
    }
    const body = new Uint8Array(size);
    let offset = 0;
    for (const chunk of chunks) {
      body.set(chunk, offset);
      offset += chunk.byteLength;
    }
    c.req.raw = new Request(raw, { body });
    await next();
  };
}

/**
 * Middleware that turns the 404 of a path that exists under another method into a 405 envelope with an
 * `Allow` header.
 */
export function rejectOtherMethods(app: Hono): MiddlewareHandler {
  return methodNotAllowed({
    app,
    onMethodNotAllowed: (c, methods) => {
      const { status, body } = envelope(
        405,
        `Cannot ${c.req.method} ${c.req.path}: the route answers ${methods.join(", ")}`,
        null,
      );
      return c.json(body, status, { Allow: methods.join(", ") });
    },
  });
}
