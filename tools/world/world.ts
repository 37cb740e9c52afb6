/**
 * Reads the files of the synthetic knowledge world that `tools/world/generate.py` writes (by default into
 * `fixtures/world/`): the entities, the knowledge-base documents, the questions with gold answers, the
 * reader's training text and QA pairs, and the compressor's word labels. Each line is checked for the fields
 * its consumers rely on, so a stale or hand-edited file fails here with its name and line.
 *
 * @module
 */

import { join } from "node:path";

/** Which knowledge a fact belongs to. */
export type WorldSplit = "parametric" | "fresh" | "conflicting";

/** The splits, in the order the README describes them. */
export const WORLD_SPLITS: readonly WorldSplit[] = ["parametric", "fresh", "conflicting"];

/** An entity of `world.json`. */
export interface WorldEntity {
  /** `kind-NNNN`, e.g. "town-0042". */
  id: string;
  /** person, town, company, river, mountain or invention. */
  kind: string;
  /** The invented name, one or two words. */
  name: string;
  /** The entity's split: fresh entities are only in the knowledge base. */
  split: WorldSplit;
  /** Trained values by attribute (for conflicting entities the old ones). */
  attributes: Record<string, string>;
  /** Related entity ids by attribute (those attributes whose value names another entity). */
  relations: Record<string, string>;
  /** The knowledge base's new values of updated attributes (conflicting entities only). */
  kb_attributes: Record<string, string>;
  /** Related entity ids of the updated attributes that name another entity. */
  kb_relations: Record<string, string>;
}

/** A knowledge-base document of `documents.jsonl`. */
export interface WorldDocument {
  /** `doc-` + the entity id. */
  id: string;
  /** Fact sentences and filler sentences. */
  text: string;
  /** The entity the document describes. */
  metadata: { entity: string; kind: string; split: WorldSplit };
}

/** A question of `questions.jsonl`. */
export interface WorldQuestion {
  /** `qNNNNN`. */
  id: string;
  /** The question text. */
  question: string;
  /** The gold answer, one to three words (the knowledge base's value for conflicting facts). */
  answer: string;
  /** Other accepted answers (units, a river's name without "River", ...). */
  aliases?: string[];
  /** The document that states the answer. */
  doc_id: string;
  /** The fact's split: parametric (trained, same in the knowledge base), fresh, conflicting. */
  split: WorldSplit;
  /** The entity's kind. */
  kind: string;
  /** The attribute asked about. */
  attribute: string;
  /** Held out of the reader's QA training: evaluate on these. */
  heldout: boolean;
  /** Conflicting facts: the value in the reader's training text. */
  trained_answer?: string;
}

/** A QA pair of `train_qa.jsonl` for the reader. */
export interface TrainQaPair {
  /** `tNNNNNN`. */
  id: string;
  /** The question it was made from. */
  qid: string;
  /** The question text (possibly another template than the question's). */
  question: string;
  /** The answer to train: the context's value when there is a context, else the trained value. */
  answer: string;
  /** Documents shown as context, in order; empty for a pair without context. */
  context_ids: string[];
  /** Context pairs: show the documents with the compressor-dropped words removed. */
  compressed?: boolean;
  /** The question's split. */
  split: WorldSplit;
}

/** A document's words with gold compressor labels, from `compressor_train.jsonl`. */
export interface CompressorExample {
  /** The document id. */
  id: string;
  /** The document's words; {@linkcode joinWords} gives back its text. */
  words: string[];
  /** One character per word: "1" keep (fact-bearing), "0" drop (filler). */
  labels: string;
  /** Held out of the compressor's training. */
  heldout: boolean;
}

/** The whole world. */
export interface World {
  /** Where it was read from. */
  dir: string;
  /** The generator's seed. */
  seed: number;
  /** Attribute names by kind. */
  kinds: Record<string, string[]>;
  /** The entities. */
  entities: WorldEntity[];
  /** The knowledge-base documents. */
  documents: WorldDocument[];
  /** The questions. */
  questions: WorldQuestion[];
  /** Lines of `train_text.txt`: one paraphrase of one known entity each. */
  trainText: string[];
  /** The reader's QA pairs. */
  trainQa: TrainQaPair[];
  /** The compressor's labelled documents. */
  compressor: CompressorExample[];
}

/** A world file is missing, not valid JSON, or lacks a field. */
export class WorldFormatError extends Error {
  /** The file at fault. */
  readonly file: string;
  /** Makes the error; `file` names the file at fault. */
  constructor(message: string, file: string, options?: { cause?: unknown }) {
    super(message, { cause: options?.cause });
    this.name = "WorldFormatError";
    this.file = file;
  }
}

type Json = Record<string, unknown>;
type Check = (row: Json) => string | undefined;

const isString = (v: unknown): v is string => typeof v === "string";
const isSplit = (v: unknown): v is WorldSplit => WORLD_SPLITS.includes(v as WorldSplit);

function need(fields: Record<string, (v: unknown) => boolean>): Check {
  return (row) => {
    for (const [key, ok] of Object.entries(fields)) {
      if (!ok(row[key])) return `the field "${key}" is missing or has the wrong type`;
    }
    return undefined;
  };
}

const stringArray = (v: unknown) => Array.isArray(v) && v.every(isString);

const checkDocument: Check = (row) => {
  const base = need({ id: isString, text: isString })(row);
  if (base) return base;
  const m = row.metadata as Json | undefined;
  if (typeof m !== "object" || m === null || !isString(m.entity) || !isString(m.kind) || !isSplit(m.split)) {
    return 'the field "metadata" must be {entity, kind, split}';
  }
  return undefined;
};

const checkQuestion: Check = (row) =>
  need({
    id: isString,
    question: isString,
    answer: isString,
    doc_id: isString,
    split: isSplit,
    kind: isString,
    attribute: isString,
    heldout: (v) => typeof v === "boolean",
    aliases: (v) => v === undefined || stringArray(v),
    trained_answer: (v) => v === undefined || isString(v),
  })(row);

const checkTrainQa: Check = (row) =>
  need({
    id: isString,
    qid: isString,
    question: isString,
    answer: isString,
    context_ids: stringArray,
    compressed: (v) => v === undefined || typeof v === "boolean",
    split: isSplit,
  })(row);

const checkCompressor: Check = (row) => {
  const base = need({
    id: isString,
    words: stringArray,
    labels: isString,
    heldout: (v) => typeof v === "boolean",
  })(
    row,
  );
  if (base) return base;
  const words = row.words as string[];
  const labels = row.labels as string;
  if (labels.length !== words.length || !/^[01]*$/.test(labels)) {
    return `"labels" must hold one 0 or 1 per word (${words.length} words, ${labels.length} labels)`;
  }
  return undefined;
};

async function readText(file: string): Promise<string> {
  try {
    return await Deno.readTextFile(file);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? "the file does not exist (generate it with `python3 tools/world/generate.py --seed 0 --out " +
        "fixtures/world`)"
      : String(e);
    throw new WorldFormatError(`Cannot read ${file}: ${why}`, file, { cause: e });
  }
}

async function readJsonl<T>(file: string, check: Check): Promise<T[]> {
  const text = await readText(file);
  const rows: T[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] === "") continue;
    let row: unknown;
    try {
      row = JSON.parse(lines[i]);
    } catch (e) {
      throw new WorldFormatError(`Cannot parse ${file} line ${i + 1}: it is not valid JSON`, file, {
        cause: e,
      });
    }
    if (typeof row !== "object" || row === null || Array.isArray(row)) {
      throw new WorldFormatError(`Cannot read ${file} line ${i + 1}: it must hold a JSON object`, file);
    }
    const problem = check(row as Json);
    if (problem) throw new WorldFormatError(`Cannot read ${file} line ${i + 1}: ${problem}`, file);
    rows.push(row as T);
  }
  return rows;
}

/**
 * The knowledge-base documents of the world in `dir` (`documents.jsonl`).
 *
 * @throws {WorldFormatError} when the file is missing or a line is malformed.
 */
export function readWorldDocuments(dir: string): Promise<WorldDocument[]> {
  return readJsonl<WorldDocument>(join(dir, "documents.jsonl"), checkDocument);
}

/**
 * The questions of the world in `dir` (`questions.jsonl`).
 *
 * @throws {WorldFormatError} when the file is missing or a line is malformed.
 */
export function readWorldQuestions(dir: string): Promise<WorldQuestion[]> {
  return readJsonl<WorldQuestion>(join(dir, "questions.jsonl"), checkQuestion);
}

/**
 * Every file of the world in `dir`.
 *
 * @throws {WorldFormatError} when a file is missing or malformed.
 *
 * @example
 * ```ts
 * const world = await readWorld("fixtures/world");
 * const heldout = world.questions.filter((q) => q.heldout && q.split === "fresh");
 * ```
 */
export async function readWorld(dir: string): Promise<World> {
  const worldFile = join(dir, "world.json");
  let raw: Json;
  try {
    raw = JSON.parse(await readText(worldFile));
  } catch (e) {
    if (e instanceof WorldFormatError) throw e;
    throw new WorldFormatError(`Cannot parse ${worldFile}: it is not valid JSON`, worldFile, { cause: e });
  }
  if (!Array.isArray(raw.entities) || typeof raw.seed !== "number" || typeof raw.kinds !== "object") {
    throw new WorldFormatError(
      `Cannot read ${worldFile}: it needs "seed", "kinds" and "entities"`,
      worldFile,
    );
  }
  for (const [i, e] of (raw.entities as Json[]).entries()) {
    const problem = need({
      id: isString,
      kind: isString,
      name: isString,
      split: isSplit,
      attributes: (v) => typeof v === "object" && v !== null,
      relations: (v) => typeof v === "object" && v !== null,
      kb_attributes: (v) => typeof v === "object" && v !== null,
      kb_relations: (v) => typeof v === "object" && v !== null,
    })(e);
    if (problem) throw new WorldFormatError(`Cannot read ${worldFile}: entity ${i}: ${problem}`, worldFile);
  }
  const trainText = (await readText(join(dir, "train_text.txt"))).split("\n").filter((l) => l !== "");
  return {
    dir,
    seed: raw.seed,
    kinds: raw.kinds as Record<string, string[]>,
    entities: raw.entities as WorldEntity[],
    documents: await readWorldDocuments(dir),
    questions: await readWorldQuestions(dir),
    trainText,
    trainQa: await readJsonl<TrainQaPair>(join(dir, "train_qa.jsonl"), checkTrainQa),
    compressor: await readJsonl<CompressorExample>(join(dir, "compressor_train.jsonl"), checkCompressor),
  };
}
