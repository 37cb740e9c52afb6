/**
 * Admission control for generation: at most `maxConcurrency` sequences run at once, at most `queue` more wait
 * for a slot, and anything beyond is refused at once (the HTTP layer answers 429 with `Retry-After`).
 *
 * The scheduler does not run the model itself: a holder of a slot calls `model.stream()` and the engine
 * decides how concurrent sequences share GPU passes (on WebGPU: continuous batching, engine/gpu_decoder.ts).
 * Waiting requests leave the queue when their deadline passes or their signal aborts, so they never reach the
 * model afterwards.
 *
 * @example
 * ```ts
 * import { Scheduler } from "./scheduler.ts";
 * const scheduler = new Scheduler({ maxConcurrency: 2, queue: 8 });
 * const reservation = scheduler.reserve({ deadline: Date.now() + 30_000 });
 * try {
 *   await reservation.ready; // a slot is ours
 *   // ... run model.stream() ...
 * } finally {
 *   reservation.release();
 * }
 * ```
 *
 * @module
 */

/** The queue is full: the request is refused without waiting. */
export class QueueFullError extends Error {
  /** Seconds after which a retry is likely to be admitted. */
  readonly retryAfterSeconds: number;

  /** Makes the error. */
  constructor(message: string, retryAfterSeconds: number) {
    super(message);
    this.name = "QueueFullError";
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/** A request's deadline passed before it produced any output. */
export class DeadlineExceededError extends Error {
  /** Makes the error. */
  constructor(message: string) {
    super(message);
    this.name = "DeadlineExceededError";
  }
}

/** The scheduler was closed (the server is shutting down); no new request is admitted. */
export class SchedulerClosedError extends Error {
  /** Makes the error. */
  constructor() {
    super("Cannot admit the request: the server is shutting down");
    this.name = "SchedulerClosedError";
  }
}

/** Options of {@linkcode Scheduler}. */
export interface SchedulerOptions {
  /** Sequences that run at once (>= 1). */
  maxConcurrency: number;
  /** Requests that may wait for a slot (>= 0). */
  queue: number;
}

/** Options of {@linkcode Scheduler.reserve}. */
export interface ReserveOptions {
  /** Leaves the queue (or gives the slot back) when it aborts. */
  signal?: AbortSignal;
  /** Time (ms since the epoch, as `Date.now()`) after which a waiting request fails with a deadline error. */
  deadline?: number;
}

/** A place in the scheduler: a slot, or a place in the queue until a slot frees. */
export interface Reservation {
  /** Resolves when the slot is ours; rejects on deadline, abort or close. */
  readonly ready: Promise<void>;
  /** Milliseconds spent waiting in the queue (final once `ready` settled). */
  readonly queuedMs: number;
  /** Frees the slot, or leaves the queue. Idempotent. */
  release(): void;
}

interface Waiter {
  resolve(): void;
  reject(e: unknown): void;
  cleanup(): void;
}

/** A bounded queue in front of `maxConcurrency` slots; see the module doc. */
export class Scheduler {
  /** Sequences that run at once. */
  readonly maxConcurrency: number;
  /** Requests that may wait. */
  readonly queueCapacity: number;
  #active = 0;
  readonly #waiting: Waiter[] = [];
  #closed = false;
  /** Moving average of how long a slot is held, in ms (for Retry-After). */
  #holdMs = 1000;
  #admitted = 0;

  /** Makes a scheduler; throws a RangeError for a non-integer or out-of-range size. */
  constructor(options: SchedulerOptions) {
    const { maxConcurrency, queue } = options;
    if (!Number.isInteger(maxConcurrency) || maxConcurrency < 1) {
      throw new RangeError(
        `Cannot create the scheduler: maxConcurrency must be an integer >= 1, got ${maxConcurrency}`,
      );
    }
    if (!Number.isInteger(queue) || queue < 0) {
      throw new RangeError(`Cannot create the scheduler: queue must be an integer >= 0, got ${queue}`);
    }
    this.maxConcurrency = maxConcurrency;
    this.queueCapacity = queue;
  }

  /** Sequences holding a slot now. */
  get active(): number {
    return this.#active;
  }

  /** Requests waiting for a slot now. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Requests admitted so far (given a slot). */
  get admitted(): number {
    return this.#admitted;
  }

  /** Seconds a refused client should wait: the queue ahead divided over the slots, times the hold time. */
  retryAfterSeconds(): number {
    const ahead = this.#waiting.length + 1;
    return Math.max(1, Math.ceil((ahead / this.maxConcurrency) * this.#holdMs / 1000));
  }

  /**
   * Takes a slot when one is free, else a place in the queue.
   *
   * @throws {QueueFullError} when every slot is taken and the queue is full (synchronously, nothing waits).
   * @throws {SchedulerClosedError} after {@linkcode close}.
   */
  reserve(options: ReserveOptions = {}): Reservation {
    if (this.#closed) throw new SchedulerClosedError();
    options.signal?.throwIfAborted();
    if (this.#active >= this.maxConcurrency && this.#waiting.length >= this.queueCapacity) {
      throw new QueueFullError(
        `Cannot admit the request: all ${this.maxConcurrency} sequences are busy and ` +
          `${this.queueCapacity} requests are already waiting`,
        this.retryAfterSeconds(),
      );
    }
    const t0 = performance.now();
    let queuedMs = 0;
    let state: "waiting" | "running" | "done" = "waiting";
    let startedAt = 0;
    const start = () => {
      state = "running";
      this.#active++;
      this.#admitted++;
      startedAt = performance.now();
      queuedMs = startedAt - t0;
    };
    let ready: Promise<void>;
    let leaveQueue: (() => void) | undefined;
    if (this.#active < this.maxConcurrency && this.#waiting.length === 0) {
      start();
      ready = Promise.resolve();
    } else {
      ready = new Promise<void>((resolve, reject) => {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const onAbort = () => fail(options.signal!.reason);
        const waiter: Waiter = {
          resolve: () => {
            waiter.cleanup();
            start();
            resolve();
          },
          reject: (e) => {
            waiter.cleanup();
            state = "done";
            queuedMs = performance.now() - t0;
            reject(e);
          },
          cleanup: () => {
            if (timer !== undefined) clearTimeout(timer);
            options.signal?.removeEventListener("abort", onAbort);
          },
        };
        const fail = (e: unknown) => {
          const i = this.#waiting.indexOf(waiter);
          if (i >= 0) this.#waiting.splice(i, 1);
          waiter.reject(e);
        };
        leaveQueue = () => fail(new DOMException("The request left the queue", "AbortError"));
        options.signal?.addEventListener("abort", onAbort, { once: true });
        if (options.deadline !== undefined) {
          const wait = Math.max(0, options.deadline - Date.now());
          timer = setTimeout(() => {
            fail(new DeadlineExceededError(`The request waited ${Math.round(wait)} ms for a free sequence`));
          }, wait);
        }
        this.#waiting.push(waiter);
      });
      // A reservation nobody awaits must not raise an unhandled rejection.
      ready.catch(() => {});
    }
    const release = () => {
      if (state === "running") {
        state = "done";
        const held = performance.now() - startedAt;
        this.#holdMs = 0.8 * this.#holdMs + 0.2 * held;
        this.#active--;
        this.#next();
      } else if (state === "waiting") {
        leaveQueue?.();
      }
    };
    return {
      ready,
      get queuedMs() {
        return state === "waiting" ? performance.now() - t0 : queuedMs;
      },
      release,
    };
  }

  /** Refuses new requests from now on and fails the waiting ones; running sequences finish. */
  close(): void {
    this.#closed = true;
    for (const w of this.#waiting.splice(0)) w.reject(new SchedulerClosedError());
  }

  #next(): void {
    while (this.#active < this.maxConcurrency && this.#waiting.length > 0) this.#waiting.shift()!.resolve();
  }
}
