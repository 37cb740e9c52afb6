/**
 * Server-sent events with what an inference server needs: backpressure (a slow reader slows the producer
 * instead of growing a buffer), keep-alive comments, and cancellation when the client goes away.
 *
 * The disconnect is detected through the response body stream being cancelled, which Deno reports when the
 * connection closes; `request.signal` is not used because Deno also aborts it when a response is returned.
 *
 * @module
 */

/** Where a producer writes events. */
export interface SseSink {
  /** Aborted when the client disconnects (the body stream was cancelled). */
  readonly signal: AbortSignal;
  /** Writes one event: `event: name` (when given) and `data: <data>`; objects are written as JSON. */
  send(data: unknown, event?: string): Promise<void>;
}

/** Options of {@linkcode SseStream}. */
export interface SseOptions {
  /** Milliseconds between `: ping` comments while nothing else is written; 0 disables (default 15 000). */
  keepAliveMs?: number;
  /** Events buffered before the producer waits for the client (default 64). */
  highWaterMark?: number;
}

const encoder = new TextEncoder();

/**
 * One event stream. Create it first, to have its {@linkcode signal} for the work it will report on, then
 * call {@linkcode response} with the producer.
 *
 * @example
 * ```ts
 * import { SseStream } from "./sse.ts";
 * const sse = new SseStream({ keepAliveMs: 0 });
 * const res = sse.response(async (sink) => {
 *   await sink.send({ text: "hi" }, "token");
 *   await sink.send({ finish_reason: "stop" }, "done");
 * });
 * await res.text(); // "event: token\ndata: {\"text\":\"hi\"}\n\nevent: done\n..."
 * ```
 */
export class SseStream {
  readonly #abort = new AbortController();
  readonly #keepAliveMs: number;
  readonly #highWaterMark: number;

  /** Makes the stream; nothing is sent until {@linkcode response}. */
  constructor(options: SseOptions = {}) {
    this.#keepAliveMs = options.keepAliveMs ?? 15_000;
    this.#highWaterMark = options.highWaterMark ?? 64;
    if (!(this.#keepAliveMs >= 0) || !Number.isInteger(this.#highWaterMark) || this.#highWaterMark < 1) {
      throw new RangeError("Cannot create the event stream: keepAliveMs must be >= 0 and highWaterMark >= 1");
    }
  }

  /** Aborted when the client disconnects. */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  /**
   * The streaming response. `produce` writes the events; the stream closes when it returns. An error it
   * throws is logged and closes the stream: producers send their own error event first.
   */
  response(produce: (sink: SseSink) => Promise<void>, headers: Record<string, string> = {}): Response {
    const abort = this.#abort;
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    let waiting: PromiseWithResolvers<void> | undefined;
    let closed = false;
    let timer: ReturnType<typeof setInterval> | undefined;
    let lastWrite = Date.now();
    const wake = () => {
      waiting?.resolve();
      waiting = undefined;
    };
    const stop = () => {
      if (timer !== undefined) clearInterval(timer);
      timer = undefined;
    };
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        controller = c;
      },
      pull() {
        wake();
      },
      cancel(reason) {
        closed = true;
        stop();
        abort.abort(reason ?? new DOMException("The client disconnected", "AbortError"));
        wake();
      },
    }, new CountQueuingStrategy({ highWaterMark: this.#highWaterMark }));
    const write = async (text: string) => {
      if (closed) return;
      controller.enqueue(encoder.encode(text));
      lastWrite = Date.now();
      if ((controller.desiredSize ?? 1) <= 0 && !closed) {
        waiting = Promise.withResolvers<void>();
        await waiting.promise;
      }
    };
    const sink: SseSink = {
      signal: abort.signal,
      send: (data, event) => {
        if (event !== undefined && /[\r\n]/.test(event)) {
          throw new TypeError("Cannot send the event: its name contains a line break");
        }
        const payload = typeof data === "string" ? data : JSON.stringify(data);
        const lines = payload.split(/\r\n|\r|\n/).map((l) => `data: ${l}`).join("\n");
        return write(`${event === undefined ? "" : `event: ${event}\n`}${lines}\n\n`);
      },
    };
    if (this.#keepAliveMs > 0) {
      const every = this.#keepAliveMs;
      timer = setInterval(() => {
        if (!closed && Date.now() - lastWrite >= every && (controller.desiredSize ?? 0) > 0) {
          controller.enqueue(encoder.encode(": ping\n\n"));
          lastWrite = Date.now();
        }
      }, Math.max(10, Math.floor(every / 2)));
    }
    (async () => {
      try {
        await produce(sink);
      } catch (e) {
        if (!abort.signal.aborted) console.error("edgemix: an event stream failed:", e);
      } finally {
        stop();
        if (!closed) {
          closed = true;
          controller.close();
        }
      }
    })();
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
        ...headers,
      },
    });
  }
}
