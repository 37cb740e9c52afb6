/**
 * The HTTP surface of edgemix: a Hono app over a loaded model, and the one error mapper that turns every error
 * into an OpenAI-style envelope.
 *
 * @example
 * ```ts
 * import { loadModel } from "../mod.ts";
 * import { createApp } from "./mod.ts";
 * const model = await loadModel("fixtures/models/olmoe", { backend: "cpu" });
 * const app = createApp(model, { modelId: "olmoe" });
 * Deno.serve({ port: 8080 }, app.fetch);
 * ```
 *
 * @module
 */

export * from "./app.ts";
export * from "./errors.ts";
