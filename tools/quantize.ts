/**
 * `deno task quantize`: quantizes the experts of a Mixture-of-Experts checkpoint, with MxMoE mixed precision under
 * an average-bit budget (`--bits 3.25`) or one scheme for every expert block (`--uniform w4g128`), and writes a
 * checkpoint that `loadModel` loads. Progress goes to stderr when it is a terminal; the allocation table and the
 * achieved average bits go to stdout. See docs/quantization.md.
 *
 * ```sh
 * deno task quantize --model fixtures/models/olmoe --out /tmp/olmoe-mx --bits 3.25
 * ```
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { resolveModelSource } from "../engine/hub.ts";
import { parseScheme } from "../engine/quant/scheme.ts";
import { type QuantizationReport, quantizeModel } from "../engine/quant/quantize_model.ts";

const DEFAULT_CALIB = fileURLToPath(new URL("../fixtures/text/calibration.txt", import.meta.url));

const USAGE = `Usage: deno task quantize --model SRC --out DIR (--bits B | --uniform SCHEME) [options]

Quantize the experts of a Mixture-of-Experts checkpoint.

  --model SRC         checkpoint directory or Hugging Face repo id
  --out DIR           where the quantized checkpoint is written
  --bits B            MxMoE: average stored bits per expert weight (scales and zeros included), e.g. 3.25
  --uniform SCHEME    one scheme for every expert block: w8g128, w4g128, w3g128, w2g64, ... or f16
  --calib FILE        calibration text (default: fixtures/text/calibration.txt)
  --calib-tokens N    most calibration tokens (default 4096)
  --r R               MxMoE accuracy weight in [0, 1]; 1 - R weighs kernel time (default 0.75)
  --method M          gptq or rtn (default gptq)
  --attention SCHEME  scheme of attention projections (default w8g128)
  --router SCHEME     scheme of routers (default w8g128)
  --batch N           tokens per batch the kernel cost model assumes (default 32)
  --candidates LIST   MxMoE: candidate schemes of expert blocks, comma-separated (default
                      f16,w8g128,w4g128,w3g128,w2g128,w4g64,w3g64,w2g64)
  --max-paths N       MxMoE: most code paths (bit widths, in effect) among a layer's routed experts per
                      projection; fewer decode faster (default 2; 0: no limit)
  --max-paths-scope S MxMoE: where --max-paths counts: layer (default) or model (one set of paths for
                      all layers: a little faster to decode, less accurate)
  -h, --help          print this help`;

function fail(message: string): never {
  console.error(`quantize: ${message}\n\n${USAGE}`);
  Deno.exit(2);
}

/** Prints the allocation (experts × blocks → bits) as a table. */
function printReport(report: QuantizationReport): void {
  for (const layer of report.layers) {
    const cells = layer.experts.map(([gu, dn], e) => `e${e}:${gu}/${dn}`);
    if (layer.shared) cells.push(`shared:${layer.shared[0]}/${layer.shared[1]}`);
    const paths = layer.paths
      ? ` [paths gate_up ${layer.paths.gate_up.join(",")}; down ${layer.paths.down.join(",")}]`
      : "";
    console.log(`layer ${layer.layer} (${layer.solver})${paths} gate_up/down: ${cells.join(" ")}`);
  }
  const u = report.uniformCheck;
  if (u) {
    console.log(
      `calibration KL vs the unquantized model: MxMoE ${u.mxmoeKl.toExponential(3)}, uniform ${u.uniform} ` +
        `${u.uniformKl.toExponential(3)}; kept ${
          u.kept === "mxmoe" ? "the MxMoE allocation" : `uniform ${u.uniform}`
        }`,
    );
  }
  console.log(`average bits per expert weight: ${report.averageBits.toFixed(4)}`);
}

async function main(args: string[]): Promise<void> {
  let v;
  try {
    v = parseArgs({
      args,
      options: {
        model: { type: "string" },
        out: { type: "string" },
        bits: { type: "string" },
        uniform: { type: "string" },
        calib: { type: "string" },
        "calib-tokens": { type: "string" },
        r: { type: "string" },
        method: { type: "string" },
        attention: { type: "string" },
        router: { type: "string" },
        batch: { type: "string" },
        "max-paths": { type: "string" },
        "max-paths-scope": { type: "string" },
        candidates: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (e) {
    fail((e as Error).message);
  }
  if (v.help) {
    console.log(USAGE);
    return;
  }
  if (!v.model) fail("--model is required");
  if (!v.out) fail("--out is required");
  if ((v.bits === undefined) === (v.uniform === undefined)) fail("give exactly one of --bits and --uniform");
  const num = (name: string, text: string | undefined) => {
    if (text === undefined) return undefined;
    const n = Number(text);
    if (!Number.isFinite(n)) fail(`--${name} must be a number, got ${JSON.stringify(text)}`);
    return n;
  };
  const bits = num("bits", v.bits);
  const r = num("r", v.r);
  const maxPaths = num("max-paths", v["max-paths"]);
  if (maxPaths !== undefined && !(Number.isInteger(maxPaths) && maxPaths >= 0)) {
    fail(`--max-paths must be a whole number (0: no limit), got ${maxPaths}`);
  }
  if (maxPaths !== undefined && bits === undefined) {
    fail("--max-paths limits an MxMoE allocation: give --bits");
  }
  const scope = v["max-paths-scope"];
  if (scope !== undefined && scope !== "layer" && scope !== "model") {
    fail(`--max-paths-scope takes layer or model, got ${JSON.stringify(scope)}`);
  }
  if (scope !== undefined && bits === undefined) {
    fail("--max-paths-scope applies to an MxMoE allocation: give --bits");
  }
  const candidates = v.candidates?.split(",").map((c) => c.trim());
  if (candidates !== undefined) {
    if (bits === undefined) fail("--candidates lists MxMoE's schemes: give --bits");
    for (const c of candidates) {
      try {
        parseScheme(c);
      } catch (e) {
        fail(`--candidates: ${(e as Error).message}`);
      }
    }
  }
  if (r !== undefined && !(r >= 0 && r <= 1)) fail(`--r must be in [0, 1], got ${r}`);
  const method = v.method ?? "gptq";
  if (method !== "gptq" && method !== "rtn") fail(`--method must be gptq or rtn, got ${method}`);
  for (const [flag, s] of [["uniform", v.uniform], ["attention", v.attention], ["router", v.router]]) {
    if (s === undefined) continue;
    try {
      parseScheme(s);
    } catch (e) {
      fail(`--${flag}: ${(e as Error).message}`);
    }
  }
  const needCalib = method === "gptq" || bits !== undefined;
  const calibPath = v.calib ?? DEFAULT_CALIB;
  const calibText = needCalib ? await Deno.readTextFile(calibPath) : undefined;

  const tty = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  const t0 = performance.now();
  const onProgress = (message: string) => {
    if (!tty) return;
    const s = ((performance.now() - t0) / 1000).toFixed(1);
    Deno.stderr.writeSync(enc.encode(`\r\x1b[K[${s}s] ${message}`));
  };
  const source = await resolveModelSource(v.model);
  const report = await quantizeModel(source, v.out, {
    bits,
    uniform: v.uniform,
    calibText,
    calibTokens: num("calib-tokens", v["calib-tokens"]),
    r,
    method,
    attention: v.attention,
    router: v.router,
    batch: num("batch", v.batch),
    maxPaths,
    maxPathsScope: scope,
    candidates,
    onProgress,
  });
  if (tty) Deno.stderr.writeSync(enc.encode("\r\x1b[K"));
  printReport(report);
  console.error(`wrote ${v.out} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (e) {
    console.error(`quantize: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(1);
  }
}
