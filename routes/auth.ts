/**
 * The optional API key: when the server has one, every route but `GET /health` needs
 * `Authorization: Bearer <key>`. The comparison is case-sensitive and takes the same time wherever the keys
 * differ; a key in the query string is not accepted.
 *
 * @module
 */

import type { MiddlewareHandler } from "hono";
import { HTTPException } from "hono/http-exception";

const encoder = new TextEncoder();

/** Compares `a` (given) with `b` (expected) in time that depends only on the length of `b`. */
export function timingSafeEqual(a: string, b: string): boolean {
  const x = encoder.encode(a), y = encoder.encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < y.length; i++) diff |= (x[i] ?? 0) ^ y[i];
  return diff === 0;
}

/**
 * Middleware that answers 401 (`authentication_error`, `WWW-Authenticate: Bearer`) unless the request carries
 * `key`; `GET /health` (and `HEAD`) stays public. With `key` undefined, every request passes.
 *
 * @example
 * ```ts
 * import { Hono } from "hono";
 * import { apiKeyAuth } from "./auth.ts";
 * const app = new Hono().use(apiKeyAuth("s3cret")).get("/x", (c) => c.text("ok"));
 * (await app.request("/x")).status; // 401
 * (await app.request("/x", { headers: { authorization: "Bearer s3cret" } })).status; // 200
 * ```
 */
export function apiKeyAuth(key: string | undefined): MiddlewareHandler {
  if (key !== undefined && key.length === 0) {
    throw new TypeError("Cannot protect the API: the API key is empty");
  }
  return async (c, next) => {
    if (key === undefined) return await next();
    if ((c.req.method === "GET" || c.req.method === "HEAD") && /\/health$/.test(c.req.path)) {
      return await next();
    }
    const header = c.req.header("authorization");
    const match = header === undefined ? null : /^Bearer ([^\s]+)\s*$/.exec(header);
    if (!match || !timingSafeEqual(match[1], key)) {
      const message = header === undefined
        ? "Missing API key: send it as Authorization: Bearer <key>"
        : "Invalid API key";
      throw new HTTPException(401, {
        message,
        res: new Response(null, { status: 401, headers: { "WWW-Authenticate": 'Bearer realm="edgemix"' } }),
      });
    }
    await next();
  };
}
