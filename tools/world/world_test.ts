import assert from "node:assert/strict";
import { join } from "node:path";
import { exactMatch, normalizeAnswer } from "./exact_match.ts";
import { containsPhrase, joinWords, keptText } from "./words.ts";
import { readWorld, readWorldQuestions, WorldFormatError } from "./world.ts";

Deno.test("normalizeAnswer: SQuAD normalization", () => {
  assert.equal(normalizeAnswer("The Tessel River."), "tessel river");
  assert.equal(normalizeAnswer("  An  oak,  a LAMP! "), "oak lamp");
  assert.equal(normalizeAnswer("4,213"), "4213");
  assert.equal(normalizeAnswer("theatre"), "theatre");
});

Deno.test("exactMatch: answer or alias after normalization; empty never matches", () => {
  assert.ok(exactMatch("the Ormic Sea", "Ormic Sea"));
  assert.ok(exactMatch("412 kilometres", "412", ["412 km", "412 kilometres"]));
  assert.ok(!exactMatch("412 miles", "412", ["412 km"]));
  assert.ok(!exactMatch("Velmora Works", "Velmora"));
  assert.ok(!exactMatch("", ""));
  assert.ok(!exactMatch("the", "The"));
});

Deno.test("joinWords and keptText: punctuation attaches to the previous word", () => {
  const words = ["In", "1883", ",", "Maxsei", "Dorn", "was", "born", "."];
  assert.equal(joinWords(words), "In 1883, Maxsei Dorn was born.");
  assert.equal(keptText(words, "01011011"), "1883 Maxsei Dorn born.");
  assert.equal(joinWords([]), "");
  assert.throws(() => keptText(words, "0101"), RangeError);
  assert.throws(() => keptText(words, "0101101x"), RangeError);
});

Deno.test("containsPhrase: whole words only", () => {
  assert.ok(containsPhrase("It has 4500 people.", "4500"));
  assert.ok(!containsPhrase("It has 14500 people.", "4500"));
  assert.ok(containsPhrase("14500 and 4500", "4500"));
  assert.ok(containsPhrase("Mount Keldra, high", "Mount Keldra"));
  assert.ok(!containsPhrase("Mount Keldras", "Mount Keldra"));
  assert.ok(!containsPhrase("anything", ""));
});

Deno.test("readWorld: a missing directory or a malformed line is a WorldFormatError naming the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(readWorldQuestions(join(dir, "nope")), (e: unknown) => {
      assert.ok(e instanceof WorldFormatError);
      assert.match(e.message, /questions\.jsonl: the file does not exist/);
      return true;
    });
    await Deno.writeTextFile(
      join(dir, "questions.jsonl"),
      '{"id":"q1","question":"Who?","answer":"Orlen Vask","doc_id":"doc-person-0000","split":"fresh",' +
        '"kind":"person","attribute":"founder","heldout":true}\n{"id":"q2","question":"Who?"}\n',
    );
    await assert.rejects(readWorldQuestions(dir), /questions\.jsonl line 2: the field "answer"/);
    await Deno.writeTextFile(join(dir, "questions.jsonl"), "{not json\n");
    await assert.rejects(readWorldQuestions(dir), /line 1: it is not valid JSON/);
    await Deno.writeTextFile(join(dir, "world.json"), '{"seed":0}');
    await assert.rejects(readWorld(dir), /world\.json: it needs "seed", "kinds" and "entities"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
