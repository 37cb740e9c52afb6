/**
 * `GET /health`: 200 with the model id, backend and dtype when the server can answer; 503 in the error
 * envelope while the model loads, after it failed to load, and while the server shuts down. The route is
 * public even when an API key is set.
 *
 * @module
 */

import { Hono } from "hono";
import type { Model } from "../engine/types.ts";
import { type ServiceContext, unavailableMessage } from "./context.ts";
import { envelope } from "./errors.ts";

/** The body of `GET /health` when the server is ready. */
export interface HealthStatus {
  /** "ok" while the server answers. */
  status: "ok";
  /** The model id. */
  model: string;
  /** Where the model runs. */
  backend: Model["backend"];
  /** Precision of weights and cache. */
  dtype: Model["dtype"];
}

/** The `GET /health` route. */
export function healthRoutes(ctx: ServiceContext): Hono {
  return new Hono().get("/health", (c) => {
    const p = ctx.current;
    const state = ctx.state;
    if (state !== "ready" || !p) {
      const { status, body } = envelope(503, unavailableMessage(state), null);
      return c.json(body, status);
    }
    const body: HealthStatus = {
      status: "ok",
      model: ctx.modelId,
      backend: p.model.backend,
      dtype: p.model.dtype,
    };
    return c.json(body);
  });
}
