/**
 * `POST /ask`: answer a question with retrieval, compression and generation. With `stream: true` the answer
 * comes as server-sent events: one `meta`, then `token` events, then exactly one `done` or `error`.
 *
 * @module
 */

import { Hono } from "hono";
import type { AskEvent, AskRequest, EventStream } from "../pipeline.ts";
import type { ServiceContext } from "./context.ts";
import { logError, mapError } from "./errors.ts";
import { AskBody, readJson } from "./schemas.ts";
import { SseStream } from "./sse.ts";

/** The pipeline request of a parsed body. */
function askRequest(body: AskBody): AskRequest {
  return {
    question: body.question,
    documents: body.documents,
    retrieval: body.retrieval,
    compression: body.compression,
    lfd: body.lfd,
    maxTokens: body.max_tokens ?? undefined,
    temperature: body.temperature ?? undefined,
    topP: body.top_p ?? undefined,
    topK: body.top_k ?? undefined,
    seed: body.seed ?? undefined,
    stop: typeof body.stop === "string" ? [body.stop] : body.stop ?? undefined,
  };
}

/** The data of an event on the wire: the event without its `type`, which is the SSE event name. */
function eventData(e: AskEvent): Record<string, unknown> {
  const { type: _, ...data } = e;
  return data;
}

/** The `POST /ask` route. */
export function askRoutes(ctx: ServiceContext): Hono {
  return new Hono().post("/ask", async (c) => {
    const body = await readJson(c, AskBody);
    const pipeline = ctx.pipeline();
    const request = askRequest(body);
    if (!body.stream) {
      try {
        return c.json(await pipeline.ask(request, { signal: c.req.raw.signal }));
      } catch (e) {
        // The client left: there is nobody to answer.
        if (c.req.raw.signal.aborted && e instanceof DOMException) return new Response(null, { status: 499 });
        throw e;
      }
    }
    const sse = new SseStream({ keepAliveMs: ctx.keepAliveMs });
    // Request errors, a full queue or a prompt over the context are statuses, thrown before the stream starts.
    const events: EventStream<AskEvent> = pipeline.askStream(request, { signal: sse.signal });
    return sse.response(async (sink) => {
      try {
        for await (const e of events) {
          if (sink.signal.aborted) break;
          await sink.send(eventData(e), e.type);
        }
      } catch (e) {
        if (sink.signal.aborted) return;
        const { status, body } = mapError(e);
        logError(e, status);
        await sink.send(body, "error");
      } finally {
        events.cancel();
      }
    });
  });
}
