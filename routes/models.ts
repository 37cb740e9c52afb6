/**
 * `GET /v1/models` and `GET /v1/models/:id` in the shape of OpenAI's models API: the one model this server
 * serves.
 *
 * @module
 */

import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ServiceContext } from "./context.ts";

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

/** Throws the 404 of a model id this server does not serve. */
export function unknownModel(id: string, served: string): never {
  throw new HTTPException(404, {
    message: `Cannot find model ${JSON.stringify(id)}: this server serves ${JSON.stringify(served)}`,
  });
}

/** `GET /models` and `GET /models/:id` (mounted under `/v1`); ids may contain a slash. */
export function modelRoutes(ctx: ServiceContext): Hono {
  const card: ModelCard = { id: ctx.modelId, object: "model", created: ctx.created, owned_by: "edgemix" };
  return new Hono()
    .get("/models", (c) => c.json({ object: "list", data: [card] }))
    .get("/models/:id{.+}", (c) => {
      const id = c.req.param("id");
      if (id !== card.id) unknownModel(id, card.id);
      return c.json(card);
    });
}
