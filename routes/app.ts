/**
 * `createApp`: the Hono app that serves a loaded {@linkcode Model} over HTTP.
 *
 * Each group of routes is its own small Hono app, mounted with `app.route()`; errors of all of them go through
 * the one mapper of `errors.ts`.
 *
 * @module
 */

import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import type { Model } from "../engine/types.ts";
import { handleError, handleNotFound } from "./errors.ts";

/** Options of {@linkcode createApp}. */
export interface AppOptions {
  /** The model id clients name in requests and see in `/v1/models` (default: the model's architecture). */
  modelId?: string;
  /** Unix time in seconds reported as the model's `created` (default: when the app is created). */
  created?: number;
}

/** One model in the OpenAI models API. */
export interface ModelCard {
  /** The model id. */
  id: string;
  /** Always "model". */
  object: "model";
  /** Unix time in seconds. */
  created: number;
  /** Always "edgemix". */
  owned_by: "edgemix";
}

/** The body of `GET /health`. */
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

/**
 * Builds the HTTP app of `model`: `GET /health`, `GET /v1/models`, `GET /v1/models/:id`; anything else is a 404
 * in the OpenAI error envelope.
 *
 * @example
 * ```ts
 * import { createApp, loadModel } from "../mod.ts";
 * const model = await loadModel("fixtures/models/olmoe", { backend: "cpu" });
 * const app = createApp(model, { modelId: "olmoe" });
 * const res = await app.request("/health");
 * console.log(await res.json()); // { status: "ok", model: "olmoe", backend: "cpu", dtype: "f32" }
 * await model.dispose();
 * ```
 */
export function createApp(model: Model, options: AppOptions = {}): Hono {
  const modelId = options.modelId ?? model.config.architecture;
  if (typeof modelId !== "string" || modelId.length === 0) {
    throw new TypeError(
      `Cannot create the app: modelId must be a non-empty string, got ${JSON.stringify(modelId)}`,
    );
  }
  const created = options.created ?? Math.floor(Date.now() / 1000);
  if (!Number.isInteger(created) || created < 0) {
    throw new RangeError(`Cannot create the app: created must be a non-negative integer, got ${created}`);
  }
  const card: ModelCard = { id: modelId, object: "model", created, owned_by: "edgemix" };

  const app = new Hono();
  app.onError(handleError);
  app.notFound(handleNotFound);
  app.route("/", healthRoutes(model, modelId));
  app.route("/v1", modelRoutes([card]));
  return app;
}

/** `GET /health`: liveness, with the model id, backend and dtype. */
function healthRoutes(model: Model, modelId: string): Hono {
  return new Hono().get("/health", (c) => {
    const body: HealthStatus = { status: "ok", model: modelId, backend: model.backend, dtype: model.dtype };
    return c.json(body);
  });
}

/** `GET /models` and `GET /models/:id` in the OpenAI list shape. */
function modelRoutes(cards: readonly ModelCard[]): Hono {
  return new Hono()
    .get("/models", (c) => c.json({ object: "list", data: cards }))
    .get("/models/:id{.+}", (c) => {
      const id = c.req.param("id");
      const card = cards.find((m) => m.id === id);
      if (!card) {
        const served = cards.map((m) => JSON.stringify(m.id)).join(", ");
        throw new HTTPException(404, {
          message: `Cannot find model ${JSON.stringify(id)}: this server serves ${served}`,
        });
      }
      return c.json(card);
    });
}
