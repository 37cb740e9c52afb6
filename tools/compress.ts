/**
 * `deno task compress`: compresses a text with LLMLingua-2. Reads a file (or stdin), prints the compressed text on
 * stdout and the statistics on stderr.
 *
 * ```sh
 * deno task compress --rate 0.33 --force-tokens '\n,.,?,!' transcript.txt > short.txt
 * cat notes.txt | deno task compress --target-token 200 --model path/to/llmlingua-2-onnx
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type CompressOptions,
  type CompressResult,
  DEFAULT_COMPRESSOR_MODEL,
  loadCompressor,
} from "../retrieval/compress.ts";
import type { ClassifierBackend, ClassifierDtype, NativeDevice } from "../retrieval/token_classifier.ts";

const USAGE = `Usage: deno task compress [options] [FILE]

Compress text with LLMLingua-2 (a token classifier decides which words to keep). Reads FILE, or stdin without
one; prints the compressed text on stdout and statistics on stderr. Token counts are cl100k_base (GPT-3.5/4).

  --rate R               keep this share of the tokens, in (0, 1] (default 0.5)
  --target-token N       keep about N tokens instead (overrides --rate)
  --model SRC            ONNX model directory or Hugging Face repo id in transformers.js layout
                         (default: fixtures/compressor/default, a small classifier trained on the synthetic
                         world; use a published LLMLingua-2 model for general text)
  --backend B            auto, native (onnxruntime-node) or wasm (onnxruntime-web) (default auto)
  --device D             cpu, cuda or webgpu (default cpu; the wasm backend runs cpu or webgpu)
  --dtype D              weights file: fp32, fp16, q8, int8, uint8, q4, q4f16 or bnb4 (default fp32)
  --threads N            operator threads of the native backend (default: all cores)
  --force-tokens LIST    comma-separated strings always kept; \\n, \\t and \\, stand for newline, tab and comma
                         (e.g. '\\n,.,?,!')
  --force-reserve-digit  keep every word containing a digit
  --drop-consecutive     drop a force token repeating the previous one with nothing kept between
  --token-to-word M      word probability from its pieces: mean or first (default mean)
  --contexts SEP         split the input into contexts at SEP (e.g. '\\n\\n') and drop whole contexts first
  --word-labels          print "word<TAB>label" lines (1 kept, 0 dropped) instead of the text
  --json                 print the whole result as JSON
  -h, --help             print this help`;

/** What the command line asks for. */
interface Command {
  file: string | undefined;
  model: string;
  backend: ClassifierBackend;
  device: NativeDevice;
  dtype: ClassifierDtype;
  threads: number | undefined;
  contexts: string | undefined;
  output: "text" | "labels" | "json";
  options: CompressOptions;
}

/**
 * Parses the command line.
 *
 * @param args the arguments after the script name
 * @returns the command, or "help"
 * @throws {TypeError} for an unknown flag or a malformed value
 * @throws {RangeError} for a value out of range
 */
export function parseCommand(args: string[]): Command | "help" {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      rate: { type: "string" },
      "target-token": { type: "string" },
      model: { type: "string" },
      backend: { type: "string" },
      device: { type: "string" },
      dtype: { type: "string" },
      threads: { type: "string" },
      "force-tokens": { type: "string" },
      "force-reserve-digit": { type: "boolean" },
      "drop-consecutive": { type: "boolean" },
      "token-to-word": { type: "string" },
      contexts: { type: "string" },
      "word-labels": { type: "boolean" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  if (positionals.length > 1) {
    throw new TypeError(`Cannot read ${positionals.length} files: give one, or none for stdin`);
  }
  const options: CompressOptions = {};
  if (values.rate !== undefined) {
    options.rate = number("--rate", values.rate);
    if (!(options.rate > 0 && options.rate <= 1)) {
      throw new RangeError(`Cannot use --rate ${values.rate}: it must be in (0, 1]`);
    }
  }
  if (values["target-token"] !== undefined) {
    options.targetToken = number("--target-token", values["target-token"]);
    if (!(options.targetToken > 0)) {
      throw new RangeError(`Cannot use --target-token ${values["target-token"]}: it must be positive`);
    }
  }
  if (values["force-tokens"] !== undefined) options.forceTokens = splitList(values["force-tokens"]);
  if (values["force-reserve-digit"]) options.forceReserveDigit = true;
  if (values["drop-consecutive"]) options.dropConsecutive = true;
  if (values["token-to-word"] !== undefined) {
    const mode = values["token-to-word"];
    if (mode !== "mean" && mode !== "first") {
      throw new TypeError(`Cannot use --token-to-word ${mode}: mean or first`);
    }
    options.tokenToWord = mode;
  }
  const contexts = values.contexts === undefined ? undefined : unescape(values.contexts);
  if (contexts !== undefined) {
    if (contexts === "") throw new TypeError("Cannot split contexts at an empty separator");
    options.useContextLevelFilter = true;
  }
  if (values["word-labels"]) options.returnWordLabel = true;
  const backend = values.backend ?? "auto";
  if (!["auto", "native", "wasm"].includes(backend)) {
    throw new TypeError(`Cannot use --backend ${backend}: auto, native or wasm`);
  }
  const device = values.device ?? "cpu";
  if (!["cpu", "cuda", "webgpu"].includes(device)) {
    throw new TypeError(`Cannot use --device ${device}: cpu, cuda or webgpu`);
  }
  return {
    file: positionals[0],
    model: values.model ?? DEFAULT_COMPRESSOR_MODEL,
    backend: backend as ClassifierBackend,
    device: device as NativeDevice,
    dtype: (values.dtype ?? "fp32") as ClassifierDtype,
    threads: values.threads === undefined ? undefined : number("--threads", values.threads),
    contexts,
    output: values.json ? "json" : values["word-labels"] ? "labels" : "text",
    options,
  };
}

/** Splits a comma-separated list; `\,` is a comma, `\n` a newline, `\t` a tab, `\\` a backslash. */
export function splitList(list: string): string[] {
  const out: string[] = [];
  let cur = "";
  for (let i = 0; i < list.length; i++) {
    const c = list[i];
    if (c === "\\" && i + 1 < list.length) {
      const n = list[++i];
      cur += n === "n" ? "\n" : n === "t" ? "\t" : n;
    } else if (c === ",") {
      out.push(cur);
      cur = "";
    } else {
      cur += c;
    }
  }
  out.push(cur);
  return out.filter((t) => t.length > 0);
}

function unescape(s: string): string {
  return s.replace(/\\([nt\\])/g, (_, c) => (c === "n" ? "\n" : c === "t" ? "\t" : "\\"));
}

function number(flag: string, value: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n)) {
    throw new TypeError(`Cannot use ${flag} ${value}: not a number`);
  }
  return n;
}

function report(result: CompressResult, backend: string, seconds: number): string {
  const kept = result.originTokens === 0 ? 100 : (100 * result.compressedTokens) / result.originTokens;
  const contexts = result.keptContexts.length;
  return `${result.originTokens} -> ${result.compressedTokens} cl100k tokens (${kept.toFixed(1)}%), ` +
    `${contexts} context${contexts === 1 ? "" : "s"} kept, ${backend}, ${seconds.toFixed(2)} s`;
}

async function main(args: string[]): Promise<number> {
  let cmd: Command | "help";
  try {
    cmd = parseCommand(args);
  } catch (e) {
    console.error(`${e instanceof Error ? e.message : e}\n\n${USAGE}`);
    return 2;
  }
  if (cmd === "help") {
    console.log(USAGE);
    return 0;
  }
  const text = cmd.file === undefined
    ? await new Response(Deno.stdin.readable).text()
    : await Deno.readTextFile(cmd.file);
  const compressor = await loadCompressor(cmd.model, {
    backend: cmd.backend,
    device: cmd.device,
    dtype: cmd.dtype,
    threads: cmd.threads,
  });
  try {
    const start = performance.now();
    const contexts = cmd.contexts === undefined ? [text] : text.split(cmd.contexts);
    const result = await compressor.compress(contexts, cmd.options);
    const seconds = (performance.now() - start) / 1000;
    if (cmd.output === "json") {
      console.log(JSON.stringify(result));
    } else if (cmd.output === "labels") {
      for (const w of result.wordLabels ?? []) console.log(`${w.word}\t${w.label}`);
    } else {
      await Deno.stdout.write(
        new TextEncoder().encode(result.text.endsWith("\n") ? result.text : `${result.text}\n`),
      );
    }
    const where = `${compressor.backend}/${compressor.classifier.device}`;
    console.error(report(result, where, seconds));
  } finally {
    await compressor.dispose();
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exitCode = await main(Deno.args);
  } catch (e) {
    console.error(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
    Deno.exitCode = 1;
  }
}
