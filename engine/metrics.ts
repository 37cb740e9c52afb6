/**
 * A small Prometheus registry written by hand: counters, gauges and histograms with labels, rendered in the
 * text exposition format 0.0.4 that Prometheus scrapes from `GET /metrics`.
 *
 * Names follow the Prometheus conventions: one application prefix (`edgemix_`), base units in plural
 * (`_seconds`, `_bytes`), `_total` on counters, and only labels with a bounded set of values.
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from "./metrics.ts";
 * const registry = new MetricsRegistry();
 * const requests = registry.counter("edgemix_requests_total", "Requests served.", ["status"]);
 * requests.inc({ status: "200" });
 * const text = registry.render(); // "# HELP edgemix_requests_total Requests served.\n# TYPE ..."
 * ```
 *
 * @module
 */

/** The content type of {@linkcode MetricsRegistry.render}'s output. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Label values by label name. */
export type Labels = Readonly<Record<string, string | number>>;

/** Default histogram buckets for latencies in seconds (5 ms to 60 s). */
export const LATENCY_BUCKETS: readonly number[] = [
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
];

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** What every metric of a registry has. */
interface Metric {
  readonly name: string;
  render(): string;
}

/** The part of counters, gauges and histograms that keeps one series per label combination. */
abstract class Family<S> implements Metric {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  protected readonly series: Map<string, { labels: string[]; value: S }> = new Map();
  readonly #collect: (() => Iterable<[Labels | undefined, number]>) | undefined;

  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    collect?: () => Iterable<[Labels | undefined, number]>,
  ) {
    if (!NAME.test(name)) throw new TypeError(`Cannot register metric ${JSON.stringify(name)}: invalid name`);
    for (const l of labelNames) {
      if (!LABEL.test(l) || l.startsWith("__") || l === "le") {
        throw new TypeError(`Cannot register metric ${name}: invalid label name ${JSON.stringify(l)}`);
      }
    }
    this.name = name;
    this.help = help;
    this.labelNames = [...labelNames];
    this.#collect = collect;
  }

  protected abstract readonly type: "counter" | "gauge" | "histogram";
  protected abstract initial(): S;
  protected abstract lines(labels: string[], value: S): string[];

  /** The series of `labels`, created on first use. */
  protected at(labels: Labels | undefined): S {
    const values = this.labelNames.map((n) => {
      const v = labels?.[n];
      if (v === undefined) throw new TypeError(`Cannot update metric ${this.name}: label ${n} is missing`);
      return String(v);
    });
    if (labels) {
      for (const k of Object.keys(labels)) {
        if (!this.labelNames.includes(k)) {
          throw new TypeError(`Cannot update metric ${this.name}: it has no label ${JSON.stringify(k)}`);
        }
      }
    }
    const key = values.join("\u0000");
    let s = this.series.get(key);
    if (!s) {
      s = { labels: values, value: this.initial() };
      this.series.set(key, s);
    }
    return s.value;
  }

  /** Sets the series of `labels` to `value` (what a `collect` function reports). */
  protected abstract assign(labels: Labels | undefined, value: number): void;

  render(): string {
    if (this.#collect) {
      this.series.clear();
      for (const [labels, value] of this.#collect()) this.assign(labels, value);
    }
    const out = [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`];
    for (const { labels, value } of this.series.values()) out.push(...this.lines(labels, value));
    return out.join("\n") + "\n";
  }

  protected labelText(values: readonly string[], extra?: [string, string]): string {
    const pairs = this.labelNames.map((n, i) => `${n}="${escapeLabel(values[i])}"`);
    if (extra) pairs.push(`${extra[0]}="${escapeLabel(extra[1])}"`);
    return pairs.length ? `{${pairs.join(",")}}` : "";
  }
}

/**
 * A value that only goes up (requests, tokens). Either increase it, or give a `collect` function that reports
 * the running totals of a source that counts by itself when the registry renders.
 */
export class Counter extends Family<{ v: number }> {
  protected readonly type = "counter";
  protected initial(): { v: number } {
    return { v: 0 };
  }
  protected assign(labels: Labels | undefined, value: number): void {
    this.at(labels).v = value;
  }
  protected lines(labels: string[], value: { v: number }): string[] {
    return [`${this.name}${this.labelText(labels)} ${formatValue(value.v)}`];
  }

  /** Adds `by` (default 1, must be >= 0) to the series of `labels`. */
  inc(labels?: Labels, by = 1): void {
    if (!(by >= 0) || !Number.isFinite(by)) {
      throw new RangeError(`Cannot increase counter ${this.name} by ${by}: counters only go up`);
    }
    this.at(labels).v += by;
  }

  /** The current value of the series of `labels` (0 when it was never increased). */
  get(labels?: Labels): number {
    return this.at(labels).v;
  }
}

/**
 * A value that goes up and down. Either set it, or give a `collect` function that reports the current values
 * when the registry renders (queue depth, bytes in use).
 */
export class Gauge extends Family<{ v: number }> {
  protected readonly type = "gauge";
  protected initial(): { v: number } {
    return { v: 0 };
  }
  protected lines(labels: string[], value: { v: number }): string[] {
    return [`${this.name}${this.labelText(labels)} ${formatValue(value.v)}`];
  }
  protected assign(labels: Labels | undefined, value: number): void {
    this.set(labels, value);
  }

  /** Sets the series of `labels` to `value`. */
  set(labels: Labels | undefined, value: number): void {
    this.at(labels).v = value;
  }

  /** The current value of the series of `labels`. */
  get(labels?: Labels): number {
    return this.at(labels).v;
  }
}

/** Counts of observations per bucket, with their sum: latencies, ratios, rates. */
export class Histogram extends Family<{ counts: number[]; sum: number; count: number }> {
  protected readonly type = "histogram";
  /** Upper bounds of the buckets, increasing; `+Inf` is implied. */
  readonly buckets: readonly number[];

  constructor(name: string, help: string, labelNames: readonly string[], buckets: readonly number[]) {
    super(name, help, labelNames);
    if (buckets.length === 0) throw new RangeError(`Cannot register histogram ${name}: it has no buckets`);
    for (let i = 0; i < buckets.length; i++) {
      if (!Number.isFinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1])) {
        throw new RangeError(`Cannot register histogram ${name}: buckets must be finite and increasing`);
      }
    }
    this.buckets = [...buckets];
  }

  protected initial(): { counts: number[]; sum: number; count: number } {
    return { counts: new Array<number>(this.buckets.length).fill(0), sum: 0, count: 0 };
  }
  protected assign(): void {
    throw new TypeError(`Cannot collect histogram ${this.name}: histograms are observed, not set`);
  }

  protected lines(labels: string[], s: { counts: number[]; sum: number; count: number }): string[] {
    const out: string[] = [];
    let cumulative = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      cumulative += s.counts[i];
      out.push(
        `${this.name}_bucket${this.labelText(labels, ["le", formatValue(this.buckets[i])])} ${cumulative}`,
      );
    }
    out.push(`${this.name}_bucket${this.labelText(labels, ["le", "+Inf"])} ${s.count}`);
    out.push(`${this.name}_sum${this.labelText(labels)} ${formatValue(s.sum)}`);
    out.push(`${this.name}_count${this.labelText(labels)} ${s.count}`);
    return out;
  }

  /** Records `value` in the series of `labels`; NaN is ignored. */
  observe(labels: Labels | undefined, value: number): void {
    if (Number.isNaN(value)) return;
    const s = this.at(labels);
    const i = this.buckets.findIndex((b) => value <= b);
    if (i >= 0) s.counts[i]++;
    s.sum += value;
    s.count++;
  }

  /** Number of observations and their sum in the series of `labels`. */
  get(labels?: Labels): { count: number; sum: number } {
    const s = this.at(labels);
    return { count: s.count, sum: s.sum };
  }
}

/** A set of metrics rendered together. */
export class MetricsRegistry {
  readonly #metrics = new Map<string, Metric>();

  #add<M extends Metric>(metric: M): M {
    if (this.#metrics.has(metric.name)) {
      throw new TypeError(`Cannot register metric ${metric.name}: the name is taken`);
    }
    this.#metrics.set(metric.name, metric);
    return metric;
  }

  /** Registers a counter; with `collect`, its totals are read at render time. */
  counter(
    name: string,
    help: string,
    labelNames: readonly string[] = [],
    collect?: () => Iterable<[Labels | undefined, number]>,
  ): Counter {
    return this.#add(new Counter(name, help, labelNames, collect));
  }

  /** Registers a gauge; with `collect`, its values are read at render time. */
  gauge(
    name: string,
    help: string,
    labelNames: readonly string[] = [],
    collect?: () => Iterable<[Labels | undefined, number]>,
  ): Gauge {
    return this.#add(new Gauge(name, help, labelNames, collect));
  }

  /** Registers a histogram with `buckets` (upper bounds, increasing). */
  histogram(
    name: string,
    help: string,
    labelNames: readonly string[] = [],
    buckets: readonly number[] = LATENCY_BUCKETS,
  ): Histogram {
    return this.#add(new Histogram(name, help, labelNames, buckets));
  }

  /** All metrics in the text exposition format 0.0.4. */
  render(): string {
    return [...this.#metrics.values()].map((m) => m.render()).join("");
  }
}

function escapeHelp(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function escapeLabel(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function formatValue(v: number): string {
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  if (Number.isNaN(v)) return "NaN";
  return String(v);
}
