/**
 * Quality of expert quantization on checkpoints: mean KL divergence of next-token distributions against the
 * unquantized model, perplexity and top-1 agreement on held-out text, for uniform RTN / GPTQ and MxMoE at
 * average-bit budgets (the nominal 4.25 / 3.25 / 2.25, and each uniform scheme's achieved bits, so that MxMoE and
 * uniform are compared at the same budget). Runs on the CPU backend; prints a Markdown table.
 *
 * ```sh
 * deno run -A bench/quant_quality.ts fixtures/models/olmoe fixtures/models/mixtral
 * deno run -A bench/quant_quality.ts --r 1 fixtures/models/olmoe   # accuracy-only MxMoE objective
 * deno run -A bench/quant_quality.ts --world fixtures/world fixtures/models/reader   # the trained reader
 * deno run -A bench/quant_quality.ts --only "MxMoE 3.25" --max-paths 0 fixtures/models/reader   # one row, uncapped
 * ```
 *
 * `--max-paths N` caps MxMoE's code paths per projection (QuantizeModelOptions.maxPaths; default 2, 0: no cap,
 * as labelled in each MxMoE row), in each layer or with `--max-paths-scope model` across them ("in all");
 * `--candidates LIST` replaces MxMoE's candidate schemes (labelled too); `--only A,B` runs only
 * the rows whose label starts with one of A, B (e.g. "uniform w3g128", "MxMoE 3.25"); `--int8-activations`
 * runs the quantized models with their linear inputs rounded to int8 per block of 32 (what an integer
 * dot-product kernel would compute; the reference model stays f32).
 *
 * Text: fixtures/text/calibration.txt and heldout.txt by default; `--calib FILE` / `--heldout FILE` replace them;
 * `--world DIR` calibrates on the first 16,000 characters of DIR/train_text.txt (the reader's training text) and
 * holds out the documents of the world's fresh entities (never in training), their first 16,000 characters.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { readWorldDocuments } from "../tools/world/mod.ts";
import { loadModel } from "../engine/model.ts";
import { compareModels } from "../engine/quant/quality.ts";
import {
  DEFAULT_MAX_PATHS,
  quantizeModel,
  type QuantizeModelOptions,
} from "../engine/quant/quantize_model.ts";

const text = (name: string) =>
  Deno.readTextFile(fileURLToPath(new URL(`../fixtures/text/${name}`, import.meta.url)));

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    r: { type: "string" },
    window: { type: "string" },
    calib: { type: "string" },
    heldout: { type: "string" },
    world: { type: "string" },
    "max-paths": { type: "string" },
    "max-paths-scope": { type: "string" },
    candidates: { type: "string" },
    only: { type: "string" },
    "int8-activations": { type: "boolean" },
  },
});
const r = values.r === undefined ? undefined : Number(values.r);
const maxPaths = values["max-paths"] === undefined ? undefined : Number(values["max-paths"]);
const scope = values["max-paths-scope"];
if (scope !== undefined && scope !== "layer" && scope !== "model") {
  throw new TypeError(`--max-paths-scope takes layer or model, got ${scope}`);
}
const only = values.only?.split(",").map((s) => s.trim());
const candidates = values.candidates?.split(",").map((s) => s.trim());
const int8Activations = values["int8-activations"] ?? false;
const WORLD_CHARS = 16_000;
let calibText: string, heldout: string;
if (values.world) {
  const dir = values.world;
  calibText = (await Deno.readTextFile(`${dir}/train_text.txt`)).slice(0, WORLD_CHARS);
  heldout = (await readWorldDocuments(dir)).filter((d) => d.metadata.split === "fresh").map((d) => d.text)
    .join("\n").slice(0, WORLD_CHARS);
} else {
  calibText = values.calib ? await Deno.readTextFile(values.calib) : await text("calibration.txt");
  heldout = values.heldout ? await Deno.readTextFile(values.heldout) : await text("heldout.txt");
}

console.log(
  "| model | weights | method | avg bits | mean KL (nats) | perplexity (ref) | top-1 agreement |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- |");
for (const src of positionals) {
  const name = src.replace(/\/$/, "").split("/").pop()!;
  const ref = await loadModel(src, { backend: "cpu" });
  const ids = ref.tokenizer.encode(heldout, { addSpecialTokens: false });
  const window = Number(values.window ?? Math.min(256, ref.config.maxPositionEmbeddings));
  const tmp = await Deno.makeTempDir({ prefix: "edgemix-qq-" });
  const run = async (label: string, method: string, opts: QuantizeModelOptions) => {
    if (only && !only.some((o) => label.startsWith(o))) return undefined;
    if (opts.bits !== undefined) {
      // MxMoE's cap on code paths per projection: --max-paths, else the quantizer's default (0: none).
      const cap = maxPaths ?? DEFAULT_MAX_PATHS;
      opts = { ...opts, maxPaths: cap, maxPathsScope: scope, ...(candidates ? { candidates } : {}) };
      label = cap === 0
        ? `${label}, paths uncapped`
        : `${label}, ≤ ${cap} paths${scope === "model" ? " in all" : ""}`;
      if (candidates) label = `${label}, of ${candidates.join(" ")}`;
    }
    const shown = int8Activations ? `${label}, int8 activations` : label;
    const out = `${tmp}/${label.replace(/[^a-z0-9.]/gi, "_")}`;
    let report;
    try {
      report = await quantizeModel(src, out, { calibText, r, ...opts });
    } catch (e) {
      console.log(`| ${name} | ${shown} | ${method} | — | n/a: ${(e as Error).message.slice(0, 80)} | | |`);
      return undefined;
    }
    const q = await loadModel(out, { backend: "cpu", int8Activations });
    const m = await compareModels(ref, q, ids, window);
    await q.dispose();
    console.log(
      `| ${name} | ${shown} | ${method} | ${report.averageBits.toFixed(3)} | ${
        m.meanKl.toExponential(2)
      } | ` +
        `${m.perplexity.toFixed(2)} (${m.referencePerplexity.toFixed(2)}) | ${
          (m.top1Agreement * 100).toFixed(1)
        }% |`,
    );
    return report.averageBits;
  };
  await run("uniform w4g128", "rtn", { uniform: "w4g128", method: "rtn" });
  const achieved: number[] = [];
  for (const s of ["w4g128", "w3g128", "w2g128"]) {
    const b = await run(`uniform ${s}`, "gptq", { uniform: s, method: "gptq" });
    if (b !== undefined) achieved.push(b);
  }
  for (const b of [4.25, 3.25, 2.25]) await run(`MxMoE ${b}`, "gptq", { bits: b, method: "gptq" });
  for (const b of achieved) {
    const budget = b + 1e-9;
    await run(`MxMoE ${b.toFixed(3)} (= uniform)`, "gptq", { bits: budget, method: "gptq" });
  }
  await ref.dispose();
  await Deno.remove(tmp, { recursive: true });
}
