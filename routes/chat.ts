/**
 * `POST /v1/chat/completions`, compatible with OpenAI clients: the model's chat template, `max_tokens`,
 * `temperature`, `top_p`, `seed`, `stop`, and streaming (a role chunk first, content chunks, a chunk with the
 * `finish_reason`, a usage chunk when `stream_options.include_usage`, then `data: [DONE]`). An error after the
 * stream started is sent as `data: {"error": {...}}`, followed by `[DONE]`.
 *
 * @module
 */

import { Hono } from "hono";
import type { ChatEvent, ChatRequest, DoneEvent } from "../pipeline.ts";
import type { ServiceContext } from "./context.ts";
import { logError, mapError } from "./errors.ts";
import { unknownModel } from "./models.ts";
import { ChatBody, contentText, readJson } from "./schemas.ts";
import { SseStream } from "./sse.ts";

/** The pipeline request of a parsed body. */
function chatRequest(body: ChatBody): ChatRequest {
  return {
    messages: body.messages.map((m) => {
      const message = { role: m.role === "developer" ? "system" : m.role, content: contentText(m.content) };
      return m.name === undefined ? message : { ...message, name: m.name };
    }),
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? undefined,
    temperature: body.temperature ?? undefined,
    topP: body.top_p ?? undefined,
    topK: body.top_k ?? undefined,
    seed: body.seed ?? undefined,
    stop: typeof body.stop === "string" ? [body.stop] : body.stop ?? undefined,
  };
}

/** The `POST /chat/completions` route (mounted under `/v1`). */
export function chatRoutes(ctx: ServiceContext): Hono {
  return new Hono().post("/chat/completions", async (c) => {
    const body = await readJson(c, ChatBody);
    if (body.model != null && body.model !== ctx.modelId) unknownModel(body.model, ctx.modelId);
    const pipeline = ctx.pipeline();
    const request = chatRequest(body);
    const id = `chatcmpl-${crypto.randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const model = ctx.modelId;

    if (!body.stream) {
      const events = pipeline.chat(request, { signal: c.req.raw.signal });
      let content = "";
      let done: DoneEvent | undefined;
      for await (const e of events) {
        if (e.type === "token") content += e.text;
        else done = e;
      }
      // No done event: the client left, and there is nobody to answer.
      if (!done) return new Response(null, { status: 499 });
      return c.json({
        id,
        object: "chat.completion",
        created,
        model,
        choices: [{
          index: 0,
          message: { role: "assistant", content },
          finish_reason: done.finish_reason,
          logprobs: null,
        }],
        usage: done.usage,
      });
    }

    const sse = new SseStream({ keepAliveMs: ctx.keepAliveMs });
    const events = pipeline.chat(request, { signal: sse.signal });
    const includeUsage = body.stream_options?.include_usage === true;
    const chunk = (delta: Record<string, string>, finishReason: string | null) => ({
      id,
      object: "chat.completion.chunk",
      created,
      model,
      choices: [{ index: 0, delta, finish_reason: finishReason, logprobs: null }],
    });
    return sse.response(async (sink) => {
      try {
        await sink.send(chunk({ role: "assistant", content: "" }, null));
        for await (const e of events as AsyncIterable<ChatEvent>) {
          if (sink.signal.aborted) break;
          if (e.type === "token") await sink.send(chunk({ content: e.text }, null));
          else {
            await sink.send(chunk({}, e.finish_reason));
            if (includeUsage) {
              await sink.send({
                id,
                object: "chat.completion.chunk",
                created,
                model,
                choices: [],
                usage: e.usage,
              });
            }
          }
        }
      } catch (e) {
        if (sink.signal.aborted) return;
        const { status, body } = mapError(e);
        logError(e, status);
        await sink.send(body);
      } finally {
        events.cancel();
      }
      if (!sink.signal.aborted) await sink.send("[DONE]");
    });
  });
}
