/**
 * Validates the synthetic knowledge world in fixtures/world against the promises of tools/world/README.md:
 * questions point to documents that state their answers (fresh, conflicting) or to facts of the training text
 * (parametric), conflicting facts differ between the knowledge base and the training text, fresh entities never
 * reach the reader's training data, held-out facts are absent from the QA pairs, compressor labels keep every
 * answer, and the generator reproduces the fixtures byte for byte.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { readWorld, type World, WORLD_SPLITS, type WorldEntity } from "../tools/world/world.ts";
import { containsPhrase, joinWords, keptText } from "../tools/world/words.ts";

const DIR = "fixtures/world";
const FILES = [
  "world.json",
  "documents.jsonl",
  "questions.jsonl",
  "train_text.txt",
  "train_qa.jsonl",
  "compressor_train.jsonl",
];

let cached: Promise<World> | undefined;
function world(): Promise<World> {
  cached ??= readWorld(DIR);
  return cached;
}

/** Entities by id and the entity of each document. */
async function index() {
  const w = await world();
  const entities = new Map(w.entities.map((e) => [e.id, e]));
  const docs = new Map(w.documents.map((d) => [d.id, d]));
  const entityOfDoc = (docId: string): WorldEntity => {
    const d = docs.get(docId);
    assert.ok(d, `document ${docId} does not exist`);
    const e = entities.get(d.metadata.entity);
    assert.ok(e, `entity ${d.metadata.entity} of ${docId} does not exist`);
    return e;
  };
  return { w, entities, docs, entityOfDoc };
}

/** Training-text lines that are paraphrases of `name`'s entity: every fact sentence names the entity. */
function bioLines(lines: readonly string[], byWord: Map<string, number[]>, name: string): string[] {
  const first = name.split(" ")[0];
  const out: string[] = [];
  for (const i of byWord.get(first) ?? []) {
    const line = lines[i];
    let count = 0;
    for (let at = line.indexOf(name); at >= 0; at = line.indexOf(name, at + 1)) {
      if (containsPhrase(line.slice(Math.max(0, at - 1), at + name.length + 1), name)) count++;
    }
    // A paraphrase names its entity in each of its four or five sentences; another entity's paraphrase
    // names it at most once.
    if (count >= 3) out.push(line);
  }
  return out;
}

function wordIndex(lines: readonly string[]): Map<string, number[]> {
  const byWord = new Map<string, number[]>();
  lines.forEach((line, i) => {
    for (const w of new Set(line.split(/[^\p{L}\p{N}]+/u))) {
      const list = byWord.get(w);
      if (list) list.push(i);
      else byWord.set(w, [i]);
    }
  });
  return byWord;
}

Deno.test("world: at least 2,000 entities of several kinds, with attributes and relations", async () => {
  const w = await world();
  assert.ok(w.entities.length >= 2000, `${w.entities.length} entities`);
  const kinds = new Set(w.entities.map((e) => e.kind));
  assert.ok(kinds.size >= 5, `kinds: ${[...kinds]}`);
  const ids = new Set(w.entities.map((e) => e.id));
  assert.equal(ids.size, w.entities.length, "entity ids are unique");
  const names = new Set(w.entities.map((e) => e.name));
  assert.equal(names.size, w.entities.length, "entity names are unique");
  for (const e of w.entities) {
    assert.deepEqual(Object.keys(e.attributes), w.kinds[e.kind], `${e.id} has every attribute of its kind`);
    for (const [attr, ref] of [...Object.entries(e.relations), ...Object.entries(e.kb_relations)]) {
      assert.ok(ids.has(ref), `${e.id}.${attr} points to a missing entity ${ref}`);
    }
    assert.equal(Object.keys(e.kb_attributes).length > 0, e.split === "conflicting", `${e.id} updates`);
  }
  assert.ok(w.entities.some((e) => Object.keys(e.relations).length > 0));
});

Deno.test("world: every question's document exists and its answer is short", async () => {
  const { w, docs } = await index();
  const ids = new Set<string>();
  for (const q of w.questions) {
    assert.ok(!ids.has(q.id), `question id ${q.id} is unique`);
    ids.add(q.id);
    assert.ok(docs.has(q.doc_id), `${q.id}: document ${q.doc_id} does not exist`);
    const words = q.answer.split(" ").length;
    assert.ok(words >= 1 && words <= 3 && q.answer.trim() === q.answer, `${q.id}: answer "${q.answer}"`);
    assert.ok(q.question.endsWith("?"), `${q.id}: "${q.question}"`);
  }
});

Deno.test("world: fresh and conflicting answers are in their document, parametric ones in the training text", async () => {
  const { w, docs, entityOfDoc } = await index();
  const byWord = wordIndex(w.trainText);
  for (const q of w.questions) {
    const doc = docs.get(q.doc_id)!;
    // Every document states every fact of its entity, with the knowledge base's values.
    assert.ok(containsPhrase(doc.text, q.answer), `${q.id}: "${q.answer}" is not in ${q.doc_id}`);
    if (q.split === "parametric") {
      const e = entityOfDoc(q.doc_id);
      const bios = bioLines(w.trainText, byWord, e.name);
      assert.ok(bios.length >= 2, `${q.id}: ${e.name} has ${bios.length} paraphrases in the training text`);
      for (const line of bios) {
        assert.ok(containsPhrase(line, q.answer), `${q.id}: a paraphrase of ${e.name} lacks "${q.answer}"`);
      }
    }
  }
});

Deno.test("world: conflicting facts differ between the knowledge base and the training text", async () => {
  const { w, docs, entityOfDoc } = await index();
  const byWord = wordIndex(w.trainText);
  const conflicting = w.questions.filter((q) => q.split === "conflicting");
  assert.ok(conflicting.length > 0);
  for (const q of conflicting) {
    const trained = q.trained_answer;
    assert.ok(trained !== undefined, `${q.id} has a trained_answer`);
    assert.notEqual(q.answer, trained, `${q.id}: the knowledge base must change the value`);
    const e = entityOfDoc(q.doc_id);
    assert.equal(e.kb_attributes[q.attribute], q.answer);
    assert.equal(e.attributes[q.attribute], trained);
    const doc = docs.get(q.doc_id)!;
    assert.ok(!containsPhrase(doc.text, trained), `${q.id}: ${q.doc_id} still states "${trained}"`);
    const bios = bioLines(w.trainText, byWord, e.name);
    assert.ok(bios.length >= 2, `${q.id}: ${e.name} has ${bios.length} paraphrases`);
    for (const line of bios) {
      assert.ok(containsPhrase(line, trained), `${q.id}: a paraphrase lacks the trained "${trained}"`);
      assert.ok(!containsPhrase(line, q.answer), `${q.id}: a paraphrase states the new "${q.answer}"`);
    }
  }
  // Other questions carry no trained_answer.
  assert.ok(w.questions.every((q) => (q.split === "conflicting") === (q.trained_answer !== undefined)));
});

Deno.test("world: fresh entities never reach the reader's training text or its QA pairs without context", async () => {
  const { w, entityOfDoc } = await index();
  const grams = new Set<string>();
  for (const line of w.trainText) {
    const words = line.split(/[^\p{L}\p{N}]+/u).filter((x) => x !== "");
    for (let i = 0; i < words.length; i++) {
      grams.add(words[i]);
      if (i + 1 < words.length) grams.add(`${words[i]} ${words[i + 1]}`);
    }
  }
  const fresh = w.entities.filter((e) => e.split === "fresh");
  assert.ok(fresh.length > 0);
  const freshNames = new Set(fresh.map((e) => e.name));
  for (const e of fresh) assert.ok(!grams.has(e.name), `fresh ${e.id} "${e.name}" is in the training text`);
  const questions = new Map(w.questions.map((q) => [q.id, q]));
  for (const t of w.trainQa) {
    if (t.context_ids.length > 0) continue;
    const q = questions.get(t.qid)!;
    assert.notEqual(q.split, "fresh", `${t.id}: a fresh question without context`);
    assert.ok(entityOfDoc(q.doc_id).split !== "fresh");
    assert.ok(!freshNames.has(t.answer), `${t.id}: answer "${t.answer}" is a fresh entity`);
  }
});

Deno.test("world: held-out questions and their facts are absent from train_qa", async () => {
  const w = await world();
  const questions = new Map(w.questions.map((q) => [q.id, q]));
  const heldout = w.questions.filter((q) => q.heldout);
  const heldIds = new Set(heldout.map((q) => q.id));
  const heldFacts = new Set(heldout.map((q) => `${q.doc_id}/${q.attribute}`));
  const heldTexts = new Set(heldout.map((q) => q.question));
  for (const t of w.trainQa) {
    const q = questions.get(t.qid);
    assert.ok(q, `${t.id}: question ${t.qid} does not exist`);
    assert.ok(!heldIds.has(t.qid), `${t.id} trains held-out question ${t.qid}`);
    assert.ok(!heldFacts.has(`${q.doc_id}/${q.attribute}`), `${t.id} trains a held-out fact`);
    assert.ok(!heldTexts.has(t.question), `${t.id} trains the held-out question "${t.question}"`);
  }
});

Deno.test("world: splits are non-empty and each has held-out and trained questions", async () => {
  const w = await world();
  for (const split of WORLD_SPLITS) {
    const qs = w.questions.filter((q) => q.split === split);
    assert.ok(qs.some((q) => q.heldout), `${split} has held-out questions`);
    assert.ok(qs.some((q) => !q.heldout), `${split} has trained questions`);
    assert.ok(w.trainQa.some((t) => t.split === split), `${split} has QA pairs`);
    assert.ok(w.documents.some((d) => d.metadata.split === split), `${split} has documents`);
  }
});

Deno.test("world: QA pairs point to existing documents, and context answers come from the context", async () => {
  const { w, docs } = await index();
  const questions = new Map(w.questions.map((q) => [q.id, q]));
  let withContext = 0, compressed = 0;
  for (const t of w.trainQa) {
    const q = questions.get(t.qid)!;
    assert.equal(t.split, q.split);
    for (const id of t.context_ids) assert.ok(docs.has(id), `${t.id}: context ${id} does not exist`);
    assert.equal(new Set(t.context_ids).size, t.context_ids.length, `${t.id}: repeated context`);
    assert.equal(
      t.compressed !== undefined,
      t.context_ids.length > 0,
      `${t.id}: compressed only with a context`,
    );
    if (t.context_ids.length === 0) {
      assert.equal(t.answer, q.trained_answer ?? q.answer, `${t.id}: no context, so the trained value`);
      continue;
    }
    withContext++;
    if (t.compressed) compressed++;
    if (t.context_ids.includes(q.doc_id)) {
      assert.equal(t.answer, q.answer, `${t.id}: the context's value wins`);
    } else {
      assert.equal(q.split, "parametric", `${t.id}: only parametric pairs may lack the gold document`);
      assert.equal(t.answer, q.answer);
    }
  }
  assert.ok(withContext > 1000 && compressed > 100, `${withContext} context pairs, ${compressed} compressed`);
});

Deno.test("world: compressor words rebuild each document and the kept words keep every answer", async () => {
  const { w, docs } = await index();
  assert.equal(w.compressor.length, w.documents.length);
  let words = 0, kept = 0, heldout = 0;
  for (const c of w.compressor) {
    const doc = docs.get(c.id);
    assert.ok(doc, `compressor example ${c.id} has no document`);
    assert.equal(joinWords(c.words), doc.text, `${c.id}: words do not rebuild the document`);
    words += c.words.length;
    kept += c.labels.split("").filter((l) => l === "1").length;
    if (c.heldout) heldout++;
  }
  const rate = kept / words;
  assert.ok(rate > 0.2 && rate < 0.5, `keep rate ${rate}`);
  assert.ok(heldout > 50 && heldout < w.compressor.length / 2, `${heldout} held-out compressor examples`);
  const byId = new Map(w.compressor.map((c) => [c.id, c]));
  for (const q of w.questions) {
    const c = byId.get(q.doc_id)!;
    const text = keptText(c.words, c.labels);
    assert.ok(containsPhrase(text, q.answer), `${q.id}: the kept words of ${q.doc_id} lose "${q.answer}"`);
  }
});

Deno.test("world: fixtures stay under 9 MB", async () => {
  let total = 0;
  for (const f of FILES) total += (await Deno.stat(join(DIR, f))).size;
  assert.ok(total < 9e6, `${(total / 1e6).toFixed(2)} MB`);
});

async function hasPython(): Promise<boolean> {
  try {
    const { success } = await new Deno.Command("python3", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .output();
    return success;
  } catch {
    return false;
  }
}

const PYTHON = await hasPython();
if (!PYTHON) console.warn("world_test: python3 is not on PATH, so the determinism test is skipped");

Deno.test({
  name: "world: the generator is deterministic and reproduces fixtures/world (skipped without python3)",
  ignore: !PYTHON,
  async fn() {
    const dirs = [await Deno.makeTempDir(), await Deno.makeTempDir()];
    try {
      for (const out of dirs) {
        const { success, stderr } = await new Deno.Command("python3", {
          args: ["tools/world/generate.py", "--seed", "0", "--out", out],
          stdout: "null",
          stderr: "piped",
        }).output();
        assert.ok(success, `generate.py failed: ${new TextDecoder().decode(stderr)}`);
      }
      for (const f of FILES) {
        const a = await Deno.readFile(join(dirs[0], f));
        const b = await Deno.readFile(join(dirs[1], f));
        assert.ok(equalBytes(a, b), `${f} differs between two runs with seed 0`);
        const fixture = await Deno.readFile(join(DIR, f));
        assert.ok(
          equalBytes(a, fixture),
          `${DIR}/${f} is stale: regenerate with python3 tools/world/generate.py --seed 0 --out ${DIR}`,
        );
      }
    } finally {
      for (const d of dirs) await Deno.remove(d, { recursive: true });
    }
  },
});

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
