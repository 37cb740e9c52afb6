import assert from "node:assert/strict";
import { MetricsRegistry, PROMETHEUS_CONTENT_TYPE } from "./metrics.ts";

Deno.test("MetricsRegistry renders counters, gauges and histograms in the text format 0.0.4", () => {
  const r = new MetricsRegistry();
  const c = r.counter("edgemix_requests_total", "Requests.\nSecond line \\ here.", ["route", "status"]);
  c.inc({ route: "/ask", status: 200 });
  c.inc({ route: "/ask", status: 200 }, 2);
  c.inc({ route: 'we"ird\\\n', status: 500 });
  const g = r.gauge("edgemix_queue", "Queue depth.");
  g.set(undefined, 3);
  const h = r.histogram("edgemix_latency_seconds", "Latency.", [], [0.1, 1]);
  h.observe(undefined, 0.05);
  h.observe(undefined, 0.5);
  h.observe(undefined, 7);
  h.observe(undefined, NaN);
  assert.equal(
    r.render(),
    [
      "# HELP edgemix_requests_total Requests.\\nSecond line \\\\ here.",
      "# TYPE edgemix_requests_total counter",
      'edgemix_requests_total{route="/ask",status="200"} 3',
      'edgemix_requests_total{route="we\\"ird\\\\\\n",status="500"} 1',
      "# HELP edgemix_queue Queue depth.",
      "# TYPE edgemix_queue gauge",
      "edgemix_queue 3",
      "# HELP edgemix_latency_seconds Latency.",
      "# TYPE edgemix_latency_seconds histogram",
      'edgemix_latency_seconds_bucket{le="0.1"} 1',
      'edgemix_latency_seconds_bucket{le="1"} 2',
      'edgemix_latency_seconds_bucket{le="+Inf"} 3',
      "edgemix_latency_seconds_sum 7.55",
      "edgemix_latency_seconds_count 3",
      "",
    ].join("\n"),
  );
  assert.equal(PROMETHEUS_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
  assert.deepEqual(h.get(), { count: 3, sum: 7.55 });
});

Deno.test("collected metrics read their values at render time", () => {
  const r = new MetricsRegistry();
  let depth = 1;
  r.gauge("edgemix_waiting", "Waiting.", [], () => [[undefined, depth]]);
  const counts = [[4, 0], [1, 3]];
  r.counter("edgemix_expert_total", "Experts.", ["layer", "expert"], function* () {
    for (let l = 0; l < counts.length; l++) {
      for (let e = 0; e < counts[l].length; e++) yield [{ layer: l, expert: e }, counts[l][e]];
    }
  });
  assert.match(r.render(), /^edgemix_waiting 1$/m);
  depth = 5;
  counts[1][1] = 9;
  const text = r.render();
  assert.match(text, /^edgemix_waiting 5$/m);
  assert.match(text, /^edgemix_expert_total\{layer="1",expert="1"\} 9$/m);
  assert.match(text, /^edgemix_expert_total\{layer="0",expert="0"\} 4$/m);
});

Deno.test("metrics reject bad names, labels and updates", () => {
  const r = new MetricsRegistry();
  assert.throws(() => r.counter("bad name", "x"), TypeError);
  assert.throws(() => r.counter("ok_total", "x", ["le"]), TypeError);
  assert.throws(() => r.histogram("h", "x", [], [1, 1]), RangeError);
  const c = r.counter("ok_total", "x", ["a"]);
  assert.throws(() => r.counter("ok_total", "x"), TypeError, "names are unique");
  assert.throws(() => c.inc({ a: "1" }, -1), RangeError);
  assert.throws(() => c.inc({}), TypeError);
  assert.throws(() => c.inc({ a: "1", b: "2" }), TypeError);
});
