import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadModel } from "../engine/model.ts";
import { fitGate, RetrievalGate } from "../retrieval/gate.ts";
import {
  ANSWER_SLACK_TOKENS,
  answerBudget,
  evalMain,
  type EvalRow,
  metricsOf,
  runEval,
  selectQuestions,
  withGenerateOptions,
} from "./eval.ts";
import { readWorldQuestions, WORLD_SPLITS, type WorldQuestion } from "./world/world.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const OLMOE = join(ROOT, "fixtures", "models", "olmoe");
const questions = await readWorldQuestions(join(ROOT, "fixtures", "world"));

Deno.test("selectQuestions takes held-out questions of each split, evenly spaced", () => {
  const picked = selectQuestions(questions, 10);
  for (const split of WORLD_SPLITS) {
    const pool = questions.filter((q) => q.heldout && q.split === split);
    assert.equal(picked[split].length, 10);
    assert.ok(picked[split].every((q) => q.heldout && q.split === split));
    assert.equal(new Set(picked[split].map((q) => q.id)).size, 10);
    assert.equal(picked[split][0], pool[0]);
    assert.ok(pool.indexOf(picked[split][9]) >= pool.length * 0.85, "the picks spread over the file");
  }
  assert.ok(new Set(picked.fresh.map((q) => q.kind)).size >= 4, "several kinds of entity");
  const few = selectQuestions(questions.filter((q) => q.split !== "conflicting" || q.id === "none"), 5);
  assert.equal(few.conflicting.length, 0);
  assert.throws(() => selectQuestions(questions, 0), RangeError);
});

Deno.test("answerBudget allows the longest accepted answer and the slack", () => {
  const tok = { encode: (text: string) => [...text].map((c) => c.charCodeAt(0)) };
  const q = { answer: "Stusgom River", aliases: ["Stusgom"] } as WorldQuestion;
  assert.equal(answerBudget(tok, q), " Stusgom River".length + ANSWER_SLACK_TOKENS);
});

Deno.test("withGenerateOptions adds options to every generation and forwards the rest", async () => {
  const model = await loadModel(OLMOE, { backend: "cpu" });
  try {
    const ids = model.tokenizer.encode("Where was Brernsyth Pothsa born?");
    const fused = withGenerateOptions(model, { lfd: { layer: "auto" } });
    assert.equal(fused.config, model.config);
    assert.equal(fused.tokenizer, model.tokenizer);
    await fused.generate(ids, { maxTokens: 2 });
    assert.equal(typeof model.lastStats?.lfdLayer, "number", "LFD was on");
    await model.generate(ids, { maxTokens: 2 });
    assert.equal(model.lastStats?.lfdLayer, undefined, "the model itself is unchanged");
    const streamed: number[] = [];
    for await (const id of fused.stream(ids, { maxTokens: 2 })) streamed.push(id);
    assert.equal(streamed.length, 2);
    assert.equal(typeof fused.lastStats?.lfdLayer, "number");
  } finally {
    await model.dispose();
  }
});

function fakeRow(
  stage: string,
  setting: string,
  em: [number | null, number | null, number | null],
  all: number,
) {
  return {
    stage,
    setting,
    status: "ok",
    em: { parametric: em[0], fresh: em[1], conflicting: em[2] },
    emAll: all,
    retrievedShare: stage === "retrieval" && setting.startsWith("auto") ? 0.6 : 1,
    goldShare: 1,
    latencyMs: 1,
    promptTokens: 1,
    completionTokens: 1,
    n: 3,
  } satisfies EvalRow;
}

Deno.test("metricsOf: the headline numbers from the rows; n/a rows give null", () => {
  const m = metricsOf([
    fakeRow("retrieval", "never", [0.8, 0.1, 0.2], 0.4),
    fakeRow("retrieval", "always", [0.7, 0.95, 0.5], 0.7),
    fakeRow("retrieval", "auto (gate)", [0.8, 0.9, 0.5], 0.65),
    fakeRow("LFD", "off", [null, 0.95, 0.5], 0.725),
    fakeRow("LFD", "on (auto layer, α 0.5)", [null, 0.9, 0.6], 0.75),
    fakeRow("compression", "off", [null, 0.95, 0.5], 0.725),
    fakeRow("compression", "rate 0.5", [null, 0.9, 0.5], 0.7),
    { ...fakeRow("compression", "rate 0.33", [null, 0, 0], 0), status: "n/a", emAll: null },
  ]);
  assert.equal(m.fresh_em_with_retrieval, 0.95);
  assert.equal(m.parametric_em_without_retrieval, 0.8);
  assert.equal(m.conflicting_em_with_retrieval, 0.5);
  assert.equal(m.gate_skip_rate, 0.4);
  assert.equal(m.gate_em_loss, 0.05);
  assert.equal(m.compression_0_5_em_loss, 0.025);
  assert.equal(m.compression_0_33_em_loss, null);
  assert.equal(m.lfd_conflict_em_gain, 0.1);
  assert.equal(m.mxmoe_3_25_em_loss, null);
  assert.equal(m.kv_gear_2_em_loss, null);
});

/** A copy of the olmoe fixture with a gate fitted on a few training questions (label: not parametric). */
async function modelWithGate(dir: string): Promise<string> {
  const out = join(dir, "olmoe");
  await Deno.mkdir(out);
  for await (const e of Deno.readDir(OLMOE)) {
    if (e.isFile) await Deno.copyFile(join(OLMOE, e.name), join(out, e.name));
  }
  const model = await loadModel(out, { backend: "cpu" });
  try {
    const train = WORLD_SPLITS.flatMap((s) =>
      questions.filter((q) => !q.heldout && q.split === s).slice(0, 4)
    );
    const gate = new RetrievalGate();
    const examples = [];
    for (const q of train) {
      const { features } = await gate.decide(model, q.question, { probe: 0 });
      examples.push({ features, needsRetrieval: q.split !== "parametric" });
    }
    await Deno.writeTextFile(join(out, "gate.json"), JSON.stringify(fitGate(examples)));
  } finally {
    await model.dispose();
  }
  return out;
}

Deno.test("deno task eval --json prints one line with the headline numbers and writes the report", async () => {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-eval-test-" });
  try {
    const model = await modelWithGate(dir);
    const report = join(dir, "eval.md");
    const args = ["--limit", "1", "--backend", "cpu", "--model", model, "--calib-tokens", "256"];
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", "tools/eval.ts", ...args, "--json", "--out", report],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin: "null",
    }).output();
    const err = new TextDecoder().decode(stderr);
    assert.equal(code, 0, err);
    const lines = new TextDecoder().decode(stdout).split("\n").filter((l) => l !== "");
    assert.equal(lines.length, 1, "one JSON line");
    const out = JSON.parse(lines[0]);

    const rates = ["fresh_em_with_retrieval", "parametric_em_without_retrieval", "gate_skip_rate"];
    const differences = ["gate_em_loss", "compression_0_5_em_loss", "lfd_conflict_em_gain"];
    for (const key of rates) {
      assert.equal(typeof out[key], "number", key);
      assert.ok(out[key] >= 0 && out[key] <= 1, `${key} = ${out[key]}`);
    }
    for (const key of differences) {
      assert.equal(typeof out[key], "number", key);
      assert.ok(out[key] >= -1 && out[key] <= 1, `${key} = ${out[key]}`);
    }
    assert.deepEqual(out.questions, { parametric: 1, fresh: 1, conflicting: 1 });
    assert.equal(out.backend, "cpu");

    const rows = out.rows as EvalRow[];
    const get = (stage: string, setting: RegExp) =>
      rows.find((r) => r.stage === stage && setting.test(r.setting));
    assert.equal(get("retrieval", /^auto/)?.status, "ok", "the gate beside the model ran");
    // The fixture's 512 positions hold one passage: the best hit is not always the gold document.
    assert.ok(get("retrieval", /^always$/)!.goldShare! > 0, "retrieval found gold documents");
    assert.equal(get("retrieval", /^never$/)?.goldShare, 0);
    assert.equal(get("retrieval", /^never$/)?.retrievedShare, 0);
    for (const [stage, setting] of [["compression", /0\.5/], ["KV cache", /GEAR 2/]] as const) {
      const r = get(stage, setting);
      assert.equal(r?.status, "ok", `${stage} ${setting}: ${r?.reason}`);
      assert.equal(r?.n, 2, "fresh and conflicting questions");
    }
    assert.deepEqual(get("LFD", /^on/)?.em.fresh, null, "LFD runs on conflicting questions only");
    assert.equal(get("LFD", /^on/)?.n, 1);
    assert.equal(get("weights", /3\.25/)?.status, "ok", get("weights", /3\.25/)?.reason);
    const tooFew = get("weights", /2\.25/);
    assert.equal(tooFew?.status, "n/a");
    assert.match(tooFew?.reason ?? "", /Cannot allocate bits/);

    const md = await Deno.readTextFile(report);
    assert.match(md, /^# Evaluation\n\nGenerated by\s+`deno task eval --limit 1 --backend cpu/);
    assert.match(md, /\| stage +\| setting +\| EM parametric \| EM fresh \| EM conflicting \| EM all +\|/);
    assert.match(md, /\| retrieval +\| auto \(gate\) +\| /);
    assert.match(md, /\| compression_0_5_em_loss +\| /);
    const fmt = await new Deno.Command(Deno.execPath(), { args: ["fmt", "--check", report], cwd: ROOT })
      .output();
    assert.equal(fmt.code, 0, "the report is formatted as deno fmt formats it");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runEval with stages []: retrieval rows only, every other stage n/a as not run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-eval-test-" });
  try {
    const report = await runEval({
      model: await modelWithGate(dir),
      backend: "cpu",
      world: join(ROOT, "fixtures/world"),
      limit: 1,
      topK: 1,
      compressor: join(ROOT, "fixtures/compressor/default"),
      calibTokens: 256,
      stages: [],
    });
    const ran = report.rows.filter((r) => r.status === "ok").map((r) => `${r.stage} ${r.setting}`);
    assert.ok(ran.includes("retrieval never") && ran.includes("retrieval always"), ran.join("; "));
    for (const stage of ["LFD", "compression", "KV cache", "weights"]) {
      const skipped = report.rows.filter((r) => r.stage === stage && r.status === "n/a");
      assert.ok(skipped.length > 0 && skipped.every((r) => r.reason === "not run (--stages)"), stage);
    }
    assert.equal(await evalMain(["--stages", "lfd,bogus"]), 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
