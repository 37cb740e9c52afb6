#!/usr/bin/env python3
"""Writes the LLMLingua-2 compressor fixtures that edgemix's tests use (retrieval/compress_golden_test.ts).

    fixtures/compressor/xlmr/    XLM-RoBERTa-style token classifier: SentencePiece-Unigram tokenizer (▁ metaspace,
                                 <s> <pad> </s> <unk> <mask>), XLMRobertaForTokenClassification, 2 layers, hidden 32
    fixtures/compressor/bert/    BERT-style: WordPiece tokenizer (## continuations, [CLS] [SEP] [PAD] [UNK] [MASK]),
                                 BertForTokenClassification, 2 layers, hidden 32
      each in transformers.js layout: config.json, tokenizer.json, tokenizer_config.json, onnx/model.onnx
    fixtures/compressor/golden.json
      tokenizer cases, per-chunk keep probabilities from torch, and the outputs of a Python port of LLMLingua-2's
      compress_prompt_llmlingua2 (written below, following microsoft/LLMLingua llmlingua/prompt_compressor.py and
      utils.py) for several texts, rates and options; NumPy percentile values of this machine.

Both models get LLMLingua-2's [NEW0]..[NEW99] tokens (seed 42, resized embeddings) before export, as
PromptCompressor does at init. Tokenizers are trained offline on the text embedded below; weights are random
(seeded) with a classifier scaled so that keep probabilities spread over (0, 1).

Tokenizer parity is checked on TOKENIZE_CASES (long texts included) and on every classified chunk; the goldens
record what the Rust `tokenizers` library gives, which is what transformers runs.

Two deliberate differences from the Python package, both mirrored by edgemix's port:
  * token counts: the package counts with tiktoken cl100k_base, which is not available offline here; the port takes
    the counting function as a parameter and the goldens use count(s) = ceil(utf8_bytes(s) / 4). edgemix checks its
    cl100k counting separately.
  * a chunk is classified once: with the context-level filter, the package classifies the kept chunks a second
    time (same inputs, so the same probabilities up to batch-size rounding); the port reuses the first result.

Run from the repository root (needs torch, transformers >= 5, tokenizers, onnx, onnxruntime, numpy; no network):
    python3 tools/make_compressor_fixtures.py --out fixtures/compressor
"""

import argparse
import copy
import json
import math
import os
import re
import string
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_compressor_onnx import add_llmlingua_tokens, check_onnx, export_onnx, save_tokenizer_files  # noqa: E402

MEETING = (
    "John: So, um, I've been thinking about the project, you know, and I believe we need to make some changes. "
    "I mean, we want the project to succeed, right? So, like, I think we should consider maybe revising the timeline."
    "\n\nSarah: I totally agree, John. I mean, we have to be realistic, you know. The timeline is, like, too tight. "
    "You know what I mean? We should definitely extend it."
)
TRANSCRIPT = (
    "Speaker 4: Thank you. And can we do the functions for content? Items I believe are 11, three, 14, 16 and 28, "
    "I believe.\nSpeaker 0: Item 11 is a communication from Council on Price recommendation to increase "
    "appropriation in the general fund group in the City Manager Department by $200 to provide a contribution to "
    "the Friends of the Long Beach Public Library. Item 12 is communication from Councilman Super Now. "
    "Recommendation to increase appropriation in the special advertising and promotion fund group and the city "
    "manager department by $10,000 to provide support for the end of summer celebration. Item 13 is a "
    "communication from Councilman Austin. Recommendation to increase appropriation in the general fund group in "
    "the city manager department by $500 to provide donation to the Jazz Angels. Item 14 is a communication from "
    "Councilman Austin. Recommendation to increase appropriation in the general fund group in the City Manager "
    "department by $300 to provide a donation to the Little Lion Foundation.\nSpeaker 4: There is a motion and a "
    "second to approve. Please cast your votes.\nSpeaker 0: Motion carries. Next time."
)
GSM8K = [
    "Question: Angelo and Melanie want to plan how many hours over the next week they should study together for "
    "their test next week. They have 2 chapters of their textbook to study and 4 worksheets to memorize. They "
    "figure out that they should dedicate 3 hours to each chapter of their textbook and 1.5 hours for each "
    "worksheet. If they plan to study no more than 4 hours each day, how many days should they plan to study "
    "total over the next week if they take a 10-minute break every hour?\nLet's think step by step\nAngelo and "
    "Melanie think they should dedicate 3 hours to each of the 2 chapters, 3 hours x 2 chapters = 6 hours total.\n"
    "For the worksheets they plan to dedicate 1.5 hours for each worksheet, 1.5 hours x 4 worksheets = 6 hours "
    "total.\nAngelo and Melanie need to start with planning 12 hours to study, at 4 hours a day, 12 / 4 = 3 days.\n"
    "The answer is 4",
    "Question: Mark's basketball team scores 25 2 pointers, 8 3 pointers and 10 free throws. Their opponents score "
    "double the 2 pointers but half the 3 pointers and free throws. What's the total number of points scored by "
    "both teams added together?\nLet's think step by step\nMark's team scores 25 2 pointers, meaning they scored "
    "25*2= 50 points in 2 pointers.\nHis team also scores 8 3 pointers, meaning they scored 8*3= 24 points in 3 "
    "pointers\nThey scored 10 free throws, and free throws count as one point so they scored 10*1=10 points in "
    "free throws.\nAll together his team scored 50+24+10= 84 points\nThe answer is 201",
    "Question: Bella has two times as many marbles as frisbees. She also has 20 more frisbees than deck cards. If "
    "she buys 2/5 times more of each item, what would be the total number of the items she will have if she "
    "currently has 60 marbles?\nLet's think step by step\nWhen Bella buys 2/5 times more marbles, she'll have "
    "increased the number of marbles by 2/5*60 = 24\nThe total number of marbles she'll have is 60+24 = 84\n"
    "The answer is 140",
]
NEWS = (
    "The city council approved a new budget for the public library on Tuesday. The plan adds evening hours, "
    "funds a mobile reading program and repairs the roof of the main branch. Critics said the money should go "
    "to road repairs instead, but the vote passed eight to one."
)
CHINESE = "今天天气很好，我们去公园散步。公园里有很多人，有的在跑步，有的在下棋。我们坐在湖边聊天，一直到太阳下山。"
RUSSIAN = "Сегодня хорошая погода. Мы пошли в парк, где много людей: одни бегают, другие играют в шахматы."
ARABIC = "الطقس جميل اليوم. ذهبنا إلى الحديقة وجلسنا بجانب البحيرة."
EXTRA = [
    "Mixture-of-experts language models route every token to a few small feed-forward networks.",
    "Retrieval-augmented generation looks up passages in a knowledge base before it answers a question.",
    "Prompt compression removes words that carry little information, so the model reads fewer tokens.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "Numbers like 3.14159, 2048 and 1e-5 appear in configs; prices like $200 and 10,000 appear in budgets.",
    "Questions? Answers! Lists: one, two, three. Café, naïve, Zürich, São Paulo.",
]
# A context of more than 511 tokens with no chunk end: its chunks are exactly 511 tokens long, so the classifier
# input ([CLS] + 511 + [SEP]) is cut at 512, and a chunk that starts inside a word re-tokenises differently.
NO_PERIOD = ", ".join(["apple", "river", "stone", "cloud", "garden", "window", "market", "forest"] * 90)
LONG = " ".join([MEETING, TRANSCRIPT, NEWS, GSM8K[0], MEETING, TRANSCRIPT, GSM8K[1], NEWS, TRANSCRIPT])

CORPUS = [MEETING, TRANSCRIPT, *GSM8K, NEWS, CHINESE, RUSSIAN, ARABIC, *EXTRA]

TOKENIZE_CASES = [
    "Hello world",
    "John: So, um, I've been thinking about the project.",
    "  leading spaces and  double  spaces ",
    "Café naïve Zürich 12345 3.14 $200",
    "line one\nline two\n\nline four\ttab",
    "The answer is[NEW6] 42[NEW8]",
    CHINESE,
    RUSSIAN,
    ARABIC,
    "emoji 🚀 and unknown ☃ symbols",
    "",
    # Long texts: Rust's Metaspace (split=True) runs the Unigram search word by word; a port that searches the
    # whole text at once breaks ties between equal-score segmentations by rounding ("$10,000" in TRANSCRIPT: "0",
    # "00" vs "00", "0"). LONG also passes edgemix's 4096-character tokenisation segments.
    TRANSCRIPT,
    LONG,
]

FORCE_MEETING = ["\n", ".", "!", "?"]
FORCE_GSM8K = ["+", "-", "*", "×", "/", "÷", "=", "The answer is", "\n", "Question:"]
CASES = [
    ("meeting_rate_0.33", [MEETING], dict(rate=0.33, force_tokens=FORCE_MEETING)),
    ("meeting_rate_0.34", [MEETING], dict(rate=0.34)),
    ("meeting_rate_0.55", [MEETING], dict(rate=0.55, return_word_label=True)),
    ("meeting_rate_0.8", [MEETING], dict(rate=0.8)),
    ("meeting_rate_0.9", [MEETING], dict(rate=0.9)),
    ("meeting_multi_target", MEETING.split("\n\n"),
     dict(target_token=40, use_context_level_filter=True, force_tokens=FORCE_MEETING)),
    ("gsm8k_target_digits", [GSM8K[0]], dict(target_token=120, force_tokens=FORCE_GSM8K, force_reserve_digit=True)),
    ("transcript_drop_consecutive", [TRANSCRIPT],
     dict(target_token=150, force_tokens=FORCE_MEETING, drop_consecutive=True, return_word_label=True)),
    ("gsm8k_multi_filter", GSM8K,
     dict(target_token=150, use_context_level_filter=True, force_tokens=FORCE_GSM8K[:-1], force_reserve_digit=True,
          return_word_label=True)),
    ("first_context_rate", [MEETING, NEWS, TRANSCRIPT, RUSSIAN],
     dict(rate=0.5, token_to_word="first", use_context_level_filter=True, return_word_label=True)),
    ("long_chunked", [LONG], dict(rate=0.5, force_tokens=["\n", "."], return_word_label=True)),
    ("no_period_truncated", [NO_PERIOD], dict(rate=0.5, return_word_label=True)),
    ("rate_1", [MEETING, GSM8K[2]], dict(rate=1.0, return_word_label=True, force_tokens=["\n"])),
    ("non_latin", [CHINESE, RUSSIAN, ARABIC], dict(rate=0.5, use_context_level_filter=True, force_tokens=["。", "，"])),
]
PERCENTILE_CASES = [
    ([0.1, 0.9, 0.35, 0.35, 0.2, 0.75, 0.6], [0, 20, 33, 34, 45, 51, 66, 67, 68, 100]),
    ([0.597056, 0.299265, 0.331675, 0.691973, 0.992785, 0.102707, 0.977620, 0.5, 0.4], [10, 21, 46, 90, 91]),
]


def count_tokens(text: str) -> int:
    """Stand-in for len(tiktoken cl100k_base.encode(text)) (see the module docstring): ceil(utf8_bytes / 4)."""
    return (len(text.encode("utf-8")) + 3) // 4


# --- tokenizers ----------------------------------------------------------------------------------------------------


def train_lines():
    lines = []
    for text in CORPUS:
        lines.extend(line for line in text.split("\n") if line.strip())
    return lines * 3


def build_xlmr_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(
        vocab_size=1500,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        unk_token="<unk>",
        max_piece_length=12,
        show_progress=False,
    )
    tk.train_from_iterator(train_lines(), trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>", cls_token="<s>",
                    pad_token="<pad>", mask_token="<mask>")
    return PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=512, **specials), specials


def build_bert_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                               lowercase=False)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    trainer = trainers.WordPieceTrainer(
        vocab_size=1500,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tk.train_from_iterator(train_lines(), trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    specials = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    return PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=512, **specials), specials


def build_model(family: str, vocab_size: int, seed: int):
    from transformers import AutoModelForTokenClassification, BertConfig, XLMRobertaConfig

    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, num_labels=2, initializer_range=0.1, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    if family == "xlmr":
        config = XLMRobertaConfig(max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                  eos_token_id=2, layer_norm_eps=1e-5, **common)
    else:
        config = BertConfig(max_position_embeddings=512, type_vocab_size=2, pad_token_id=0, layer_norm_eps=1e-12,
                            **common)
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        # Hidden states are layer-normalised (unit variance over 32 dims): std 0.25 gives logit gaps of about 2.
        model.classifier.weight.normal_(0.0, 0.25)
        model.classifier.bias.zero_()
    return model


# --- the Python port of LLMLingua-2 --------------------------------------------------------------------------------


class Lingua2Port:
    """compress_prompt_llmlingua2 of llmlingua/prompt_compressor.py with the model as a function and the token
    counter as a parameter; `family` stands for the model-name tests ("xlm-roberta-large" / "bert-base-multilingual-
    cased" in model_name). Records every classified chunk and the smallest gap between a probability and the
    threshold it was compared with."""

    def __init__(self, tokenizer, family, logits_fn, count, max_batch_size=50, max_force_token=100):
        self.tokenizer = tokenizer
        self.family = family
        self.logits_fn = logits_fn
        self.count = count
        self.max_batch_size = max_batch_size
        self.max_seq_len = 512
        self.max_force_token = max_force_token
        self.added_tokens = [f"[NEW{i}]" for i in range(max_force_token)]
        t = tokenizer
        self.special_tokens = {x for x in (t.bos_token, t.eos_token, t.unk_token, t.sep_token, t.pad_token,
                                           t.cls_token, t.mask_token) if x is not None}
        self.chunks = {}
        self.margin = math.inf

    def _note(self, p, threshold):
        if float(p) != float(threshold):
            self.margin = min(self.margin, abs(float(p) - float(threshold)))

    # utils.py
    def is_begin_of_new_word(self, token, force_tokens, token_map):
        if self.family == "bert":
            if token.lstrip("##") in force_tokens or token.lstrip("##") in set(token_map.values()):
                return True
            return not token.startswith("##")
        if token in string.punctuation or token in force_tokens or token in set(token_map.values()):
            return True
        return token.startswith("▁")

    def get_pure_token(self, token):
        return token.lstrip("##") if self.family == "bert" else token.lstrip("▁")

    @staticmethod
    def replace_added_token(token, token_map):
        for ori_token, new_token in token_map.items():
            token = token.replace(new_token, ori_token)
        return token

    # TokenClfDataset (constructed without model_name: "[CLS]"/"[SEP]"/"[PAD]" strings) + the model
    def classify(self, chunk_list):
        todo = [c for c in dict.fromkeys(chunk_list) if c not in self.chunks]
        for b in range(0, len(todo), self.max_batch_size):
            batch = todo[b:b + self.max_batch_size]
            ids, masks = [], []
            for text in batch:
                tokenized = ["[CLS]"] + self.tokenizer.tokenize(text) + ["[SEP]"]
                if len(tokenized) > self.max_seq_len:
                    tokenized = tokenized[: self.max_seq_len]
                else:
                    tokenized = tokenized + ["[PAD]"] * (self.max_seq_len - len(tokenized))
                masks.append([1 if tok != "[PAD]" else 0 for tok in tokenized])
                ids.append(self.tokenizer.convert_tokens_to_ids(tokenized))
            ids_t = torch.tensor(ids, dtype=torch.long)
            mask_t = torch.tensor(masks, dtype=torch.long) == 1
            probs = F.softmax(self.logits_fn(ids_t, mask_t.long()), dim=-1)
            for j, text in enumerate(batch):
                active_probs = torch.masked_select(probs[j, :, 1], mask_t[j])
                active_ids = torch.masked_select(ids_t[j], mask_t[j])
                tokens = self.tokenizer.convert_ids_to_tokens(active_ids.tolist())
                self.chunks[text] = (tokens, [p for p in active_probs.cpu().numpy()], active_ids.tolist())
        return [self.chunks[c] for c in chunk_list]

    def __merge_token_to_word(self, tokens, token_probs, force_tokens, token_map, force_reserve_digit):
        words = []
        word_probs = []
        word_probs_no_force = []
        for token, prob in zip(tokens, token_probs):
            if token in self.special_tokens:
                continue
            elif self.is_begin_of_new_word(token, force_tokens, token_map):
                pure_token = self.get_pure_token(token)
                prob_no_force = prob
                if pure_token in force_tokens or pure_token in set(token_map.values()):
                    prob = 1.0
                token = self.replace_added_token(token, token_map)
                words.append(token)
                word_probs.append([1.0 if force_reserve_digit and bool(re.search(r"\d", token)) else prob])
                word_probs_no_force.append([prob_no_force])
            else:
                pure_token = self.get_pure_token(token)
                words[-1] += pure_token
                word_probs[-1].append(1.0 if force_reserve_digit and bool(re.search(r"\d", token)) else prob)
                word_probs_no_force[-1].append(prob_no_force)
        return words, word_probs, word_probs_no_force

    @staticmethod
    def __token_prob_to_word_prob(token_probs, convert_mode="mean"):
        if convert_mode == "mean":
            return [sum(p) / len(p) for p in token_probs]
        if convert_mode == "first":
            return [p[0] for p in token_probs]
        raise NotImplementedError()

    def __chunk_context(self, origin_text, chunk_end_tokens):
        max_len = self.max_seq_len - 2
        origin_list = []
        origin_tokens = self.tokenizer.tokenize(origin_text)
        n = len(origin_tokens)
        st = 0
        while st < n:
            if st + max_len > n - 1:
                chunk = self.tokenizer.convert_tokens_to_string(origin_tokens[st:n])
                origin_list.append(chunk)
                break
            else:
                ed = st + max_len
                for j in range(0, ed - st):
                    if origin_tokens[ed - j] in chunk_end_tokens:
                        ed = ed - j
                        break
                chunk = self.tokenizer.convert_tokens_to_string(origin_tokens[st: ed + 1])
                origin_list.append(chunk)
                st = ed + 1
        return origin_list

    def __get_context_prob(self, context_list, token_to_word="mean", force_tokens=[], token_map={},
                           force_reserve_digit=False):
        chunk_list = [c for chunks in context_list for c in chunks]
        chunk_probs = []
        chunk_words = []
        for tokens, token_probs, _ in self.classify(chunk_list):
            words, _, valid_token_probs_no_force = self.__merge_token_to_word(
                tokens, token_probs, force_tokens=force_tokens, token_map=token_map,
                force_reserve_digit=force_reserve_digit)
            word_probs_no_force = self.__token_prob_to_word_prob(valid_token_probs_no_force, convert_mode=token_to_word)
            if self.family == "xlmr":
                for i in range(len(words)):
                    words[i] = words[i].lstrip("▁")
            chunk_words.append(words)
            chunk_probs.append(word_probs_no_force)
        prev_idx = 0
        context_probs = []
        context_words = []
        for chunk_list in context_list:
            n_chunk = len(chunk_list)
            context_probs.append([])
            context_words.append([])
            for i in range(n_chunk):
                context_probs[-1].extend(chunk_probs[prev_idx + i])
                context_words[-1].extend(chunk_words[prev_idx + i])
            prev_idx = prev_idx + n_chunk
        context_probs = [sum(probs) / len(probs) for probs in context_probs]
        return context_probs, context_words

    def __compress(self, context_list, reduce_rate=0.5, token_to_word="mean", force_tokens=[], token_map={},
                   force_reserve_digit=False, drop_consecutive=False):
        def split_string_to_words(input_string):
            pattern = r'\b\w+\b|[<>=/!@#$%^&*()?":{}|\\`~;_+-]'
            return re.findall(pattern, input_string)

        if reduce_rate <= 0:
            words, word_labels = [], []
            for i in range(len(context_list)):
                chunk_list = context_list[i]
                chunk_words = []
                chunk_word_labels = []
                for j in range(len(chunk_list)):
                    for ori_token, new_token in token_map.items():
                        chunk_list[j] = chunk_list[j].replace(new_token, ori_token)
                    ws = split_string_to_words(chunk_list[j])
                    chunk_words.extend(ws)
                    chunk_word_labels.extend([1 for _ in range(len(ws))])
                context_list[i] = "".join(chunk_list)
                words.append(chunk_words)
                word_labels.append(chunk_word_labels)
            return context_list, words, word_labels

        chunk_list = [c for chunks in context_list for c in chunks]
        compressed_chunk_list = []
        word_list = []
        word_label_list = []
        for tokens, token_probs, _ in self.classify(chunk_list):
            words, valid_token_probs, _ = self.__merge_token_to_word(
                tokens=tokens, token_probs=token_probs, force_tokens=force_tokens, token_map=token_map,
                force_reserve_digit=force_reserve_digit)
            word_probs = self.__token_prob_to_word_prob(valid_token_probs, convert_mode=token_to_word)

            if drop_consecutive:
                threshold = np.percentile(word_probs, int(100 * reduce_rate))
                is_token_between = False
                prev = None
                for i, (word, word_prob) in enumerate(zip(words, word_probs)):
                    if word in force_tokens:
                        if is_token_between:
                            is_token_between = False
                        elif not is_token_between and word == prev:
                            word_probs[i] = 0.0
                        prev = word
                    else:
                        self._note(word_prob, threshold)
                        is_token_between |= word_prob > threshold

            new_token_probs = []
            for word, word_prob in zip(words, word_probs):
                num_token = self.count(word)
                new_token_probs.extend([word_prob for _ in range(num_token)])
            threshold = np.percentile(new_token_probs, int(100 * reduce_rate + 1))

            keep_words = []
            word_labels = []
            assert len(words) == len(word_probs)
            for word, word_prob in zip(words, word_probs):
                self._note(word_prob, threshold)
                if word_prob > threshold or (threshold == 1.0 and word_prob == threshold):
                    if drop_consecutive and word in force_tokens and len(keep_words) > 0 and keep_words[-1] == word:
                        word_labels.append(0)
                    else:
                        keep_words.append(word)
                        word_labels.append(1)
                else:
                    word_labels.append(0)
            keep_str = self.tokenizer.convert_tokens_to_string(keep_words)
            if self.family == "xlmr":
                for i in range(len(words)):
                    words[i] = words[i].lstrip("▁")
            compressed_chunk_list.append(keep_str)
            word_list.append(words[:])
            word_label_list.append(word_labels[:])

        compressed_context_list = []
        original_word_list = []
        original_word_label_list = []
        prev_idx = 0
        for chunk_list in context_list:
            n_chunk = len(chunk_list)
            compressed_context_list.append("".join(compressed_chunk_list[prev_idx: prev_idx + n_chunk]))
            original_word_list.append([])
            original_word_label_list.append([])
            for i in range(n_chunk):
                original_word_list[-1].extend(word_list[prev_idx + i])
                original_word_label_list[-1].extend(word_label_list[prev_idx + i])
            prev_idx = prev_idx + n_chunk
        return compressed_context_list, original_word_list, original_word_label_list

    def compress_prompt_llmlingua2(self, context, rate=0.5, target_token=-1, use_context_level_filter=False,
                                   use_token_level_filter=True, target_context=-1, context_level_rate=1.0,
                                   context_level_target_token=-1, force_context_ids=[], return_word_label=False,
                                   token_to_word="mean", force_tokens=[], force_reserve_digit=False,
                                   drop_consecutive=False, chunk_end_tokens=[".", "\n"]):
        assert len(force_tokens) <= self.max_force_token
        token_map = {}
        for i, t in enumerate(force_tokens):
            if len(self.tokenizer.tokenize(t)) != 1:
                token_map[t] = self.added_tokens[i]
        chunk_end_tokens = copy.deepcopy(chunk_end_tokens)
        for c in chunk_end_tokens:
            if c in token_map:
                chunk_end_tokens.append(token_map[c])
        chunk_end_tokens = set(chunk_end_tokens)

        if type(context) == str:
            context = [context]
        context = copy.deepcopy(context)

        if len(context) == 1 and use_context_level_filter:
            use_context_level_filter = False

        n_original_token = 0
        context_chunked = []
        for i in range(len(context)):
            n_original_token += self.count(context[i])
            for ori_token, new_token in token_map.items():
                context[i] = context[i].replace(ori_token, new_token)
            context_chunked.append(self.__chunk_context(context[i], chunk_end_tokens=chunk_end_tokens))

        kept = list(range(len(context)))
        if use_context_level_filter:
            if target_context <= 0 and context_level_rate >= 1.0 and context_level_target_token <= 0:
                if target_token < 0 and rate < 1.0:
                    context_level_rate = (rate + 1.0) / 2 if use_token_level_filter else rate
                if target_token >= 0:
                    context_level_target_token = target_token * 2 if use_token_level_filter else target_token
            if target_context >= 0:
                context_level_rate = min(target_context / len(context), 1.0)
            if context_level_target_token >= 0:
                context_level_rate = min(context_level_target_token / n_original_token, 1.0)

            context_probs, context_words = self.__get_context_prob(
                context_chunked, token_to_word=token_to_word, force_tokens=force_tokens, token_map=token_map,
                force_reserve_digit=force_reserve_digit)
            threshold = np.percentile(context_probs, int(100 * (1 - context_level_rate)))

            reserved_context = []
            context_label = [False] * len(context_probs)
            kept = []
            for i, p in enumerate(context_probs):
                self._note(p, threshold)
                if p >= threshold or (force_context_ids is not None and i in force_context_ids):
                    reserved_context.append(context_chunked[i])
                    context_label[i] = True
                    kept.append(i)
            n_reserved_token = 0
            for chunks in reserved_context:
                for c in chunks:
                    n_reserved_token += self.count(c)
            if target_token >= 0:
                rate = min(target_token / n_reserved_token, 1.0)

            compressed_context, word_list, word_label_list = self.__compress(
                reserved_context, reduce_rate=max(0, 1 - rate) if use_token_level_filter else 0,
                token_to_word=token_to_word, force_tokens=force_tokens, token_map=token_map,
                force_reserve_digit=force_reserve_digit, drop_consecutive=drop_consecutive)
            words, labels = [], []
            j = 0
            for i in range(len(context)):
                if context_label[i]:
                    words.extend(word_list[j])
                    labels.extend(word_label_list[j])
                    j += 1
                else:
                    words.extend(context_words[i])
                    labels.extend([0] * len(context_words[i]))
        else:
            if target_token > 0:
                rate = min(target_token / n_original_token, 1.0)
            compressed_context, word_list, word_label_list = self.__compress(
                context_chunked, reduce_rate=max(0, 1 - rate) if use_token_level_filter else 0,
                token_to_word=token_to_word, force_tokens=force_tokens, token_map=token_map,
                force_reserve_digit=force_reserve_digit, drop_consecutive=drop_consecutive)
            words = [w for ws in word_list for w in ws]
            labels = [x for xs in word_label_list for x in xs]

        n_compressed_token = sum(self.count(c) for c in compressed_context)
        res = {
            "compressed_prompt": "\n\n".join(compressed_context),
            "compressed_prompt_list": compressed_context,
            "kept_contexts": kept,
            "origin_tokens": n_original_token,
            "compressed_tokens": n_compressed_token,
        }
        if return_word_label:
            res["word_labels"] = [[w, int(x)] for w, x in zip(words, labels)]
        return res


# --- main ----------------------------------------------------------------------------------------------------------


def camel(options):
    return {re.sub(r"_(\w)", lambda m: m.group(1).upper(), k): v for k, v in options.items()}


def percentile_goldens():
    out = []
    for values, qs in PERCENTILE_CASES:
        v32 = [np.float32(v) for v in values]
        mixed = v32[:-1] + [1.0]
        for q in qs:
            out.append({"values": [float(v) for v in v32], "q": q, "dtype": "float32",
                        "result": float(np.percentile(v32, q))})
            out.append({"values": [float(v) for v in mixed], "q": q, "dtype": "float64",
                        "result": float(np.percentile(mixed, q))})
    return out


def make_family(family: str, out_dir: str, seed: int):
    import onnxruntime
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast, specials = build_xlmr_tokenizer() if family == "xlmr" else build_bert_tokenizer()
    model = build_model(family, len(fast), seed)
    add_llmlingua_tokens(fast, model)
    d = os.path.join(out_dir, family)
    os.makedirs(d, exist_ok=True)
    model.config.save_pretrained(d)
    save_tokenizer_files(fast, d)
    # edgemix reads the special tokens from tokenizer_config.json: make sure they are there.
    cfg_path = os.path.join(d, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update({k: v for k, v in specials.items() if not isinstance(cfg.get(k), str)})
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
    onnx_path = export_onnx(model, os.path.join(d, "onnx"))

    # The tokenizer exactly as tokenizer.json describes it (what edgemix runs), with the special tokens named.
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), model_max_length=512,
                                        **specials)
    raw = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    for text in TOKENIZE_CASES + CORPUS:
        got, want = tokenizer.tokenize(text), raw.encode(text, add_special_tokens=False).tokens
        assert got == want, f"tokenize({text!r}) gives {got}, tokenizer.json gives {want}"
    assert len(tokenizer) == len(fast) and tokenizer.convert_tokens_to_ids("[NEW99]") == len(fast) - 1
    probe = [tokenizer.convert_tokens_to_ids(["[CLS]"] + tokenizer.tokenize(t)[:20] + ["[SEP]"]) for t in CORPUS[:3]]
    width = max(len(p) for p in probe)
    ids = torch.tensor([p + [tokenizer.pad_token_id] * (width - len(p)) for p in probe])
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in probe])
    diff = check_onnx(onnx_path, model, ids, mask)

    def torch_logits(ids_t, mask_t):
        with torch.no_grad():
            return model(input_ids=ids_t, attention_mask=mask_t).logits.float()

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])

    def ort_logits(ids_t, mask_t):
        out = session.run(["logits"], {"input_ids": ids_t.numpy(), "attention_mask": mask_t.numpy()})[0]
        return torch.from_numpy(out)

    port = Lingua2Port(tokenizer, family, torch_logits, count_tokens)
    port_ort = Lingua2Port(tokenizer, family, ort_logits, count_tokens)
    cases = []
    for name, contexts, options in CASES:
        port.margin = math.inf
        result = port.compress_prompt_llmlingua2(copy.deepcopy(contexts), **options)
        result_ort = port_ort.compress_prompt_llmlingua2(copy.deepcopy(contexts), **options)
        cases.append({"name": name, "contexts": contexts, "options": camel(options), "expected": result,
                      "margin": port.margin if math.isfinite(port.margin) else 1.0,
                      "onnxruntimeAgrees": result == result_ort})
        print(f"  {family} {name}: {result['origin_tokens']} -> {result['compressed_tokens']} "
              f"(margin {port.margin:.2e}, onnxruntime {'agrees' if result == result_ort else 'DIFFERS'})")
    chunks = [{"text": text, "tokens": tokens, "probs": [float(p) for p in probs]}
              for text, (tokens, probs, _) in port.chunks.items()]
    tokenize = [{"text": t, "tokens": tokenizer.tokenize(t)} for t in TOKENIZE_CASES]
    decode = [{"tokens": c["tokens"][1:-1], "text": tokenizer.convert_tokens_to_string(c["tokens"][1:-1])}
              for c in chunks[:4]]
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    print(f"wrote {d}: vocab {len(tokenizer)}, {size / 1024:.0f} KiB, max |onnxruntime - torch| logit {diff:.1e}")
    return {"dir": family, "seed": seed, "vocabSize": len(tokenizer), "tokenize": tokenize, "decode": decode,
            "chunks": chunks, "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="fixtures/compressor")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    import onnx
    import onnxruntime
    import tokenizers
    import transformers

    torch.set_num_threads(min(8, os.cpu_count() or 1))
    os.makedirs(args.out, exist_ok=True)
    golden = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "count": "ceil(utf8 bytes / 4)",
        "percentile": percentile_goldens(),
        "families": {},
    }
    for i, family in enumerate(["xlmr", "bert"]):
        golden["families"][family] = make_family(family, args.out, args.seed + i)
    path = os.path.join(args.out, "golden.json")
    with open(path, "w") as f:
        json.dump(golden, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
