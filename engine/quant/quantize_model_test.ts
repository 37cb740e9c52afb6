import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { relRmsError, SKIP_GPU, testGpu } from "../../kernels/test_util.ts";
import { resolveGenerateOptions, runGeneration } from "../generation.ts";
import { GpuDecoder } from "../gpu_decoder.ts";
import { Checkpoint } from "../checkpoint.ts";
import { ModelLoadError } from "../errors.ts";
import { loadModel } from "../model.ts";
import { codePathKey } from "../../kernels/qmatvec.ts";
import { bytesModelCosts, type CostTable } from "./cost.ts";
import { compareModels } from "./quality.ts";
import { effectiveScheme, quantizeModel } from "./quantize_model.ts";
import { parseScheme, storedBitsPerWeight } from "./scheme.ts";

const fixture = (name: string) => fileURLToPath(new URL(`../../fixtures/models/${name}`, import.meta.url));
const text = (name: string) =>
  Deno.readTextFileSync(fileURLToPath(new URL(`../../fixtures/text/${name}`, import.meta.url)));
const calibText = text("calibration.txt");
const heldout = text("heldout.txt");

/** A cost table without measuring on a GPU: every candidate scheme of every fixture shape. */
function costs(): CostTable {
  const shapes = [];
  const schemes = ["f16", "w8g128", "w4g128", "w3g128", "w2g128", "w4g64", "w3g64", "w2g64"];
  for (let rows = 8; rows <= 256; rows += 8) {
    for (let cols = 8; cols <= 256; cols += 8) {
      const eff = [...new Set(schemes.map((s) => effectiveScheme(parseScheme(s), cols)))]
        .map((s) => (s.kind === "f16" ? "f16" : `w${s.bits}g${s.group}`));
      shapes.push({ rows, cols, schemes: eff });
    }
  }
  return bytesModelCosts(shapes);
}
const COSTS = costs();

interface QuantizationJson {
  format: string;
  method: string;
  average_bits: number;
  tensors: Record<string, { scheme: string; shape: [number, number] }>;
  layers: { layer: number; experts: [string, string][]; shared?: [string, string]; solver: string }[];
  calibration?: { tokens: number; frequency: number[][] };
}

Deno.test("uniform RTN w4g128 writes a checkpoint that loads, with every expert packed and its bits counted", async () => {
  const out = await Deno.makeTempDir({ prefix: "edgemix-q-" });
  try {
    const src = fixture("granitemoe"); // fused expert tensors (input_linear / output_linear)
    const report = await quantizeModel(src, out, { uniform: "w4g128", method: "rtn", costTable: COSTS });
    const q = JSON.parse(await Deno.readTextFile(`${out}/quantization.json`)) as QuantizationJson;
    assert.equal(q.format, "edgemix-packed-v2");
    assert.equal(q.method, "rtn");
    assert.equal(q.average_bits, report.averageBits);
    const ref = await loadModel(src, { backend: "cpu" });
    const c = ref.config;
    // Expected bits: gate/up rows of H values, down rows of I values, each in its effective scheme.
    const s = parseScheme("w4g128");
    const H = c.hiddenSize, I = c.expertIntermediateSize;
    const bits =
      (2 * storedBitsPerWeight(effectiveScheme(s, H), H) + storedBitsPerWeight(effectiveScheme(s, I), I)) /
      3;
    assert.ok(Math.abs(report.averageBits - bits) < 1e-9, `${report.averageBits} vs ${bits}`);
    assert.equal(q.layers.length, c.numLayers);
    for (const layer of q.layers) assert.equal(layer.experts.length, c.numExperts);
    assert.ok(Object.keys(q.tensors).length >= c.numLayers * 3 * c.numExperts);
    const model = await loadModel(out, { backend: "cpu" });
    const ids = ref.tokenizer.encode(heldout, { addSpecialTokens: false }).slice(0, 96);
    const m = await compareModels(ref, model, ids, 96);
    assert.ok(m.meanKl > 0 && m.meanKl < 0.05, `mean KL ${m.meanKl}`);
    assert.ok(m.top1Agreement > 0.6, `top-1 agreement ${m.top1Agreement}`);
    if (!SKIP_GPU) {
      // One row per forward on WebGPU: every logit from the decode kernels, with the norms fused into the
      // packed gate/up (one scheme everywhere, so few pipelines to compile), against the CPU: the same with
      // f32 expert inputs; with int8 ones (the default) near, not equal.
      const probe = ids.slice(0, 24);
      const a = await model.logits(probe);
      for (const int8Experts of [false, true]) {
        const gpu = await loadModel(out, { backend: "webgpu", dtype: "f32", prefillRows: 1, int8Experts });
        const err = relRmsError(await gpu.logits(probe), a);
        if (int8Experts) {
          assert.ok(err > 1e-5 && err < 2e-2, `int8 expert inputs: relative logit error ${err}`);
        } else assert.ok(err < 1e-4, `relative logit error one row per forward ${err}`);
        await gpu.dispose();
      }
    }
    await model.dispose();
    await ref.dispose();
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("MxMoE 3.25 respects the budget, allocates every block, and loads on the CPU and on WebGPU alike", {
  ignore: SKIP_GPU,
}, async () => {
  const out = await Deno.makeTempDir({ prefix: "edgemix-q-" });
  try {
    const src = fixture("qwen2_moe"); // shared expert with a sigmoid gate
    const report = await quantizeModel(src, out, { bits: 3.25, calibText, costTable: COSTS });
    assert.ok(report.averageBits <= 3.25 + 1e-9, `average bits ${report.averageBits}`);
    assert.ok(report.averageBits > 2.5, `average bits ${report.averageBits}`);
    const q = JSON.parse(await Deno.readTextFile(`${out}/quantization.json`)) as QuantizationJson & {
      mode?: string;
      max_paths?: number;
      layers: { paths?: { gate_up: string[]; down: string[] } }[];
    };
    assert.ok(q.calibration && q.calibration.tokens > 100);
    // Unless the uniform check kept uniform (no per-layer paths then), at most the default 2 paths.
    if (q.mode?.startsWith("mxmoe")) assert.equal(q.max_paths, 2);
    for (const layer of q.layers) {
      if (layer.paths) assert.ok(layer.paths.gate_up.length <= 2 && layer.paths.down.length <= 2);
      assert.ok(layer.shared, "the shared expert is allocated too");
      for (const [gu, dn] of layer.experts) {
        parseScheme(gu);
        parseScheme(dn);
      }
      assert.ok(layer.solver === "highs" || layer.solver === "greedy", layer.solver);
    }
    const cpu = await loadModel(out, { backend: "cpu" });
    q.calibration.frequency.forEach((f, l) => {
      // Every calibration token is routed to topK experts of an MoE layer (a dense layer is one "expert").
      const sum = f.reduce((a, b) => a + b, 0);
      const want = cpu.config.layers[l].moe ? cpu.config.topK : 1;
      assert.ok(Math.abs(sum - want) < 1e-9, `layer ${l}: frequencies add up to ${sum}`);
    });
    // The experts' inputs in f32, as on the CPU (int8 ones: the test above and kernels/qmatvec_test.ts).
    const gpu = await loadModel(out, { backend: "webgpu", dtype: "f32", int8Experts: false });
    const ids = cpu.tokenizer.encode("The lighthouse keeper kept a logbook for forty years.");
    const a = await cpu.logits(ids), b = await gpu.logits(ids);
    const err = relRmsError(b, a);
    assert.ok(err < 1e-4, `relative logit error ${err}`);
    const o = { maxTokens: 12, ignoreEos: true };
    assert.deepEqual(await gpu.generate(ids, o), await cpu.generate(ids, o));
    // Prefill through the dequantizing GEMM for the packed attention projections too.
    const gemm = await loadModel(out, { backend: "webgpu", dtype: "f32", gemm: true, int8Experts: false });
    const c = await gemm.logits(ids);
    const errGemm = relRmsError(c, a);
    assert.ok(errGemm < 1e-4, `relative logit error with qgemm ${errGemm}`);
    await gemm.dispose();
    await cpu.dispose();
    await gpu.dispose();
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("a checkpoint names its packed format; v1 checkpoints with 3-bit tensors (the old layout) are refused", async () => {
  const out = await Deno.makeTempDir({ prefix: "edgemix-q-" });
  try {
    await quantizeModel(fixture("granitemoe"), out, { uniform: "w3g128", method: "rtn", costTable: COSTS });
    const path = `${out}/quantization.json`;
    const q = JSON.parse(await Deno.readTextFile(path)) as QuantizationJson;
    assert.equal(q.format, "edgemix-packed-v2");
    (await Checkpoint.open(out)).close();
    for (
      const [format, message] of [["edgemix-packed-v1", /3-bit layout/], ["gptq-v9", /re-quantize/]] as const
    ) {
      await Deno.writeTextFile(path, JSON.stringify({ ...q, format }));
      await assert.rejects(
        Checkpoint.open(out),
        (e: Error) => e instanceof ModelLoadError && message.test(e.message),
      );
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("quantizeModel refuses contradictory options, missing calibration and impossible budgets", async () => {
  const src = fixture("olmoe");
  const out = await Deno.makeTempDir({ prefix: "edgemix-q-" });
  try {
    await assert.rejects(quantizeModel(src, out, { bits: 4, uniform: "w4g128" }), TypeError);
    await assert.rejects(quantizeModel(src, out, {}), TypeError);
    await assert.rejects(quantizeModel(src, out, { uniform: "w4g128", method: "gptq" }), /calibration/);
    await assert.rejects(quantizeModel(src, out, { bits: 0.5, calibText }), RangeError);
    await assert.rejects(quantizeModel(src, out, { uniform: "w5g128", method: "rtn" }), RangeError);
    await assert.rejects(
      quantizeModel(src, out, { bits: 1.5, calibText, costTable: COSTS }),
      /smallest schemes need/,
    );
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("MxMoE with maxPaths: each projection's routed experts use at most that many code paths in all layers", async () => {
  const out = await Deno.makeTempDir({ prefix: "edgemix-q-" });
  try {
    const src = fixture("olmoe");
    const free = await quantizeModel(src, out, {
      bits: 3.25,
      calibText,
      costTable: COSTS,
      uniformCheck: false,
      maxPaths: 0,
    });
    const uncapped = JSON.parse(await Deno.readTextFile(`${out}/quantization.json`)) as {
      max_paths?: number;
    };
    assert.equal(uncapped.max_paths, undefined);
    // Its layers hold different sets of schemes; the GPU decodes it the same with one expert kernel per
    // projection for all layers (their union) as with one per layer, and as the CPU does.
    assert.ok(new Set(free.layers.map((l) => JSON.stringify(l.paths))).size > 1);
    if (!SKIP_GPU) {
      const cpu = await loadModel(out, { backend: "cpu" });
      const ids = cpu.tokenizer.encode("The lighthouse keeper kept a logbook.");
      const want = await cpu.generate(ids, { maxTokens: 8, ignoreEos: true });
      await cpu.dispose();
      const { ctx } = await testGpu();
      for (const unifyExpertKernels of [true, false]) {
        const ckpt = await Checkpoint.open(out);
        const gpu = await GpuDecoder.create(ctx, ckpt, {
          dtype: "f32",
          contextLength: 64,
          unifyExpertKernels,
          matvecShapes: { qGateUp: { int8: false }, qDown: { int8: false } },
        });
        ckpt.close();
        try {
          const opts = resolveGenerateOptions({ maxTokens: 8, ignoreEos: true }, ids.length, 64, {
            eosTokenIds: [],
          });
          const got: number[] = [];
          for await (const t of runGeneration(gpu, { decode: () => "" }, ids, opts, () => {})) got.push(t);
          assert.deepEqual(got, want, `unifyExpertKernels ${unifyExpertKernels}`);
        } finally {
          gpu.dispose();
        }
      }
    }
    // With the uniform check (one scheme: within any cap), whichever of the two it keeps.
    const capped = await quantizeModel(src, out, { bits: 3.25, calibText, costTable: COSTS, maxPaths: 1 });
    assert.ok(capped.averageBits <= 3.25 + 1e-9, `average bits ${capped.averageBits}`);
    // Uncapped, some projection mixes bit widths (else the cap would not be tested).
    assert.ok(free.layers.some((l) => l.paths!.gate_up.length > 1 || l.paths!.down.length > 1));
    const model = await loadModel(out, { backend: "cpu" });
    const H = model.config.hiddenSize, I = model.config.expertIntermediateSize;
    await model.dispose();
    const q = JSON.parse(await Deno.readTextFile(`${out}/quantization.json`)) as QuantizationJson & {
      max_paths: number;
      layers: { paths: { gate_up: string[]; down: string[] } }[];
    };
    assert.equal(q.max_paths, 1);
    for (const layer of q.layers) {
      assert.equal(layer.paths.gate_up.length, 1);
      assert.equal(layer.paths.down.length, 1);
      // Every routed expert's scheme is read by its projection's one path.
      const key = (name: string, cols: number) => {
        const s = parseScheme(name);
        return codePathKey(s.kind === "f16" ? { bits: 16, group: cols } : s, cols);
      };
      for (const [gu, dn] of layer.experts) {
        assert.equal(key(gu, H), layer.paths.gate_up[0]);
        assert.equal(key(dn, I), layer.paths.down[0]);
      }
    }
    // Two paths per projection across the layers ("model"), where the layers capped alone use more together
    // (qwen3_moe at 4.25 bits: gate/up w2 + w4 in one layer, w4 + word by word in the others).
    const union = (layers: typeof free.layers, part: "gate_up" | "down") =>
      new Set(layers.flatMap((l) => l.paths![part]));
    const opts = { bits: 4.25, calibText, costTable: COSTS, uniformCheck: false, maxPaths: 2 };
    const alone = await quantizeModel(fixture("qwen3_moe"), out, opts);
    assert.ok(union(alone.layers, "gate_up").size > 2 || union(alone.layers, "down").size > 2);
    const two = await quantizeModel(fixture("qwen3_moe"), out, { ...opts, maxPathsScope: "model" });
    assert.ok(two.averageBits <= 4.25 + 1e-9, `average bits ${two.averageBits}`);
    for (const part of ["gate_up", "down"] as const) {
      assert.ok(union(two.layers, part).size <= 2, `${part}: ${[...union(two.layers, part)].join(", ")}`);
    }
    const scoped = JSON.parse(await Deno.readTextFile(`${out}/quantization.json`)) as {
      max_paths_scope?: string;
    };
    assert.equal(scoped.max_paths_scope, "model");
    await assert.rejects(
      quantizeModel(src, out, { uniform: "w4g128", method: "rtn", maxPathsScope: "model" }),
      /maxPathsScope applies to an MxMoE allocation/,
    );
    await assert.rejects(
      quantizeModel(src, out, { uniform: "w4g128", method: "rtn", maxPaths: 2 }),
      /maxPaths limits an MxMoE allocation/,
    );
    await assert.rejects(quantizeModel(src, out, { bits: 3.25, calibText, maxPaths: -1 }), RangeError);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("deno task quantize: --help, bad flags exit 2, and a run prints the allocation", async () => {
  const script = fileURLToPath(new URL("../../tools/quantize.ts", import.meta.url));
  const run = async (...args: string[]) => {
    const o = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, ...args],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    return { code: o.code, out: new TextDecoder().decode(o.stdout), err: new TextDecoder().decode(o.stderr) };
  };
  const help = await run("--help");
  assert.equal(help.code, 0);
  assert.match(help.out, /--bits B/);
  const bad = await run(
    "--model",
    fixture("olmoe"),
    "--out",
    "/nonexistent/x",
    "--bits",
    "3",
    "--uniform",
    "w4",
  );
  assert.equal(bad.code, 2);
  assert.match(bad.err, /exactly one of --bits and --uniform/);
  const badR = await run("--model", fixture("olmoe"), "--out", "/tmp/x", "--bits", "3", "--r", "2");
  assert.equal(badR.code, 2);
  // An MxMoE run with one bad flag: exit 2 and a message naming it.
  const badFlag = async (flag: string, value: string, message: RegExp) => {
    const o = await run("--model", fixture("olmoe"), "--out", "/tmp/x", "--bits", "3", flag, value);
    assert.equal(o.code, 2, `${flag} ${value}`);
    assert.match(o.err, message);
  };
  await badFlag("--max-paths", "1.5", /--max-paths must be a whole number/);
  await badFlag("--max-paths-scope", "all", /--max-paths-scope takes layer or model/);
  await badFlag("--candidates", "w4g64,w5g64", /--candidates: /);
  const uniformPaths = await run(
    "--model",
    fixture("olmoe"),
    "--out",
    "/tmp/x",
    "--uniform",
    "w4g128",
    "--max-paths",
    "2",
  );
  assert.equal(uniformPaths.code, 2);
  assert.match(uniformPaths.err, /give --bits/);
  const out = await Deno.makeTempDir({ prefix: "edgemix-q-" });
  try {
    const ok = await run(
      "--model",
      fixture("mixtral"),
      "--out",
      out,
      "--uniform",
      "w8g128",
      "--method",
      "rtn",
    );
    assert.equal(ok.code, 0, ok.err);
    assert.match(ok.out, /layer 0 \(uniform\)/);
    assert.match(ok.out, /average bits per expert weight: 8\.\d+/);
    await Deno.stat(`${out}/model.safetensors`);
    const missing = await run("--model", "/nonexistent/model", "--out", out, "--uniform", "w4g128");
    assert.equal(missing.code, 1);
    assert.match(missing.err, /nonexistent/);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("MxMoE keeps whichever of its allocation and uniform at the same budget is closer on calibration text", async () => {
  const out = await Deno.makeTempDir({ prefix: "edgemix-q-" });
  try {
    const src = fixture("olmoe");
    const report = await quantizeModel(src, out, { bits: 4.6, calibText, costTable: COSTS, method: "rtn" });
    const check = report.uniformCheck;
    assert.ok(check, "a uniform scheme fits 4.6 bits, so the check runs");
    assert.equal(check.uniform, "w4g128");
    assert.equal(check.kept, check.uniformKl < check.mxmoeKl ? "uniform" : "mxmoe");
    const q = JSON.parse(await Deno.readTextFile(`${out}/quantization.json`)) as QuantizationJson & {
      mode: string;
      uniform_check: { kept: string; mxmoe_kl: number; uniform_kl: number };
    };
    assert.equal(q.mode, "mxmoe 4.6");
    assert.equal(q.uniform_check.kept, check.kept);
    const solvers = new Set(q.layers.map((l) => l.solver));
    assert.deepEqual(
      [...solvers],
      check.kept === "uniform" ? ["uniform"] : [...solvers].filter((s) => s !== "uniform"),
    );
    assert.ok(report.averageBits <= 4.6 + 1e-9);
    // No leftovers of the comparison beside the output.
    const parent = out.replace(/\/[^/]+$/, "");
    for await (const e of Deno.readDir(parent)) {
      assert.ok(!e.name.startsWith(".edgemix-uniform-check-"), e.name);
    }
    // The check uses the given candidates: here only w2g64 (2.556 bits on these shapes) fits under 2.6.
    const none = await quantizeModel(src, out, {
      bits: 2.6,
      calibText,
      costTable: COSTS,
      method: "rtn",
      candidates: ["w8g128", "w2g64"],
    });
    assert.equal(none.uniformCheck?.uniform, "w2g64");
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("a quantization larger than shardBytes is written as shards with an index, and loads the same", async () => {
  const one = await Deno.makeTempDir({ prefix: "edgemix-q-" });
  const many = await Deno.makeTempDir({ prefix: "edgemix-q-" });
  try {
    const src = fixture("mixtral");
    await quantizeModel(src, one, { uniform: "w4g128", method: "rtn" });
    // A stale shard from an earlier run must not mix in.
    await Deno.writeFile(`${many}/model-99999.safetensors`, new Uint8Array(16));
    await quantizeModel(src, many, { uniform: "w4g128", method: "rtn", shardBytes: 20_000 });
    const files = [...Deno.readDirSync(many)].map((e) => e.name).filter((n) => n.startsWith("model"));
    assert.ok(
      !files.includes("model-00009.safetensors") ||
        files.filter((n) => n.endsWith(".safetensors")).length > 9,
    );
    assert.ok(files.includes("model.safetensors.index.json"), files.join(", "));
    assert.ok(files.filter((n) => /^model-\d{5}\.safetensors$/.test(n)).length > 2, files.join(", "));
    assert.ok(!files.includes("model.safetensors"));
    const a = await loadModel(one, { backend: "cpu" }), b = await loadModel(many, { backend: "cpu" });
    const ids = a.tokenizer.encode("The canal was dug by hand in the 1790s.");
    assert.deepEqual(await b.logits(ids), await a.logits(ids));
    await a.dispose();
    await b.dispose();
  } finally {
    await Deno.remove(one, { recursive: true });
    await Deno.remove(many, { recursive: true });
  }
});
