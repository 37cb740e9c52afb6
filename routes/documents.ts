/**
 * Documents of the store: `POST /documents` adds (or replaces) documents, `DELETE /documents/:id` deletes one,
 * `GET /documents/search?q=&k=&mode=` searches. Without a store every route answers 422.
 *
 * @module
 */

import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ServiceContext } from "./context.ts";
import { DocumentsBody, readJson, SearchQuery } from "./schemas.ts";

/** The document routes. */
export function documentRoutes(ctx: ServiceContext): Hono {
  return new Hono()
    .post("/documents", async (c) => {
      const body = await readJson(c, DocumentsBody);
      const { added } = await ctx.pipeline().addDocuments(body.documents);
      return c.json({ object: "list", added, ids: body.documents.map((d) => d.id) }, 201);
    })
    .get("/documents/search", async (c) => {
      const parsed = SearchQuery.safeParse(c.req.query());
      if (!parsed.success) throw new HTTPException(400, { cause: parsed.error });
      const { q, k, mode } = parsed.data;
      const hits = await ctx.pipeline().searchDocuments(q, { k, mode });
      return c.json({ object: "list", data: hits });
    })
    .delete("/documents/:id", async (c) => {
      const id = c.req.param("id");
      const { deleted } = await ctx.pipeline().deleteDocuments([id]);
      if (deleted === 0) {
        throw new HTTPException(404, {
          message: `Cannot delete document ${JSON.stringify(id)}: no such document`,
        });
      }
      return c.json({ id, deleted: true });
    });
}
