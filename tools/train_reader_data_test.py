#!/usr/bin/env python3
"""Checks the data pipeline of tools/train_reader.py without torch (python3 with the standard library and numpy):
the training prompts are the serve pipeline's, only answer tokens of QA examples are scored, context examples
contain their answers and cannot be answered from the question alone, no held-out fact is asked, fresh entities
stay out of the memory data, packing keeps every example whole.

    python3 tools/train_reader_data_test.py          # from the repository root, ~10 s
"""

import importlib.util
import json
import os
import random
import re
import unittest

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("train_reader", os.path.join(ROOT, "tools", "train_reader.py"))
tr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tr)

_WORLD = None
_VARIANTS: dict = {}


def world():
    global _WORLD
    if _WORLD is None:
        _WORLD = tr.World(os.path.join(ROOT, "fixtures", "world"))
    return _WORLD


def variant(seed: int) -> list:
    """The examples of a full-size variant (cached)."""
    if seed not in _VARIANTS:
        _VARIANTS[seed] = tr.build_examples(world(), random.Random(f"test:{seed}"), tr.DEFAULT_MIX)
    return _VARIANTS[seed]


class WordEncoder:
    """A stand-in for the byte-level BPE tokenizer: its pre-tokenization (GPT-2's pattern: a word, a number or a
    run of punctuation with its leading space is one piece), each piece one id. Enough to check how ids and
    scored classes line up, and which pieces an answer shares with a passage."""

    SPECIAL = re.compile(r"(<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>)")
    PATTERN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")

    def __init__(self):
        self.vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
        self.words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

    def __call__(self, texts: list) -> list:
        out = []
        for t in texts:
            ids = []
            pieces = [p for i, part in enumerate(self.SPECIAL.split(t))
                      for p in ([part] if i % 2 else self.PATTERN.findall(part))]
            for piece in pieces:
                if piece not in self.vocab:
                    self.vocab[piece] = len(self.words)
                    self.words.append(piece)
                ids.append(self.vocab[piece])
            out.append(ids)
        return out

    def decode(self, ids) -> str:
        return "".join(self.words[i] for i in ids)


def user_question(prompt: str) -> str:
    """The question of a rendered prompt: the user message, or what follows its last "Question: "."""
    content = prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    if content.startswith("Question: "):
        return content[len("Question: "):]
    if content.startswith("Context:\n"):
        return content.rsplit("\n\nQuestion: ", 1)[1]
    return content


padded_words = tr.padded_words


def compress_first_sentence(w, entity: str) -> str:
    """The kept words of the first sentence of an entity's document (a fact sentence), as compressed text."""
    words, keep = w.labels[f"doc-{entity}"]
    end = words.index(".") + 1
    return tr.compress_words(words[:end], keep[:end], None)


class PromptFormat(unittest.TestCase):
    def test_system_prompt_is_the_pipelines(self):
        with open(os.path.join(ROOT, "pipeline.ts"), encoding="utf-8") as f:
            source = f.read()
        self.assertEqual(tr.pipeline_system_prompt(source), tr.PIPELINE_SYSTEM_PROMPT)

    def test_pipeline_ts_builds_the_prompt_the_reader_is_trained_on(self):
        # The pieces of pipeline.ts's #askPrompt and context assembly that pipeline_messages and pipeline_context
        # reproduce; when one changes, the reader's training prompts must change with it.
        with open(os.path.join(ROOT, "pipeline.ts"), encoding="utf-8") as f:
            source = f.read()
        for snippet in [
            "`${this.defaults.systemPrompt}\\n\\n<context>\\n${context}\\n</context>`",
            'chosen.map((p, i) => `[${i + 1}] ${this.#neutralize(p.text)}`).join("\\n\\n")',
            '[{ role: "system", content: system }, { role: "user", content: question }]',
            "tok.applyChatTemplate(messages, { addGenerationPrompt: true })",
        ]:
            self.assertIn(snippet, source, f"pipeline.ts no longer contains {snippet}")

    def test_rendered_prompts(self):
        sys_prompt = tr.PIPELINE_SYSTEM_PROMPT
        got = tr.render_prompt(tr.pipeline_messages("Who founded Kago Works?", tr.pipeline_context(["A b.", "C d."])))
        want = (f"<|im_start|>system\n{sys_prompt}\n\n<context>\n[1] A b.\n\n[2] C d.\n</context><|im_end|>\n"
                "<|im_start|>user\nWho founded Kago Works?<|im_end|>\n<|im_start|>assistant\n")
        self.assertEqual(got, want)
        got = tr.render_prompt(tr.pipeline_messages("Who founded Kago Works?", ""))
        want = (f"<|im_start|>system\n{sys_prompt}<|im_end|>\n<|im_start|>user\nWho founded Kago Works?<|im_end|>\n"
                "<|im_start|>assistant\n")
        self.assertEqual(got, want)
        got = tr.render_prompt(tr.user_format_messages("Q?", ["P one.", "P two."], False))
        self.assertEqual(got, "<|im_start|>user\nContext:\nP one.\n\nP two.\n\nQuestion: Q?<|im_end|>\n"
                              "<|im_start|>assistant\n")

    def test_pipeline_system_prompt_parser(self):
        src = 'x;\nconst DEFAULT_SYSTEM_PROMPT = "One \\"two\\". " +\n  "Three.";\nconst y = 1;'
        self.assertEqual(tr.pipeline_system_prompt(src), 'One "two". Three.')
        self.assertIsNone(tr.pipeline_system_prompt("const OTHER = 'x';"))

    def test_most_training_prompts_are_the_pipelines(self):
        examples = [x for x in variant(0) if x.kind == "qa"]
        with_ctx = [x for x in examples if "<context>" in x.prompt or "Context:\n" in x.prompt]
        pipeline = [x for x in with_ctx if x.prompt.startswith(
            f"<|im_start|>system\n{tr.PIPELINE_SYSTEM_PROMPT}\n\n<context>\n")]
        self.assertGreater(len(pipeline) / len(with_ctx), 0.5)
        for x in pipeline:
            # Exactly the pipeline's rendering of its context and question.
            context = x.prompt.split("<context>\n", 1)[1].split("\n</context>", 1)[0]
            self.assertEqual(x.prompt, tr.render_prompt(tr.pipeline_messages(x.question, context)))
        bare = [x for x in examples if x.prompt == tr.render_prompt(tr.pipeline_messages(x.question, ""))]
        self.assertGreater(len(bare) / len(examples), 0.2)


class Examples(unittest.TestCase):
    def test_no_heldout_fact_is_asked(self):
        w = world()
        text_of = {}
        for f in w.facts:
            text_of.setdefault(f.question, set()).add((f.entity, f.attribute))
        heldout_questions = {f.question for f in w.facts if f.heldout and len(text_of[f.question]) == 1}
        self.assertGreater(len(heldout_questions), 1500)
        for seed in [0, 1]:
            for x in variant(seed):
                if x.kind != "qa":
                    continue
                self.assertEqual(user_question(x.prompt), x.question)
                self.assertNotIn(x.question, heldout_questions, f"a held-out question is trained ({x.source})")
                if x.entity:
                    self.assertNotIn((x.entity, x.attribute), w.heldout, f"a held-out fact is trained: {x}")

    def test_fresh_entities_stay_out_of_the_memory_data(self):
        w = world()
        fresh = [e["name"] for e in w.entities.values() if e["split"] == "fresh"]
        by_first: dict = {}
        for n in fresh:
            by_first.setdefault(n.split(" ")[0], []).append(n)
        memory = [x for x in variant(0) if x.source in ("bio", "qa")]
        self.assertGreater(len(memory), 5000)
        for x in memory:
            text = padded_words(x.prompt + " " + x.target)
            for word in set(text.split()):
                for name in by_first.get(word, []):
                    self.assertNotIn(f" {name} ", text, f"the fresh entity {name} is in {x.source}: {x.target}")

    def test_bios_state_trained_values(self):
        w = world()
        bios = [x for x in variant(0) if x.source == "bio"]
        self.assertEqual(len(bios), len(w.known) * tr.DEFAULT_MIX["bios_per_entity"])
        for x in bios[:500]:
            e = w.entities[x.entity]
            for value in e["attributes"].values():
                self.assertIn(f" {value} ", padded_words(x.target))

    def test_context_examples_contain_their_answers(self):
        w = world()
        ctx = [x for x in variant(0) if x.kind == "qa" and x.source != "qa"]
        self.assertGreater(len(ctx), 2000)
        for x in ctx:
            self.assertTrue(x.target.startswith(tr.ANSWER_PREFIX) and x.target.strip() == x.target[1:])
            context = x.prompt.split("<|im_start|>user\n", 1)[0] if "<context>" in x.prompt else \
                x.prompt.rsplit("\n\nQuestion: ", 1)[0]
            if x.from_context:
                self.assertIn(f" {x.target.strip()} ", padded_words(context), f"{x.source}: {x.prompt}")
            else:
                # Answered from memory: the entity's own document is not among the passages.
                self.assertEqual(x.source, "memory_with_context")
                self.assertNotIn(w.documents[f"doc-{x.entity}"], x.prompt)
                self.assertNotIn(compress_first_sentence(w, x.entity), x.prompt)

    def test_compressed_contexts_are_mostly_the_real_compressors(self):
        w = world()
        self.assertEqual(set(w.compressed), set(w.documents))
        rng = random.Random(3)
        fact = next(f for f in w.facts if f.split == "fresh")
        gold = w.doc_passage(fact.doc_id)
        real = set(gold.real.values())
        texts = [tr.compress_passage(gold, rng, fact.answer) for _ in range(400)]
        share = sum(t in real for t in texts) / len(texts)
        self.assertGreater(share, 0.4)
        self.assertLess(share, tr.REAL_COMPRESSION_SHARE + 0.05)
        for t in texts:
            self.assertIn(f" {fact.answer} ", padded_words(t))
        # Without an answer to keep, every rate may be drawn (the lowest ones lose facts).
        drawn = {tr.compress_passage(gold, rng) for _ in range(400)} & real
        self.assertEqual(len(drawn), len(real))

    def test_resampled_answers_cannot_be_memorised(self):
        w = world()
        first = {x.question: x.target for x in variant(0) if x.source.startswith("synthetic")}
        second = {x.question: x.target for x in variant(1) if x.source.startswith("synthetic")}
        new = [x for x in variant(0) if x.source == "synthetic_new"]
        self.assertEqual(len(new), tr.DEFAULT_MIX["synthetic_new"])
        self.assertTrue(all(x.entity == "" for x in new))
        same = [q for q in first if q in second and first[q] == second[q]]
        self.assertLess(len(same), 0.05 * len(first), "synthetic questions keep their answers across variants")
        known = [x for x in variant(0) if x.source == "synthetic_known"]
        kb = {(f.entity, f.attribute): f.answer for f in w.facts}
        changed = sum(x.target.strip() != kb[(x.entity, x.attribute)] for x in known)
        self.assertGreater(changed / len(known), 0.6, "synthetic_known examples mostly ask a re-drawn value")

    def test_invented_names_are_not_world_names(self):
        w = world()
        namer = tr.Namer(w, random.Random(3))
        for kind in tr.GEN.KIND_COUNTS:
            for _ in range(200):
                n = namer.name(kind)
                self.assertNotIn(n, w.names)


class Encoding(unittest.TestCase):
    def test_only_answers_are_scored_in_qa(self):
        enc = WordEncoder()
        examples = variant(0)[:400]
        encoded = tr.encode_examples(examples, enc, 0, 2)
        for x, (ids, cls) in zip(examples, encoded):
            self.assertEqual(ids.dtype, np.int32)
            self.assertEqual(cls.dtype, np.int8)
            self.assertEqual(len(ids), len(cls))
            if x.kind == "qa":
                scored = ids[cls == tr.CLS_ANSWER]
                self.assertEqual(int(scored[-1]), 2, "<|im_end|> ends the scored answer")
                self.assertEqual(enc.decode(scored[:-1]), x.target)
                self.assertEqual(enc.decode(ids[cls == tr.CLS_NONE]), x.prompt)
                self.assertFalse((cls == tr.CLS_TEXT).any())
                # The answer follows the prompt without a gap.
                n_prompt = int((cls == tr.CLS_NONE).sum())
                self.assertTrue((cls[n_prompt:] == tr.CLS_ANSWER).all())
            else:
                self.assertEqual(int(ids[-1]), 0, "<|endoftext|> ends a text line")
                self.assertEqual(int(cls[0]), tr.CLS_NONE)
                self.assertTrue((cls[1:] == tr.CLS_TEXT).all())
                self.assertEqual(enc.decode(ids[:-1]), x.target)

    def test_answer_tokens_are_the_passage_tokens(self):
        # With the leading space the answer's pieces are the same pieces as the value's in the passage (but for
        # a value that starts a passage without a number, "\n\nValue ...": rare, though the real compressor's
        # texts start with a value more often than the documents do, since it drops a leading "The" or "In").
        enc = WordEncoder()
        examples = [x for x in variant(0) if x.from_context]
        missing = []
        for x in examples:
            p, a = enc([x.prompt, x.target])
            k = len(a)
            if not any(p[i:i + k] == a for i in range(len(p) - k + 1)):
                missing.append(x)
                self.assertIn("\n" + x.target.strip(), x.prompt)
        self.assertLess(len(missing), 0.04 * len(examples), [x.target for x in missing[:5]])

    def test_pack_keeps_examples_whole(self):
        # Example i is made of the id i + 1 only, so each row must be runs of whole examples.
        rng = random.Random(1)
        lengths = [rng.choice([rng.randint(20, 80), rng.randint(200, 700)]) for _ in range(3000)] + [1100, 1025]
        encoded = [(np.full(n, i + 1, dtype=np.int32), np.asarray([rng.randint(0, 2) for _ in range(n)], np.int8))
                   for i, n in enumerate(lengths)]
        seq_len = 1024
        ids, cls, dropped = tr.pack(encoded, seq_len, 0, random.Random(0))
        self.assertEqual(dropped, 2)
        self.assertEqual(ids.shape, cls.shape)
        self.assertEqual(ids.shape[1], seq_len)
        seen = set()
        for r in range(len(ids)):
            at = 0
            while at < seq_len and ids[r, at] != 0:
                i = int(ids[r, at]) - 1
                n = lengths[i]
                self.assertNotIn(i, seen)
                seen.add(i)
                self.assertTrue((ids[r, at:at + n] == i + 1).all(), f"example {i} is split")
                self.assertTrue((cls[r, at:at + n] == encoded[i][1]).all())
                at += n
            self.assertTrue((ids[r, at:] == 0).all() and (cls[r, at:] == 0).all())
        self.assertEqual(seen, set(range(3000)))
        fill = sum(lengths[:3000]) / ids.size
        self.assertGreater(fill, 0.97, f"rows are only {fill:.1%} full")

    def test_pack_fills_rows_of_a_real_variant(self):
        encoded = tr.encode_examples(variant(0), WordEncoder(), 0, 2)
        ids, cls, dropped = tr.pack(encoded, 1024, 0, random.Random(0))
        self.assertEqual(dropped, 0)
        total = sum(len(x) for x, _ in encoded)
        self.assertGreater(total / ids.size, 0.97)
        self.assertEqual(int((cls == tr.CLS_ANSWER).sum()), sum(int((c == tr.CLS_ANSWER).sum()) for _, c in encoded))

    def test_build_variant(self):
        ids, cls, stats = tr.build_variant(world(), WordEncoder(), 0, 2, 0, 1024, tr.DRY_RUN_MIX, "variant:t:0")
        self.assertEqual(ids.shape[1], 1024)
        self.assertEqual(stats["rows"], len(ids))
        self.assertGreater(stats["sources"]["bio"]["scored"], 0)
        self.assertGreater(stats["sources"]["synthetic_new"]["examples"], 0)
        json.dumps(stats)


class Evaluation(unittest.TestCase):
    def test_eval_prompts_are_the_pipelines_and_hold_the_gold_document(self):
        w = world()
        rng = random.Random(0)
        facts = tr.eval_facts(w, "fresh", 50, rng)
        self.assertTrue(all(f.heldout and f.split == "fresh" for f in facts))
        prompts = tr.eval_prompts(w, facts, rng)
        for i, f in enumerate(facts):
            self.assertEqual(prompts["no_context"][i], tr.render_prompt(tr.pipeline_messages(f.question, "")))
            ctx = prompts["context"][i]
            self.assertIn(w.documents[f.doc_id], ctx)
            self.assertEqual(ctx.count("\n\n[") + 1, 4, "four passages")
            self.assertIn(f" {f.answer} ", padded_words(prompts["compressed_context"][i]))
            self.assertEqual(user_question(prompts["context_user_format"][i]), f.question)

    def test_exact_match(self):
        self.assertTrue(tr.exact_match(" The Ormic Sea.", ["Ormic Sea"]))
        self.assertTrue(tr.exact_match("412 km", ["412", "412 km"]))
        self.assertFalse(tr.exact_match("", [""]))
        self.assertFalse(tr.exact_match("Velmora Works", ["Velmora"]))


if __name__ == "__main__":
    unittest.main(verbosity=2)
