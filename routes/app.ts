/**
 * `createApp`: the Hono app that serves a {@linkcode Pipeline} over HTTP.
 *
 * Each group of routes is its own small Hono app, mounted with `app.route()`; errors of all of them go through
 * the one mapper of `errors.ts`. The app can be served as is (`Deno.serve(app.fetch)`) or mounted inside
 * another Hono app (`parent.route("/llm", app)`).
 *
 * @module
 */

import { Hono } from "hono";
import { cors } from "hono/cors";
import type { Pipeline } from "../pipeline.ts";
import { askRoutes } from "./ask.ts";
import { apiKeyAuth } from "./auth.ts";
import { chatRoutes } from "./chat.ts";
import { ServiceContext } from "./context.ts";
import { documentRoutes } from "./documents.ts";
import { handleError, handleNotFound } from "./errors.ts";
import { healthRoutes } from "./health.ts";
import { limitBody, rejectOtherMethods } from "./limits.ts";
import { metricsRoutes, ServiceMetrics } from "./metrics.ts";
import { modelRoutes } from "./models.ts";

/** Options of {@linkcode createApp}. */
export interface AppOptions {
  /**
   * The model id clients name in requests and see in `/v1/models` (default: the model's architecture; required
   * when the pipeline is still a promise).
   */
  modelId?: string;
  /** Unix time in seconds reported as the model's `created` (default: when the app is created). */
  created?: number;
  /** When set, every route but `GET /health` needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Largest body of `/ask` and `/v1/*` requests, in bytes (default 1 MiB). */
  bodyLimitBytes?: number;
  /** Largest body of `POST /documents`, in bytes (default 32 MiB). */
  documentsBodyLimitBytes?: number;
  /** Milliseconds between keep-alive comments of event streams; 0 disables (default 15 000). */
  keepAliveMs?: number;
  /** Origins allowed to call the API from a browser (CORS); none by default. */
  corsOrigins?: string[];
}

/** An app from {@linkcode createApp}, with the metrics it records. */
export type EdgemixApp = Hono & {
  /** The metrics `GET /metrics` serves. */
  readonly metrics: ServiceMetrics;
};

/**
 * Builds the HTTP app of `pipeline`: `POST /ask`, `POST /v1/chat/completions`, `GET /v1/models`,
 * `POST /documents`, `DELETE /documents/:id`, `GET /documents/search`, `GET /health` and `GET /metrics`.
 * Every error is an OpenAI-style envelope. `pipeline` may be a promise (a model still loading): until it
 * resolves, `/health` and every other route answer 503.
 *
 * @example
 * ```ts
 * import { loadModel } from "../mod.ts";
 * import { createPipeline } from "../pipeline.ts";
 * import { createApp } from "./app.ts";
 * const model = await loadModel("fixtures/models/olmoe", { backend: "cpu" });
 * const app = createApp(createPipeline({ model }), { modelId: "olmoe" });
 * const res = await app.request("/health");
 * console.log(await res.json()); // { status: "ok", model: "olmoe", backend: "cpu", dtype: "f32" }
 * await model.dispose();
 * ```
 */
export function createApp(pipeline: Pipeline | Promise<Pipeline>, options: AppOptions = {}): EdgemixApp {
  const ready = pipeline instanceof Promise ? undefined : pipeline;
  if (!(pipeline instanceof Promise) && typeof ready?.askStream !== "function") {
    throw new TypeError(
      "Cannot create the app: expected a Pipeline (from createPipeline) or a promise of one",
    );
  }
  const modelId = options.modelId ?? ready?.model.config.architecture;
  if (typeof modelId !== "string" || modelId.length === 0) {
    throw new TypeError(
      `Cannot create the app: modelId must be a non-empty string, got ${JSON.stringify(modelId)}` +
        (ready ? "" : " (it is required while the pipeline is a promise)"),
    );
  }
  const created = options.created ?? Math.floor(Date.now() / 1000);
  if (!Number.isInteger(created) || created < 0) {
    throw new RangeError(`Cannot create the app: created must be a non-negative integer, got ${created}`);
  }
  const keepAliveMs = options.keepAliveMs ?? 15_000;
  const ctx = new ServiceContext(pipeline, { modelId, created, keepAliveMs });
  const metrics = new ServiceMetrics(() => ctx.current, modelId);
  if (ready) ready.observe(metrics);
  else (pipeline as Promise<Pipeline>).then((p) => p.observe(metrics), () => {});

  const app = new Hono();
  app.onError(handleError);
  app.notFound(handleNotFound);
  app.use("*", metrics.middleware());
  app.use("*", rejectOtherMethods(app));
  if (options.corsOrigins && options.corsOrigins.length > 0) {
    app.use(
      "*",
      cors({
        origin: options.corsOrigins,
        allowHeaders: ["authorization", "content-type"],
        allowMethods: ["GET", "POST", "DELETE", "OPTIONS"],
      }),
    );
  }
  app.use("*", apiKeyAuth(options.apiKey));
  const bodyLimit = limitBody(options.bodyLimitBytes ?? 1 << 20);
  app.use("/ask", bodyLimit);
  app.use("/v1/*", bodyLimit);
  app.use("/documents", limitBody(options.documentsBodyLimitBytes ?? 32 << 20));
  app.route("/", healthRoutes(ctx));
  app.route("/", metricsRoutes(metrics));
  app.route("/", askRoutes(ctx));
  app.route("/", documentRoutes(ctx));
  app.route("/v1", modelRoutes(ctx));
  app.route("/v1", chatRoutes(ctx));
  return Object.assign(app, { metrics });
}
