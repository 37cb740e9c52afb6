import assert from "node:assert/strict";
import { join } from "node:path";
import { loadModel } from "../engine/model.ts";
import type { Model } from "../engine/types.ts";
import { createPipeline } from "../pipeline.ts";
import { fitGate, type GateFeatures, gateProbability, readGate, RetrievalGate } from "../retrieval/gate.ts";
import { openStore } from "../retrieval/store.ts";
import { GateQuestionError, parseGateQuestion, readGateQuestions, scoreQuestions } from "./gate_fit.ts";
import { normalizeAnswer } from "./world/exact_match.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const OLMOE = join(ROOT, "fixtures/models/olmoe");

/** Runs `deno run tools/gate_fit.ts ...args` from the repository root. */
async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", join(ROOT, "tools/gate_fit.ts"), ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "gate_fit_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const jsonl = (rows: unknown[]) => rows.map((r) => JSON.stringify(r)).join("\n") + "\n";

/** The features the server reads for `question` with probe score `probe`. */
async function featuresOf(model: Model, question: string, probe: number): Promise<GateFeatures> {
  return (await new RetrievalGate().decide(model, question, { mode: "always", probe })).features;
}

const QUESTIONS = [
  "When was Brernsyth Pothsa born?",
  "What is the birthplace of Brernsyth Pothsa?",
  "What does Brernsyth Pothsa do for a living?",
  "What company is Brernsyth Pothsa employed by?",
  "In which year was Zunbend Geba born?",
  "Who employs Zunbend Geba?",
  "Which river flows through Tarnel?",
  "Who founded the Drarnge Company?",
  "How long is the Tessel River?",
  "Where does the Ormic river end?",
  "Who first climbed Mount Vesk?",
  "What is made by Gamvaem Brothers?",
];

Deno.test("parseGateQuestion / readGateQuestions: labels, held-out flags, errors with file and line", async () => {
  const f = "q.jsonl";
  assert.deepEqual(parseGateQuestion('{"question":"Why?","needs_retrieval":true}', f, 1), {
    question: "Why?",
    needsRetrieval: true,
    heldout: false,
    line: 1,
  });
  assert.deepEqual(
    parseGateQuestion(
      '{"question":"Who?","answer":"Tessel River","aliases":["Tessel"],"heldout":true}',
      f,
      7,
    ),
    { question: "Who?", answer: "Tessel River", aliases: ["Tessel"], heldout: true, line: 7 },
  );
  const bad: [string, RegExp][] = [
    ["{question:", /not valid JSON/],
    ["[1]", /JSON object/],
    ['{"needs_retrieval":true}', /"question"/],
    ['{"question":"  ","needs_retrieval":true}', /"question"/],
    ['{"question":"Why?"}', /needs a label/],
    ['{"question":"Why?","needs_retrieval":"yes"}', /"needs_retrieval" must be a boolean/],
    ['{"question":"Why?","answer":""}', /"answer"/],
    ['{"question":"Why?","answer":"x","aliases":"y"}', /"aliases"/],
    ['{"question":"Why?","answer":"x","heldout":1}', /"heldout"/],
  ];
  for (const [text, why] of bad) {
    assert.throws(() => parseGateQuestion(text, f, 12), (e: Error) => {
      assert.ok(e instanceof GateQuestionError, text);
      assert.equal(e.file, f);
      assert.equal(e.line, 12);
      assert.ok(e.message.startsWith("q.jsonl:12: "), e.message);
      assert.match(e.message, why);
      return true;
    });
  }
  await withTempDir(async (dir) => {
    const path = join(dir, "q.jsonl");
    await Deno.writeTextFile(
      path,
      '{"question":"A?","needs_retrieval":true}\n\n{"question":"B?","answer":"b"}\n',
    );
    const qs = await readGateQuestions(path);
    assert.deepEqual(qs.map((q) => [q.question, q.line]), [["A?", 1], ["B?", 3]]);
    assert.equal((await readGateQuestions(path, 1)).length, 1);
    // --sample: evenly spaced over the file, in order (questions 0, 3, 6 of 10); all of them when the sample
    // is not smaller.
    const ten = join(dir, "ten.jsonl");
    await Deno.writeTextFile(
      ten,
      Array.from({ length: 10 }, (_, i) => JSON.stringify({ question: `Q${i}?`, answer: "a" })).join("\n"),
    );
    assert.deepEqual((await readGateQuestions(ten, undefined, 3)).map((q) => q.question), [
      "Q0?",
      "Q3?",
      "Q6?",
    ]);
    assert.equal((await readGateQuestions(ten, undefined, 99)).length, 10);
    await Deno.writeTextFile(path, '{"question":"A?","needs_retrieval":true}\n\n{"question":"B?"}\n');
    await assert.rejects(readGateQuestions(path), new RegExp(`^GateQuestionError: ${path}:3: `));
    await Deno.writeTextFile(path, "\n\n");
    await assert.rejects(readGateQuestions(path), /holds no questions/);
    await assert.rejects(readGateQuestions(join(dir, "absent.jsonl")), /does not exist/);
  });
});

Deno.test("gate-fit CLI: given labels → gate.json equal to fitGate on the server's features", async () => {
  await withTempDir(async (dir) => {
    const rows = QUESTIONS.map((question, i) => ({
      question,
      needs_retrieval: i % 3 !== 0,
      ...(i >= 10 ? { heldout: true } : {}),
    }));
    const file = join(dir, "labelled.jsonl");
    await Deno.writeTextFile(file, jsonl(rows));
    const out = join(dir, "sub", "gate.json");
    const r = await cli([
      "--model",
      OLMOE,
      "--questions",
      file,
      "--out",
      out,
      "--backend",
      "cpu",
      "--lambda",
      "0.5",
      "--threshold",
      "0.4",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const gate = await readGate(out);
    // The same fit, from features read here as the server reads them.
    const model = await loadModel(OLMOE, { backend: "cpu" });
    try {
      const feats = await Promise.all(rows.map((q) => featuresOf(model, q.question, 0)));
      const train = rows.map((q, i) => ({ features: feats[i], needsRetrieval: q.needs_retrieval }))
        .filter((_, i) => !rows[i].heldout);
      const want = fitGate(train, { lambda: 0.5, threshold: 0.4 });
      assert.deepEqual(gate.features, want.features);
      assert.deepEqual(gate.fit, want.fit);
      for (const k of ["mean", "std", "w"] as const) {
        want[k].forEach((v, j) =>
          assert.ok(Math.abs(gate[k][j] - v) <= 1e-9 * (1 + Math.abs(v)), `${k}[${j}]`)
        );
      }
      assert.ok(Math.abs(gate.b - want.b) < 1e-9);
      assert.equal(gate.fit.examples, 10);
      assert.equal(gate.fit.positives, 6);
      assert.ok(gate.features.includes("next_entropy") && gate.features.includes("router_margin_mean"));
      assert.equal(gate.mean[gate.features.indexOf("probe_score")], 0, "no --db: the probe is 0");
      const skip = [10, 11].filter((i) => gateProbability(gate, feats[i]) <= 0.4).length;
      assert.match(r.stdout, /fit: 10 examples, 6 need retrieval \(60\.0%\)/);
      assert.match(r.stdout, /train accuracy \d\.\d{3}, log-loss \d\.\d{4}/);
      assert.match(r.stdout, new RegExp(`held-out: 2 questions, would skip retrieval for ${skip} `));
      assert.ok(r.stdout.includes(`wrote ${out}`));
    } finally {
      await model.dispose();
    }
    // --limit takes the first N questions.
    const r4 = await cli([
      "--model",
      OLMOE,
      "--questions",
      file,
      "--out",
      out,
      "--backend",
      "cpu",
      "--limit",
      "4",
    ]);
    assert.equal(r4.code, 0, r4.stderr);
    assert.equal((await readGate(out)).fit.examples, 4);
  });
});

Deno.test("gate-fit: computed labels are misses of the greedy closed-book answer (exact match)", async () => {
  const model = await loadModel(OLMOE, { backend: "cpu" });
  try {
    // What the model answers closed-book, as /ask with retrieval off does.
    const p = createPipeline({ model, defaults: { retrieval: "never", maxTokens: 3 } });
    const answers: string[] = [];
    for (const question of QUESTIONS.slice(0, 8)) {
      answers.push((await p.ask({ question, maxTokens: 3, temperature: 0 })).answer);
    }
    p.close();
    assert.ok(answers.every((a) => normalizeAnswer(a) !== ""), `answers ${JSON.stringify(answers)}`);
    // Even questions: gold = the model's own answer (found, by answer or alias); odd: a wrong gold answer.
    const rows = QUESTIONS.slice(0, 8).map((question, i) =>
      i % 2 === 1
        ? { question, answer: "Zyzzyva Quarry" }
        : i % 4 === 0
        ? { question, answer: ` The ${answers[i]}.` }
        : { question, answer: "Zyzzyva", aliases: ["nothing", answers[i]] }
    );
    const parsed = rows.map((r, i) => parseGateQuestion(JSON.stringify(r), "mem", i + 1));
    const scored = await scoreQuestions(model, parsed, { maxTokens: 3 });
    assert.deepEqual(scored.map((s) => s.closedBookAnswer), answers);
    assert.deepEqual(scored.map((s) => s.label), rows.map((_, i) => i % 2 === 1));
    for (const [i, s] of scored.entries()) {
      assert.deepEqual(s.features, await featuresOf(model, QUESTIONS[i], 0));
    }

    await withTempDir(async (dir) => {
      const file = join(dir, "answers.jsonl");
      await Deno.writeTextFile(file, jsonl(rows));
      const out = join(dir, "gate.json");
      const r = await cli([
        "--model",
        OLMOE,
        "--questions",
        file,
        "--out",
        out,
        "--backend",
        "cpu",
        "--max-tokens",
        "3",
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /labels computed for 8: closed-book exact match 4\/8/);
      const gate = await readGate(out);
      assert.equal(gate.fit.examples, 8);
      assert.equal(gate.fit.positives, 4);
      // Every answer wrong: one class, nothing to fit.
      await Deno.writeTextFile(
        file,
        jsonl(QUESTIONS.slice(0, 4).map((question) => ({ question, answer: "Zyzzyva" }))),
      );
      const one = await cli(["--model", OLMOE, "--questions", file, "--out", out, "--backend", "cpu"]);
      assert.equal(one.code, 1);
      assert.match(one.stderr, /of the 4 training questions every one needs retrieval/);
    });
  } finally {
    await model.dispose();
  }
});

Deno.test("gate-fit CLI: --db makes the store's best full-text score a feature", async () => {
  await withTempDir(async (dir) => {
    const db = join(dir, "kb");
    const store = await openStore(db);
    const docs = [
      { id: "p", text: "Brernsyth Pothsa was born in 1932 in Shipae. Brernsyth Pothsa is a printer." },
      { id: "z", text: "Zunbend Geba works for Gamvaem Brothers, who make lanterns." },
      { id: "t", text: "The Tessel River is 412 kilometres long and flows into the Ormic Sea." },
    ];
    await store.add(docs);
    const rows = QUESTIONS.slice(0, 8).map((question, i) => ({ question, needs_retrieval: i < 4 }));
    const probes: number[] = [];
    for (const q of rows) probes.push((await store.search(q.question, { k: 1, mode: "fts" }))[0]?.score ?? 0);
    await store.close();
    assert.ok(probes.every((s) => s > 0) && new Set(probes).size > 3, `probes ${probes}`);
    const file = join(dir, "q.jsonl");
    await Deno.writeTextFile(file, jsonl(rows));
    const out = join(dir, "gate.json");
    const r = await cli([
      "--model",
      OLMOE,
      "--questions",
      file,
      "--db",
      db,
      "--out",
      out,
      "--backend",
      "cpu",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`probe full-text score in ${db}`));
    const gate = await readGate(out);
    const j = gate.features.indexOf("probe_score");
    const mean = probes.reduce((a, b) => a + b, 0) / probes.length;
    assert.ok(Math.abs(gate.mean[j] - mean) < 1e-9 * (1 + mean), `${gate.mean[j]} vs ${mean}`);
    assert.notEqual(gate.w[j], 0);
    // A store path that does not exist is an error, not an empty store.
    const missing = await cli([
      "--model",
      OLMOE,
      "--questions",
      file,
      "--db",
      join(dir, "nope"),
      "--out",
      out,
    ]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /the directory does not exist/);
  });
});

Deno.test("gate-fit CLI: bad usage exits 2, a bad questions file exits 1 naming file and line", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "q.jsonl");
    await Deno.writeTextFile(file, '{"question":"A?","needs_retrieval":true}\n{"question":"B?","label":1}\n');
    const base = ["--model", OLMOE, "--questions", file, "--backend", "cpu", "--out", join(dir, "g.json")];
    const usage: [string[], RegExp][] = [
      [["--questions", file], /--model is required/],
      [["--model", OLMOE], /--questions is required/],
      [[...base, "--lambda", "-1"], /--lambda/],
      [[...base, "--threshold", "1"], /--threshold/],
      [[...base, "--limit", "0"], /--limit/],
      [[...base, "--sample", "x"], /--sample must be a positive integer/],
      [[...base, "--limit", "5", "--sample", "5"], /--limit and --sample exclude each other/],
      [[...base, "--backend", "tpu"], /--backend/],
      [[...base, "--bogus"], /bogus/],
    ];
    for (const [args, why] of usage) {
      const r = await cli(args);
      assert.equal(r.code, 2, args.join(" "));
      assert.match(r.stderr, why);
      assert.match(r.stderr, /Usage: deno task gate-fit/);
    }
    const r = await cli(base);
    assert.equal(r.code, 1);
    assert.ok(r.stderr.includes(`${file}:2: a question needs a label`), r.stderr);
    // A question longer than the model's context (512 positions) is named by its line.
    const long = "why " + "very ".repeat(600) + "long?";
    await Deno.writeTextFile(
      file,
      jsonl([{ question: "A?", needs_retrieval: true }, { question: long, answer: "x" }]),
    );
    const tooLong = await cli(base);
    assert.equal(tooLong.code, 1);
    assert.ok(tooLong.stderr.includes(`${file}:2: cannot score the question: `), tooLong.stderr);
    const help = await cli(["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--questions FILE/);
  });
});
