/**
 * What every group of routes shares: the served model id and the pipeline, which may still be loading.
 *
 * @module
 */

import { HTTPException } from "hono/http-exception";
import type { Pipeline } from "../pipeline.ts";

/** Where the app is in its life. */
export type ServiceState = "loading" | "ready" | "failed" | "closed";

/** The shared state of the routes of one app. */
export class ServiceContext {
  /** The model id clients name. */
  readonly modelId: string;
  /** Unix time in seconds reported as the model's `created`. */
  readonly created: number;
  /** Milliseconds between keep-alive comments of event streams. */
  readonly keepAliveMs: number;
  #pipeline: Pipeline | undefined;
  #failed = false;

  /** The context of `pipeline`, which may be a promise: routes answer 503 until it resolves. */
  constructor(
    pipeline: Pipeline | Promise<Pipeline>,
    options: { modelId: string; created: number; keepAliveMs: number },
  ) {
    this.modelId = options.modelId;
    this.created = options.created;
    this.keepAliveMs = options.keepAliveMs;
    if (pipeline instanceof Promise) {
      pipeline.then((p) => this.#pipeline = p, () => this.#failed = true);
    } else this.#pipeline = pipeline;
  }

  /** The pipeline, when it is loaded. */
  get current(): Pipeline | undefined {
    return this.#pipeline;
  }

  /** Loading, ready, failed to load, or closed (shutting down). */
  get state(): ServiceState {
    if (this.#failed) return "failed";
    if (!this.#pipeline) return "loading";
    return this.#pipeline.scheduler.closed ? "closed" : "ready";
  }

  /**
   * The pipeline, for a route that needs it.
   *
   * @throws {HTTPException} 503 while the model loads, after it failed to load, or while shutting down.
   */
  pipeline(): Pipeline {
    const state = this.state;
    if (state === "ready") return this.#pipeline!;
    throw new HTTPException(503, { message: unavailableMessage(state) });
  }
}

/** Why the service cannot answer in `state`. */
export function unavailableMessage(state: ServiceState): string {
  if (state === "loading") return "Loading model";
  if (state === "failed") return "The model failed to load";
  return "The server is shutting down";
}
