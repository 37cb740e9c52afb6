/**
 * Progress of long transfers: a one-line bar on stderr when stderr is a terminal, nothing otherwise, or events
 * sent to a {@link ProgressSink} so that tests and servers can observe them.
 *
 * @module
 */

/** One observation of a transfer. */
export interface ProgressEvent {
  /** What is being transferred, e.g. a file name. */
  label: string;
  /** Bytes done so far. */
  done: number;
  /** Bytes in all, when known. */
  total?: number;
  /** Whether this is the last event of the transfer. */
  finished: boolean;
}

/** Receives progress events; given one, {@link createProgress} draws nothing itself. */
export interface ProgressSink {
  /** Called on every update that moves `done` forward, and once with `finished: true`. */
  onProgress(event: ProgressEvent): void;
}

/** A running progress report. */
export interface Progress {
  /** Reports `bytesDone` bytes done; `total` replaces the total when it becomes known. */
  update(bytesDone: number, total?: number): void;
  /** Ends the report; later calls do nothing. */
  done(): void;
}

/** Options of {@link createProgress}. */
export interface ProgressOptions {
  /** Where events go; without one, the bar is drawn on stderr. */
  sink?: ProgressSink;
  /** false: draw nothing; true: draw even when stderr is not a terminal (one line at the end); default: terminal only. */
  enabled?: boolean;
}

const MIB = 1024 * 1024;
const REDRAW_MS = 100;
const BAR_WIDTH = 20;
const LABEL_WIDTH = 40;

/** Starts a progress report for `label`, `total` bytes long when known. */
export function createProgress(
  label: string,
  total: number | undefined,
  options: ProgressOptions = {},
): Progress {
  const sink = options.sink;
  const terminal = !sink && options.enabled !== false && stderrIsTerminal();
  const summary = !sink && !terminal && options.enabled === true;
  const start = performance.now();
  let first: number | undefined;
  let done = 0;
  let sent = 0;
  let lastDraw = -Infinity;
  let finished = false;

  function line(): string {
    const seconds = (performance.now() - start) / 1000;
    const rate = seconds > 0 ? (done - (first ?? 0)) / seconds : 0;
    return formatProgressLine(label, done, total, rate);
  }

  return {
    update(bytesDone: number, newTotal?: number): void {
      if (finished) return;
      if (newTotal !== undefined) total = newTotal;
      const isFirst = first === undefined;
      first ??= bytesDone;
      done = bytesDone;
      if (sink) {
        // Events only move forward, even when a transfer restarts from zero.
        if (isFirst || done > sent) {
          sent = done;
          sink.onProgress({ label, done, total, finished: false });
        }
      } else if (terminal) {
        const now = performance.now();
        if (now - lastDraw >= REDRAW_MS) {
          lastDraw = now;
          writeStderr(`\r\x1b[K${line()}`);
        }
      }
    },
    done(): void {
      if (finished) return;
      finished = true;
      if (sink) sink.onProgress({ label, done, total, finished: true });
      else if (terminal) writeStderr(`\r\x1b[K${line()}\n`);
      else if (summary) writeStderr(`${line()}\n`);
    },
  };
}

/** Formats one progress line: label, percent and bar when the total is known, MiB done, rate and ETA. */
export function formatProgressLine(
  label: string,
  done: number,
  total: number | undefined,
  bytesPerSecond: number,
): string {
  const name = label.length > LABEL_WIDTH ? `…${label.slice(label.length - LABEL_WIDTH + 1)}` : label;
  const parts = [name];
  if (total !== undefined && total > 0) {
    const fraction = Math.min(1, Math.max(0, done / total));
    const filled = Math.round(fraction * BAR_WIDTH);
    parts.push(`${Math.floor(fraction * 100).toString().padStart(3)}%`);
    parts.push(`[${"#".repeat(filled)}${"-".repeat(BAR_WIDTH - filled)}]`);
    parts.push(`${mib(done)}/${mib(total)} MiB`);
  } else {
    parts.push(`${mib(done)} MiB`);
  }
  if (bytesPerSecond > 0) {
    parts.push(`${mib(bytesPerSecond)} MiB/s`);
    if (total !== undefined && done < total) {
      parts.push(`ETA ${formatDuration((total - done) / bytesPerSecond)}`);
    }
  }
  return parts.join("  ");
}

/** Formats a duration in seconds as `12s`, `3m05s` or `1h02m`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function mib(bytes: number): string {
  return (bytes / MIB).toFixed(1);
}

function stderrIsTerminal(): boolean {
  try {
    return Deno.stderr.isTerminal();
  } catch {
    return false;
  }
}

function writeStderr(text: string): void {
  let bytes = new TextEncoder().encode(text);
  try {
    while (bytes.length > 0) bytes = bytes.subarray(Deno.stderr.writeSync(bytes));
  } catch {
    // Progress is best effort: a closed stderr must not fail the transfer.
  }
}
