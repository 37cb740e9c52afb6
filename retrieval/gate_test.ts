import assert from "node:assert/strict";
import { join } from "node:path";
import { loadModel } from "../engine/model.ts";
import type { Model, PromptInspection } from "../engine/types.ts";
import {
  entropyOfLogits,
  fitGate,
  type GateExample,
  gateFeatures,
  type GateModel,
  gateProbability,
  probeSupport,
  readGate,
  RetrievalGate,
} from "./gate.ts";

const OLMOE = new URL("../fixtures/models/olmoe", import.meta.url).pathname;
const MIXTRAL = new URL("../fixtures/models/mixtral", import.meta.url).pathname;

/** A seeded uniform generator in [0, 1) (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal samples from `u` (Box–Muller). */
function normal(u: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

/**
 * n examples with features a (mean 5, sd 10), b (sd 0.1), c (noise, sd 3), k (constant 7), labelled by
 * Bernoulli(σ(z)), z = 2·(a − 5)/10 − 1.5·b/0.1 + 0.3: in standardised units the true weights are (2, −1.5, 0).
 */
function synthetic(n: number, seed: number): GateExample[] {
  const u = rng(seed), g = normal(u);
  const out: GateExample[] = [];
  for (let i = 0; i < n; i++) {
    const a = 5 + 10 * g(), b = 0.1 * g(), c = 3 * g();
    const z = 2 * (a - 5) / 10 - 1.5 * b / 0.1 + 0.3;
    out.push({ features: { a, b, c, k: 7 }, needsRetrieval: u() < sigmoid(z) });
  }
  return out;
}

/** The gradient of the penalised negative log-likelihood at the fitted gate, in standardised units. */
function penalisedGradient(gate: GateModel, examples: GateExample[], lambda: number): number[] {
  const d = gate.features.length;
  const grad = new Array(d + 1).fill(0);
  for (const e of examples) {
    const r = gateProbability(gate, e.features) - (e.needsRetrieval ? 1 : 0);
    gate.features.forEach((k, j) => grad[j] += r * (e.features[k] - gate.mean[j]) / gate.std[j]);
    grad[d] += r;
  }
  for (let j = 0; j < d; j++) grad[j] += lambda * gate.w[j];
  return grad;
}

const norm = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

Deno.test("fitGate: recovers a known direction, p is monotone along it, the gradient vanishes", () => {
  const examples = synthetic(4000, 1);
  const lambda = 0.01;
  const gate = fitGate(examples, { lambda });
  assert.deepEqual(gate.features, ["a", "b", "c", "k"]);
  const [wa, wb, wc, wk] = gate.w;
  // Direction: cosine with the true standardised weights (2, −1.5, 0, 0).
  const cos = (2 * wa - 1.5 * wb) / (norm(gate.w) * 2.5);
  assert.ok(cos > 0.99, `cosine ${cos}`);
  assert.ok(Math.abs(wa - 2) < 0.3 && Math.abs(wb + 1.5) < 0.3, `w ${gate.w}`);
  assert.ok(Math.abs(wc) < 0.15, `noise weight ${wc}`);
  assert.equal(wk, 0, "a constant feature gets weight 0");
  assert.equal(gate.std[3], 1);
  assert.ok(Math.abs(gate.mean[0] - 5) < 0.6 && Math.abs(gate.std[0] - 10) < 0.6);
  // Optimality of Newton's solution.
  const grad = penalisedGradient(gate, examples, lambda);
  assert.ok(norm(grad) < 1e-6, `gradient ${grad}`);
  // p rises strictly along the true direction (raw units: +10 in a, −0.075 in b per unit of t).
  let prev = -1;
  for (let t = -3; t <= 3; t += 0.25) {
    const p = gateProbability(gate, { a: 5 + 10 * t * 0.8, b: -0.1 * t * 0.6, c: 0, k: 7 });
    assert.ok(p > prev, `p(${t}) = ${p} after ${prev}`);
    prev = p;
  }
  assert.ok(
    gateProbability(gate, { a: 35, b: -0.3, c: 0, k: 7 }) > 0.99 &&
      gateProbability(gate, { a: -25, b: 0.3, c: 0, k: 7 }) < 0.01,
  );
  assert.equal(gate.fit.examples, 4000);
  assert.equal(gate.fit.positives, examples.filter((e) => e.needsRetrieval).length);
  assert.ok(gate.fit.accuracy > 0.75 && gate.fit.accuracy < 1, `accuracy ${gate.fit.accuracy}`);
  // The reported log-loss is that of the stored gate.
  const ll = examples.reduce((s, e) => {
    const p = gateProbability(gate, e.features);
    return s - Math.log(e.needsRetrieval ? p : 1 - p);
  }, 0) / examples.length;
  assert.ok(Math.abs(ll - gate.fit.logLoss) < 1e-9);
});

Deno.test("fitGate: λ shrinks the weights; a huge λ leaves the base rate in the bias", () => {
  const examples = synthetic(600, 2);
  const norms: number[] = [];
  for (const lambda of [0.01, 1, 30, 1000, 1e9]) {
    const gate = fitGate(examples, { lambda });
    norms.push(norm(gate.w));
    assert.ok(norm(penalisedGradient(gate, examples, lambda)) < 1e-6, `λ ${lambda}`);
    if (lambda === 1e9) {
      const rate = gate.fit.positives / gate.fit.examples;
      assert.ok(norm(gate.w) < 1e-5);
      assert.ok(Math.abs(gate.b - Math.log(rate / (1 - rate))) < 1e-4, `b ${gate.b}`);
    }
  }
  for (let i = 1; i < norms.length; i++) assert.ok(norms[i] < norms[i - 1], `norms ${norms}`);
});

Deno.test("fitGate: unpenalised fits stay finite, and a perfectly separable set is classified", () => {
  const u = rng(3);
  const examples: GateExample[] = Array.from({ length: 100 }, () => {
    const x = u() * 2 - 1;
    return { features: { x, k: 1 }, needsRetrieval: x > 0.1 };
  });
  const gate = fitGate(examples, { lambda: 0 });
  assert.ok(gate.w.every(Number.isFinite) && Number.isFinite(gate.b));
  assert.equal(gate.fit.accuracy, 1);
  assert.equal(gate.w[1], 0);
});

Deno.test("fitGate: refuses one-class data, too few examples and bad options", () => {
  const ex = (y: boolean, x: number): GateExample => ({ features: { x }, needsRetrieval: y });
  assert.throws(() => fitGate([ex(true, 1), ex(true, 2), ex(true, 3)]), /both labels/);
  assert.throws(() => fitGate([ex(false, 1), ex(false, 2)]), /both labels/);
  assert.throws(() => fitGate([ex(true, 1)]), RangeError);
  const two = [ex(true, 1), ex(false, 2)];
  assert.throws(() => fitGate(two, { lambda: -1 }), /lambda/);
  assert.throws(() => fitGate(two, { threshold: 1 }), /threshold/);
  assert.throws(() => fitGate(two, { threshold: 0 }), /threshold/);
  assert.throws(() => fitGate(two, { features: ["x", "y"] }), /feature y/);
  // A feature that is not finite everywhere is left out, not fitted on.
  const g = fitGate([
    { features: { x: 1, y: NaN }, needsRetrieval: true },
    { features: { x: 2, y: 1 }, needsRetrieval: false },
  ]);
  assert.deepEqual(g.features, ["x"]);
  assert.throws(() => gateProbability(g, { y: 1 }), /feature x is missing/);
});

Deno.test("readGate: reads what fitGate makes, rejects bad files with their name", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gate_test_" });
  try {
    const gate = fitGate(synthetic(200, 4), { lambda: 1, threshold: 0.3 });
    const good = join(dir, "gate.json");
    await Deno.writeTextFile(good, JSON.stringify(gate));
    assert.deepEqual(await readGate(good), gate);
    const bad: [string, string, RegExp][] = [
      ["notjson.json", "{ version: 1", /not valid JSON/],
      ["array.json", "[]", /JSON object/],
      ["v2.json", JSON.stringify({ ...gate, version: 2 }), /version 1/],
      ["short_w.json", JSON.stringify({ ...gate, w: gate.w.slice(1) }), /"w" must hold 4/],
      ["nan_mean.json", JSON.stringify({ ...gate, mean: [0, 0, 0, "x"] }), /"mean"/],
      ["zero_std.json", JSON.stringify({ ...gate, std: [1, 0, 1, 1] }), /"std" must be positive/],
      ["dup.json", JSON.stringify({ ...gate, features: ["a", "a", "c", "k"] }), /distinct/],
      ["bias.json", JSON.stringify({ ...gate, b: "0" }), /"b"/],
      ["thr.json", JSON.stringify({ ...gate, threshold: 1.5 }), /"threshold"/],
    ];
    for (const [name, text, why] of bad) {
      const path = join(dir, name);
      await Deno.writeTextFile(path, text);
      await assert.rejects(readGate(path), (e: Error) => {
        assert.ok(e instanceof TypeError, name);
        assert.ok(e.message.includes(path), e.message);
        assert.match(e.message, why);
        return true;
      });
    }
    await assert.rejects(readGate(join(dir, "absent.json")), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("gateFeatures: the entropy of the last logits and the router statistics of model.inspect", async () => {
  const model = await loadModel(OLMOE, { backend: "cpu" });
  try {
    const ids = model.tokenizer.encode("The router keeps the top k experts and mixes their outputs.");
    const insp = await model.inspect(ids);
    // The inspection's last logits are the last row of a plain forward pass.
    const all = await model.logits(ids);
    const V = model.config.vocabSize, T = ids.length;
    assert.equal(insp.lastLogits.length, V);
    const last = all.subarray((T - 1) * V, T * V);
    for (let i = 0; i < V; i++) assert.ok(Math.abs(insp.lastLogits[i] - last[i]) < 1e-5);
    // Entropy computed directly, in float64.
    let max = -Infinity;
    for (const x of last) max = Math.max(max, x);
    let z = 0;
    for (const x of last) z += Math.exp(x - max);
    let h = 0;
    for (const x of last) {
      const p = Math.exp(x - max) / z;
      h -= p * Math.log(p);
    }
    const f = gateFeatures(insp, 3.25);
    assert.ok(Math.abs(f.next_entropy - h) < 1e-5, `${f.next_entropy} vs ${h}`);
    assert.ok(h > 0 && h <= Math.log(V) + 1e-9);
    const L = model.config.numLayers;
    let se = 0, sm = 0;
    for (let l = 0; l < L; l++) {
      const e = insp.routerEntropy[l], m = insp.routerMargin[l];
      // An expert distribution over E experts: entropy in (0, log E], margin in [0, 1].
      assert.ok(e > 0 && e <= Math.log(model.config.numExperts) + 1e-6, `layer ${l} entropy ${e}`);
      assert.ok(m >= 0 && m <= 1, `layer ${l} margin ${m}`);
      assert.equal(f[`router_entropy_${l}`], e);
      assert.equal(f[`router_margin_${l}`], m);
      se += e;
      sm += m;
    }
    assert.ok(Math.abs(f.router_entropy_mean - se / L) < 1e-12);
    assert.ok(Math.abs(f.router_margin_mean - sm / L) < 1e-12);
    assert.equal(f.probe_score, 3.25);
    assert.equal(f.probe_support, 0);
    assert.equal(Object.keys(f).length, 2 * L + 5);
  } finally {
    await model.dispose();
  }
});

Deno.test("gateFeatures: dense layers are skipped, a non-finite probe counts 0", () => {
  const insp: PromptInspection = {
    lastLogits: new Float32Array([0, 0, 0, 0]),
    routerEntropy: new Float32Array([NaN, 1, 0.5]),
    routerMargin: new Float32Array([NaN, 0.25, 0.75]),
  };
  const f = gateFeatures(insp, NaN);
  assert.deepEqual(Object.keys(f).sort(), [
    "next_entropy",
    "probe_score",
    "probe_support",
    "router_entropy_1",
    "router_entropy_2",
    "router_entropy_mean",
    "router_margin_1",
    "router_margin_2",
    "router_margin_mean",
  ]);
  assert.ok(Math.abs(f.next_entropy - Math.log(4)) < 1e-12);
  assert.equal(f.router_entropy_mean, 0.75);
  assert.equal(f.router_margin_mean, 0.5);
  assert.equal(f.probe_score, 0);
  assert.equal(gateFeatures(insp, Infinity).probe_score, 0);
  assert.ok(Math.abs(entropyOfLogits([1000, 1000]) - Math.log(2)) < 1e-12);
});

/** A gate on the probe score alone: p = σ(probe − 5). */
const PROBE_GATE: GateModel = {
  version: 1,
  features: ["probe_score"],
  mean: [0],
  std: [1],
  w: [1],
  b: -5,
  threshold: 0.5,
  fit: { examples: 2, positives: 1, lambda: 0, accuracy: 1, logLoss: 0 },
};

/** The features the gate should read: one prefill of the chat-templated bare question. */
async function expectedFeatures(model: Model, question: string, probe: number) {
  const prompt = model.tokenizer.applyChatTemplate([{ role: "user", content: question }]);
  return gateFeatures(
    await model.inspect(model.tokenizer.encode(prompt, { addSpecialTokens: false })),
    probe,
  );
}

Deno.test("RetrievalGate.decide: always, never, auto without and with a fitted gate", async () => {
  const model = await loadModel(OLMOE, { backend: "cpu" });
  try {
    const q = "Who founded the Drarnge Company?";
    const want = await expectedFeatures(model, q, 2);
    const none = new RetrievalGate();
    const always = await none.decide(model, q, { mode: "always", probe: 2 });
    assert.deepEqual(always.features, want);
    assert.equal(always.retrieve, true);
    assert.ok(Number.isNaN(always.p));
    const never = await none.decide(model, q, { mode: "never", probe: 2 });
    assert.equal(never.retrieve, false);
    assert.deepEqual(never.features, want);
    const auto = await none.decide(model, q, { probe: 2 });
    assert.equal(auto.retrieve, true);
    assert.ok(Number.isNaN(auto.p));
    assert.match(auto.reason, /no fitted gate/);

    const fitted = new RetrievalGate(PROBE_GATE);
    const high = await fitted.decide(model, q, { probe: 9 });
    assert.equal(high.p, sigmoid(4));
    assert.equal(high.retrieve, true);
    const low = await fitted.decide(model, q, {});
    assert.equal(low.p, sigmoid(-5));
    assert.equal(low.retrieve, false);
    assert.match(low.reason, /<= threshold 0.5/);
    // The mode wins over a fitted gate.
    assert.equal((await fitted.decide(model, q, { mode: "never", probe: 9 })).retrieve, false);
    assert.equal((await fitted.decide(model, q, { mode: "always", probe: 0 })).retrieve, true);
    // A gate fitted on features this model does not have.
    const alien = new RetrievalGate({ ...PROBE_GATE, features: ["router_entropy_9"] });
    await assert.rejects(alien.decide(model, q), /router_entropy_9 is missing/);
    await assert.rejects(
      none.decide(model, q, { mode: "sometimes" as "auto" }),
      (e: Error) => e instanceof TypeError && /mode must be/.test(e.message),
    );
  } finally {
    await model.dispose();
  }
});

Deno.test("RetrievalGate.decide: a template that writes BOS itself gets no second BOS", async () => {
  const model = await loadModel(MIXTRAL, { backend: "cpu" });
  try {
    const q = "Where is the office?";
    const prompt = model.tokenizer.applyChatTemplate([{ role: "user", content: q }]);
    const bos = model.tokenizer.bosTokenId!;
    const plain = model.tokenizer.encode(prompt, { addSpecialTokens: false });
    const doubled = model.tokenizer.encode(prompt);
    assert.equal(plain.filter((t) => t === bos).length, 1);
    assert.ok(doubled.length > plain.length, "the fixture's post-processor adds a BOS");
    const d = await new RetrievalGate().decide(model, q, { mode: "always" });
    assert.deepEqual(d.features, gateFeatures(await model.inspect(plain), 0));
    assert.notDeepEqual(d.features, gateFeatures(await model.inspect(doubled), 0));
  } finally {
    await model.dispose();
  }
});

Deno.test("probeSupport: the next-token mass on the passage's distinct tokens; 0 without a passage", () => {
  // softmax(ln 1, ln 2, ln 3, ln 4) = (0.1, 0.2, 0.3, 0.4).
  const logits = new Float32Array([0, Math.log(2), Math.log(3), Math.log(4)]);
  assert.ok(Math.abs(probeSupport(logits, [1, 3, 3, 1]) - 0.6) < 1e-6, "repeated ids count once");
  assert.ok(Math.abs(probeSupport(logits, [0, 1, 2, 3]) - 1) < 1e-6);
  assert.equal(probeSupport(logits, []), 0);
  assert.ok(
    Math.abs(probeSupport(logits, [2, 99, -1]) - 0.3) < 1e-6,
    "ids outside the vocabulary are ignored",
  );
  const insp: PromptInspection = {
    lastLogits: logits,
    routerEntropy: new Float32Array([1]),
    routerMargin: new Float32Array([0.5]),
  };
  assert.ok(Math.abs(gateFeatures(insp, 3, [3]).probe_support - 0.4) < 1e-6);
});

Deno.test("RetrievalGate.decide: probeText gives the support of the passage, tokenized by the model", async () => {
  const model = await loadModel(MIXTRAL, { backend: "cpu" });
  try {
    const q = "Where is the office?";
    const passage = "The office is in Thavin, by the river.";
    const d = await new RetrievalGate().decide(model, q, { mode: "always", probe: 4, probeText: passage });
    const prompt = model.tokenizer.applyChatTemplate([{ role: "user", content: q }]);
    const insp = await model.inspect(model.tokenizer.encode(prompt, { addSpecialTokens: false }));
    const ids = model.tokenizer.encode(passage, { addSpecialTokens: false });
    assert.deepEqual(d.features, gateFeatures(insp, 4, ids));
    assert.ok(d.features.probe_support > 0 && d.features.probe_support < 1);
    assert.equal((await new RetrievalGate().decide(model, q, { mode: "always" })).features.probe_support, 0);
  } finally {
    await model.dispose();
  }
});
