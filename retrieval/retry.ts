/**
 * Retrying LanceDB writes that lose to a concurrent commit. LanceDB commits optimistically (each commit writes a
 * new manifest with put-if-not-exists; the loser rebases or fails) and its JS binding throws plain `Error`s whose
 * message is the only way to tell a conflict from other failures.
 *
 * @module
 */

/** Options of {@link withCommitRetry}. */
export interface RetryOptions {
  /** Attempts in all, the first included; default 8. */
  attempts?: number;
  /** Delay before the second attempt in ms; doubles each time, with ±50% jitter; default 20. */
  baseDelayMs?: number;
  /** Called before each new attempt, e.g. to reload the latest table version. */
  beforeRetry?: () => Promise<void>;
}

/** What the last failed attempt threw once every attempt lost to a concurrent commit. */
export class RetriesExhausted extends Error {
  /** Attempts made. */
  readonly attempts: number;

  /** Makes the error; `cause` is the last conflict. */
  constructor(attempts: number, cause: unknown) {
    super(`gave up after ${attempts} attempts: ${cause instanceof Error ? cause.message : String(cause)}`, {
      cause,
    });
    this.name = "RetriesExhausted";
    this.attempts = attempts;
  }
}

const CONFLICT = /commit conflict|concurrent commit|conflicts with|retryable|too many concurrent writers/i;

/** Whether `error` (from LanceDB) reports a commit that lost to a concurrent one, so that a retry may succeed. */
export function isCommitConflict(error: unknown): boolean {
  return error instanceof Error && CONFLICT.test(error.message);
}

/**
 * Runs `op`, retrying with exponential backoff while it fails with a commit conflict; other errors propagate at
 * once. Throws {@link RetriesExhausted} when every attempt conflicted.
 */
export async function withCommitRetry<T>(op: () => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const attempts = options.attempts ?? 8;
  const base = options.baseDelayMs ?? 20;
  if (!Number.isInteger(attempts) || attempts < 1) {
    throw new RangeError(`attempts must be >= 1, got ${attempts}`);
  }
  for (let attempt = 1;; attempt++) {
    try {
      return await op();
    } catch (error) {
      if (!isCommitConflict(error)) throw error;
      if (attempt >= attempts) throw new RetriesExhausted(attempt, error);
      const delay = base * 2 ** (attempt - 1) * (0.5 + Math.random());
      await new Promise((resolve) => setTimeout(resolve, delay));
      await options.beforeRetry?.();
    }
  }
}
