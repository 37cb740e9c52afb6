/**
 * The HTTP surface of edgemix: a Hono app over a {@linkcode Pipeline} (`/ask`, the OpenAI-compatible `/v1`
 * routes, documents, health and metrics), and the one error mapper that turns every error into an
 * OpenAI-style envelope.
 *
 * @example
 * ```ts
 * import { loadModel } from "../mod.ts";
 * import { createPipeline } from "../pipeline.ts";
 * import { createApp } from "./mod.ts";
 * const model = await loadModel("fixtures/models/olmoe", { backend: "cpu" });
 * const app = createApp(createPipeline({ model }), { modelId: "olmoe" });
 * const res = await app.request("/v1/models");
 * console.log((await res.json()).data[0].id); // "olmoe"
 * await model.dispose();
 * ```
 *
 * @module
 */

export * from "./app.ts";
export * from "./ask.ts";
export * from "./auth.ts";
export * from "./chat.ts";
export * from "./context.ts";
export * from "./documents.ts";
export * from "./errors.ts";
export * from "./health.ts";
export * from "./limits.ts";
export * from "./metrics.ts";
export * from "./models.ts";
export * from "./sse.ts";
