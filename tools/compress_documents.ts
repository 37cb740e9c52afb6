/**
 * Compresses every document of the world with the default compressor at several rates and writes
 * `compressed_documents.jsonl`, which `tools/train_reader.py` reads to train the reader on the contexts `serve`
 * actually sends when asked to compress.
 *
 * LLMLingua-2 chooses its threshold per chunk, and a world document is one chunk, so a document's compressed text
 * is the same whether it is compressed alone or among other retrieved passages: the lines here are exactly what
 * the pipeline produces for each passage (without the context-level filter, which the pipeline does not use).
 *
 * ```sh
 * deno run -A tools/compress_documents.ts --world fixtures/world --rates 0.33,0.4,0.5,0.6,0.7
 * ```
 *
 * Each output line: `{"id": "doc-…", "texts": {"0.33": "…", "0.5": "…", …}}`, in the order of documents.jsonl.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type Compressor, DEFAULT_COMPRESSOR_MODEL, loadCompressor } from "../retrieval/compress.ts";
import { readWorldDocuments } from "./world/mod.ts";

const USAGE = `Usage: deno run -A tools/compress_documents.ts [options]

Compress each world document at each rate with the compressor; write one JSON line per document.

  --world DIR     the world (default fixtures/world)
  --model SRC     compressor (default ${DEFAULT_COMPRESSOR_MODEL})
  --rates LIST    comma-separated rates in (0, 1] (default 0.33,0.4,0.5,0.6,0.7)
  --out FILE      output (default DIR/compressed_documents.jsonl)
  --batch N       documents per compress call (default 64)
  -h, --help      print this help`;

/** What the command line asks for. */
export interface CompressDocumentsCommand {
  /** The world directory. */
  world: string;
  /** The compressor's source. */
  model: string;
  /** Rates, each in (0, 1]. */
  rates: number[];
  /** The output file. */
  out: string;
  /** Documents per compress call. */
  batch: number;
}

/**
 * Parses the command line.
 *
 * @param args the arguments after the script name
 * @returns the command, or a usage message to print
 */
export function parseCompressDocumentsArgs(args: string[]): CompressDocumentsCommand | { usage: string } {
  let values;
  try {
    values = parseArgs({
      args,
      options: {
        world: { type: "string", default: "fixtures/world" },
        model: { type: "string", default: DEFAULT_COMPRESSOR_MODEL },
        rates: { type: "string", default: "0.33,0.4,0.5,0.6,0.7" },
        out: { type: "string" },
        batch: { type: "string", default: "64" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (e) {
    return { usage: (e as Error).message };
  }
  if (values.help) return { usage: "" };
  const rates = values.rates.split(",").map((r) => Number(r.trim()));
  const bad = rates.find((r) => !(r > 0 && r <= 1));
  if (values.rates.trim() === "" || bad !== undefined) {
    return { usage: `--rates must list numbers in (0, 1], got ${values.rates}` };
  }
  const batch = Number(values.batch);
  if (!Number.isInteger(batch) || batch < 1) {
    return { usage: `--batch must be a positive integer, got ${values.batch}` };
  }
  return {
    world: values.world,
    model: values.model,
    rates,
    out: values.out ?? `${values.world}/compressed_documents.jsonl`,
    batch,
  };
}

/**
 * Compresses each document alone at each rate (in calls of `batch` documents: LLMLingua-2 sets its threshold
 * per chunk, so a document's text does not depend on the others in the call).
 *
 * @param docs the documents
 * @param compressor a loaded compressor
 * @param rates rates in (0, 1]
 * @param batch documents per compress call
 * @param progress called after each call with the documents done so far
 * @returns per document, its compressed text by rate (`String(rate)`)
 */
export async function compressDocuments(
  docs: readonly { text: string }[],
  compressor: Compressor,
  rates: readonly number[],
  batch = 64,
  progress: (done: number) => void = () => {},
): Promise<Record<string, string>[]> {
  const texts: Record<string, string>[] = docs.map(() => ({}));
  let done = 0;
  for (const rate of rates) {
    for (let i = 0; i < docs.length; i += batch) {
      const part = docs.slice(i, i + batch);
      const r = await compressor.compress(part.map((d) => d.text), { rate });
      if (r.contexts.length !== part.length) {
        throw new Error(
          `Cannot compress the documents: ${part.length} contexts gave ${r.contexts.length} texts`,
        );
      }
      part.forEach((_, j) => texts[i + j][String(rate)] = r.contexts[j]);
      done += part.length;
      progress(done);
    }
  }
  return texts;
}

/** Runs the command. */
async function main(args: string[]): Promise<number> {
  const cmd = parseCompressDocumentsArgs(args);
  if ("usage" in cmd) {
    if (cmd.usage) console.error(cmd.usage + "\n");
    console.error(USAGE);
    return cmd.usage ? 2 : 0;
  }
  const docs = await readWorldDocuments(cmd.world);
  const compressor = await loadCompressor(cmd.model);
  const total = docs.length * cmd.rates.length;
  const tty = Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  let texts: Record<string, string>[];
  try {
    texts = await compressDocuments(docs, compressor, cmd.rates, cmd.batch, (done) => {
      if (tty) Deno.stderr.writeSync(encoder.encode(`\rcompressed ${done}/${total}`));
    });
  } finally {
    await compressor.dispose();
  }
  if (tty) console.error();
  const lines = docs.map((d, i) => JSON.stringify({ id: d.id, texts: texts[i] }));
  await Deno.writeTextFile(cmd.out, lines.join("\n") + "\n");
  console.error(`wrote ${cmd.out}: ${docs.length} documents × ${cmd.rates.length} rates`);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
