import assert from "node:assert/strict";
import { approxTokenCount, type Chunk, chunkText, splitSentences } from "./chunk.ts";

const words = (s: string) => s.split(/\s+/).filter(Boolean).length;

function sentencesOf(text: string): string[] {
  return splitSentences(text).map((s) => text.slice(s.start, s.end));
}

/** Checks what every chunking must satisfy: exact slices, in order, covering every sentence, within budget. */
function checkChunks(text: string, chunks: Chunk[], budget: number, count: (s: string) => number) {
  for (const c of chunks) {
    assert.equal(c.text, text.slice(c.start, c.end));
    assert.equal(c.text, c.text.trim());
    assert.ok(c.tokens <= budget, `chunk of ${c.tokens} tokens over the budget ${budget}: ${c.text}`);
    assert.ok(count(c.text) <= budget + 1);
  }
  for (let i = 1; i < chunks.length; i++) {
    assert.ok(chunks[i].start > chunks[i - 1].start, "chunks move forward");
    const gap = text.slice(chunks[i - 1].end, Math.max(chunks[i].start, chunks[i - 1].end));
    assert.equal(gap.trim(), "", "nothing but white space between chunks");
    assert.ok(chunks[i].end > chunks[i - 1].end);
  }
  for (const s of splitSentences(text)) {
    assert.ok(
      chunks.some((c) => c.start <= s.start && s.end <= c.end) || count(text.slice(s.start, s.end)) > budget,
    );
  }
}

Deno.test("approxTokenCount: words by 6-character pieces, punctuation and CJK characters one each", () => {
  assert.equal(approxTokenCount(""), 0);
  assert.equal(approxTokenCount("   \n\t"), 0);
  assert.equal(approxTokenCount("the cat"), 2);
  assert.equal(approxTokenCount("retrieval"), 2); // 9 characters
  assert.equal(approxTokenCount("internationalization"), 4); // 20 characters
  assert.equal(approxTokenCount("Hello, world!"), 4);
  assert.equal(approxTokenCount("3.14"), 3);
  assert.equal(approxTokenCount("東京タワー"), 5);
  assert.equal(approxTokenCount("abc東京"), 3);
  assert.equal(approxTokenCount("café 🚀"), 2);
  assert.equal(approxTokenCount("snake_case_name"), 3);
});

Deno.test("splitSentences: terminators before space, CJK terminators, blank lines and Markdown blocks", () => {
  assert.deepEqual(sentencesOf("One. Two! Three? Four… Five"), ["One.", "Two!", "Three?", "Four…", "Five"]);
  assert.deepEqual(sentencesOf('He said "stop." Then left.'), ['He said "stop."', "Then left."]);
  assert.deepEqual(sentencesOf("Pi is 3.14 exactly.  e.g.x"), ["Pi is 3.14 exactly.", "e.g.x"]);
  assert.deepEqual(sentencesOf("一つ。二つ！三つ"), ["一つ。", "二つ！", "三つ"]);
  assert.deepEqual(sentencesOf("wrapped line\ncontinues here\n\nnew paragraph"), [
    "wrapped line\ncontinues here",
    "new paragraph",
  ]);
  assert.deepEqual(sentencesOf("# Title\nintro text\n- item one\n- item two\n1. first\n> quote"), [
    "# Title",
    "intro text",
    "- item one",
    "- item two",
    "1. first",
    "> quote",
  ]);
  assert.deepEqual(splitSentences("  \n "), []);
  const text = "  Leading space. Trailing space.  ";
  for (const s of splitSentences(text)) {
    assert.equal(text.slice(s.start, s.end).trim(), text.slice(s.start, s.end));
  }
});

Deno.test("chunkText: packs whole sentences up to the budget and repeats trailing sentences as overlap", () => {
  // Ten sentences of 4 tokens each ("Item number N." = 2 words + digit + period).
  const text = Array.from({ length: 10 }, (_, i) => `Item number ${i}.`).join(" ");
  const chunks = chunkText(text, { chunkTokens: 12, overlapTokens: 4 });
  assert.deepEqual(chunks.map((c) => c.text), [
    "Item number 0. Item number 1. Item number 2.",
    "Item number 2. Item number 3. Item number 4.",
    "Item number 4. Item number 5. Item number 6.",
    "Item number 6. Item number 7. Item number 8.",
    "Item number 8. Item number 9.",
  ]);
  assert.deepEqual(chunks.map((c) => c.tokens), [12, 12, 12, 12, 8]);
  checkChunks(text, chunks, 12, approxTokenCount);

  const noOverlap = chunkText(text, { chunkTokens: 12, overlapTokens: 0 });
  assert.equal(noOverlap.length, 4);
  assert.equal(noOverlap.map((c) => c.text).join(" "), text);

  // Overlap smaller than one sentence: nothing is repeated.
  assert.deepEqual(
    chunkText(text, { chunkTokens: 12, overlapTokens: 3 }).map((c) => c.text),
    noOverlap.map((c) => c.text),
  );
});

Deno.test("chunkText: a text within the budget is one chunk; empty text gives none", () => {
  assert.deepEqual(chunkText("  Short text. Two sentences.\n"), [
    { text: "Short text. Two sentences.", start: 2, end: 28, tokens: 7 },
  ]);
  assert.deepEqual(chunkText(""), []);
  assert.deepEqual(chunkText(" \n\n "), []);
});

Deno.test("chunkText: an over-long sentence is cut at word boundaries and a huge word by characters", () => {
  const sentence = Array.from({ length: 50 }, (_, i) => `w${i}`).join(" ") + ".";
  const chunks = chunkText(sentence, { chunkTokens: 10, overlapTokens: 2 });
  checkChunks(sentence, chunks, 10, approxTokenCount);
  assert.ok(chunks.length >= 5);
  for (const c of chunks) assert.ok(/^w\d+/.test(c.text), `cut inside a word: ${c.text}`);
  // Every word appears in some chunk.
  for (let i = 0; i < 50; i++) assert.ok(chunks.some((c) => c.text.split(/[\s.]+/).includes(`w${i}`)));

  const blob = "x".repeat(600); // 100 tokens by the default counter
  const parts = chunkText(`Start. ${blob} end.`, { chunkTokens: 16, overlapTokens: 0 });
  assert.equal(parts.map((c) => c.text).join("").replace(/\s|Start\.|end\./g, ""), blob);
  for (const p of parts) assert.ok(p.tokens <= 16);
});

Deno.test("chunkText: a custom token counter sets the budget", () => {
  const text = "one two three. four five six. seven eight nine. ten eleven twelve.";
  const chunks = chunkText(text, { chunkTokens: 6, overlapTokens: 0, countTokens: words });
  assert.deepEqual(chunks.map((c) => c.text), [
    "one two three. four five six.",
    "seven eight nine. ten eleven twelve.",
  ]);
  assert.deepEqual(chunks.map((c) => c.tokens), [6, 6]);
  checkChunks(text, chunks, 6, words);
});

Deno.test("chunkText: Markdown sections and CJK text stay within budget", () => {
  const md = "# Setup\nInstall the tool. Run it once.\n\n## Usage\n- add documents\n- search them\n\n" +
    "Long paragraph. ".repeat(30) + "\n\n日本語の文です。もう一つの文です！最後の文。";
  const chunks = chunkText(md, { chunkTokens: 20, overlapTokens: 5 });
  checkChunks(md, chunks, 20, approxTokenCount);
  assert.ok(chunks[0].text.startsWith("# Setup"));
  assert.ok(chunks.at(-1)!.text.endsWith("最後の文。"));
});

Deno.test("chunkText: bad options are RangeErrors", () => {
  assert.throws(() => chunkText("x", { chunkTokens: 0 }), RangeError);
  assert.throws(() => chunkText("x", { chunkTokens: 1.5 }), RangeError);
  assert.throws(() => chunkText("x", { chunkTokens: 8, overlapTokens: 8 }), RangeError);
  assert.throws(() => chunkText("x", { overlapTokens: -1 }), RangeError);
  assert.throws(() => chunkText(42 as unknown as string), TypeError);
});
