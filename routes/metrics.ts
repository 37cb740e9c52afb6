/**
 * `GET /metrics`: the service's Prometheus metrics. {@linkcode ServiceMetrics} observes the pipeline (queue,
 * first-token latency, throughput, gate decisions, compression) and counts HTTP requests through a middleware.
 *
 * @module
 */

import { Hono, type MiddlewareHandler } from "hono";
import { routePath } from "hono/route";
import { MetricsRegistry, PROMETHEUS_CONTENT_TYPE } from "../engine/metrics.ts";
import type { FinishSummary, GateReport, Pipeline, PipelineObserver } from "../pipeline.ts";

const RATE_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000];
const RATIO_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1];

/** The metrics of one app; every name starts with `edgemix_`. */
export class ServiceMetrics implements PipelineObserver {
  /** The registry `GET /metrics` renders. */
  readonly registry: MetricsRegistry = new MetricsRegistry();
  readonly #http;
  readonly #httpSeconds;
  readonly #rejected;
  readonly #queueSeconds;
  readonly #ttft;
  readonly #tokensPerSecond;
  readonly #promptTokens;
  readonly #generationTokens;
  readonly #finished;
  readonly #gate;
  readonly #compression;

  /** Metrics of the pipeline `pipeline()` returns (undefined while the model loads), served as `modelId`. */
  constructor(pipeline: () => Pipeline | undefined, modelId: string) {
    const r = this.registry;
    r.gauge("edgemix_info", "The model this server serves.", ["model", "backend", "dtype"], () => {
      const p = pipeline();
      return p ? [[{ model: modelId, backend: p.model.backend, dtype: p.model.dtype }, 1]] : [];
    });
    this.#http = r.counter("edgemix_http_requests_total", "HTTP requests answered.", [
      "method",
      "route",
      "status",
    ]);
    this.#httpSeconds = r.histogram(
      "edgemix_http_request_duration_seconds",
      "Time to the response headers (streams continue after them).",
      ["method", "route"],
    );
    r.gauge("edgemix_requests_running", "Sequences holding a generation slot.", [], () => {
      const p = pipeline();
      return [[undefined, p ? p.scheduler.active : 0]];
    });
    r.gauge("edgemix_requests_waiting", "Requests waiting in the queue for a slot.", [], () => {
      const p = pipeline();
      return [[undefined, p ? p.scheduler.waiting : 0]];
    });
    this.#rejected = r.counter(
      "edgemix_requests_rejected_total",
      "Requests refused or given up before generation: queue_full (429), deadline (504), closed (503).",
      ["reason"],
    );
    this.#queueSeconds = r.histogram("edgemix_request_queue_seconds", "Time spent waiting for a slot.");
    this.#ttft = r.histogram(
      "edgemix_time_to_first_token_seconds",
      "From the request's arrival to its first generated token.",
    );
    this.#tokensPerSecond = r.histogram(
      "edgemix_decode_tokens_per_second",
      "Decode speed of each request after its first token.",
      [],
      RATE_BUCKETS,
    );
    this.#promptTokens = r.counter("edgemix_prompt_tokens_total", "Prompt tokens processed.");
    this.#generationTokens = r.counter("edgemix_generation_tokens_total", "Tokens generated.");
    this.#finished = r.counter(
      "edgemix_requests_finished_total",
      "Generations ended, by reason: stop, length, abort (client left), error.",
      ["finish_reason"],
    );
    r.gauge(
      "edgemix_kv_cache_bytes",
      "Bytes of keys and values held by the running sequences.",
      [],
      () => [[undefined, pipeline()?.kvCacheBytes() ?? 0]],
    );
    r.counter(
      "edgemix_expert_activations_total",
      "Tokens routed to each expert of each MoE layer (when the engine reports them).",
      ["layer", "expert"],
      function* () {
        const counts = pipeline()?.expertActivations();
        if (!counts) return;
        for (let layer = 0; layer < counts.length; layer++) {
          for (let expert = 0; expert < counts[layer].length; expert++) {
            yield [{ layer, expert }, counts[layer][expert]];
          }
        }
      },
    );
    this.#gate = r.counter("edgemix_gate_decisions_total", "Retrieval decisions: retrieve or skip.", [
      "decision",
    ]);
    this.#compression = r.histogram(
      "edgemix_compression_ratio",
      "Compressed over original context tokens.",
      [],
      RATIO_BUCKETS,
    );
  }

  /** Middleware that counts every request by method, matched route and status. */
  middleware(): MiddlewareHandler {
    return async (c, next) => {
      const t0 = performance.now();
      await next();
      const matched = routePath(c, -1);
      // Only middleware matched: an unknown route or method (404, 405), not a label value per path.
      const route = matched === "/*" || matched === "*" ? "unmatched" : matched;
      this.#http.inc({ method: c.req.method, route, status: c.res.status });
      this.#httpSeconds.observe({ method: c.req.method, route }, (performance.now() - t0) / 1000);
    };
  }

  /** The Prometheus text of every metric. */
  render(): string {
    return this.registry.render();
  }

  onAdmitted(queueMs: number): void {
    this.#queueSeconds.observe(undefined, queueMs / 1000);
  }

  onRejected(reason: "queue_full" | "deadline" | "closed"): void {
    this.#rejected.inc({ reason });
  }

  onGate(report: GateReport): void {
    this.#gate.inc({ decision: report.decision });
  }

  onCompression(ratio: number): void {
    this.#compression.observe(undefined, ratio);
  }

  onFirstToken(ttftMs: number): void {
    this.#ttft.observe(undefined, ttftMs / 1000);
  }

  onFinish(s: FinishSummary): void {
    this.#finished.inc({ finish_reason: s.finishReason });
    this.#promptTokens.inc(undefined, s.promptTokens);
    this.#generationTokens.inc(undefined, s.completionTokens);
    if (s.completionTokens >= 2 && s.decodeMs > 0) {
      this.#tokensPerSecond.observe(undefined, (s.completionTokens - 1) / (s.decodeMs / 1000));
    }
  }
}

/** `GET /metrics` in the Prometheus text format 0.0.4. */
export function metricsRoutes(metrics: ServiceMetrics): Hono {
  return new Hono().get(
    "/metrics",
    (c) => c.body(metrics.render(), 200, { "content-type": PROMETHEUS_CONTENT_TYPE }),
  );
}
