#!/usr/bin/env python3
"""Trains edgemix's default prompt compressor: a tiny XLM-RoBERTa token classifier (LLMLingua-2 style, label 1 =
keep, 0 = drop) on the gold keep labels of the synthetic world (fact-bearing words keep, filler drops), and
exports it to ONNX in the transformers.js layout.

Run from the repository root on a GPU host (torch 2.11, transformers 5.17, tokenizers 0.23, onnx,
onnxruntime; no network):

    python3 tools/train_compressor.py --dry-run      # tiny sizes, a few seconds: checks every step
    python3 tools/train_compressor.py                # the real run: fixtures/compressor/default/

What it does:
 1. reads fixtures/world/compressor_train.jsonl (documents as word lists with keep labels, some held out);
 2. trains an XLM-R style SentencePiece-Unigram tokenizer with `tokenizers` ("▁" metaspace, NFKC, special
    tokens <s>=0 <pad>=1 </s>=2 <unk>=3 and <mask> last, post-processor "<s> $A </s>");
 3. labels every token with the label of the word its characters belong to (a lone "▁" takes the next word's);
 4. trains XLMRobertaForTokenClassification (hidden 128, 3 layers) for --minutes (bf16 autocast, AdamW, cosine
    on the elapsed time); a quarter of the sequences are wrapped in <unk> ... <unk> instead of <s> ... </s>,
    as the reference LLMLingua-2 code feeds XLM-R models at inference;
 5. prints token and word accuracy on the held-out documents, and how many gold-kept words survive when the
    top-ranked words are kept at the gold rate;
 6. exports onnx/model.onnx (inputs input_ids and attention_mask, output logits [batch, sequence, 2]), checks
    onnxruntime against torch on padded and unpadded batches, and writes config.json, tokenizer.json,
    tokenizer_config.json and golden.json (a few texts with their ids and torch logits for parity tests).
"""

import argparse
import json
import math
import os
import random
import shutil
import string
import sys
import time

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForTokenClassification, XLMRobertaConfig

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
BOS, PAD, EOS, UNK = 0, 1, 2, 3
PUNCTUATION = {".", ",", ";", ":", "!", "?"}
MAX_BYTES = 10 * 1024 * 1024
MAX_LEN = 512


def log(msg: str) -> None:
    print(msg, flush=True)


def read_jsonl(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def join_with_spans(words: list) -> tuple:
    """The text of the words (as tools/world joins them) and each word's [start, end) character span."""
    text = ""
    spans = []
    for w in words:
        if text and w not in PUNCTUATION:
            text += " "
        spans.append((len(text), len(text) + len(w)))
        text += w
    return text, spans


# ---------------------------------------------------------------------------------------------------------
# Tokenizer and labels
# ---------------------------------------------------------------------------------------------------------


def train_tokenizer(texts: list, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        unk_token="<unk>",
        show_progress=False,
    )
    # Every printable ASCII character, so that text outside the world still maps to pieces, not <unk>.
    alphabet = [" ".join(string.ascii_letters + string.digits + string.punctuation)] * 20
    tok.train_from_iterator(texts + alphabet, trainer=trainer)
    tok.add_special_tokens(["<mask>"])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, f"{s} has id {tok.token_to_id(s)}, expected {i}"
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", BOS), ("</s>", EOS)],
    )
    return tok


def token_labels(tok: Tokenizer, words: list, labels: str) -> tuple:
    """(ids [n], token labels [n] with -100 on special tokens, word index of each token or -1)."""
    text, spans = join_with_spans(words)
    # Each character belongs to a word; a space belongs to the word after it.
    owner = [-1] * (len(text) + 1)
    for w, (s, e) in enumerate(spans):
        for c in range(s, e):
            owner[c] = w
        if s > 0 and text[s - 1] == " ":
            owner[s - 1] = w
    enc = tok.encode(text)
    ids, tlabels, twords = [], [], []
    for tid, (s, e), special in zip(enc.ids, enc.offsets, enc.special_tokens_mask):
        ids.append(tid)
        if special:
            tlabels.append(-100)
            twords.append(-1)
            continue
        # The last character of the piece is a character of its word; an empty span (the "▁" prepended to the
        # first word) belongs to the word at its position.
        c = e - 1 if e > s else s
        w = owner[min(c, len(text) - 1)]
        if w < 0:
            w = 0
        tlabels.append(int(labels[w]))
        twords.append(w)
    assert ids[0] == BOS and ids[-1] == EOS, "the post-processor must wrap the text in <s> ... </s>"
    return ids, tlabels, twords


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------


def build_model(args, vocab_size: int):
    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.hidden * 4,
        max_position_embeddings=MAX_LEN + 2,
        type_vocab_size=1,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        num_labels=2,
        id2label={0: "LABEL_0", 1: "LABEL_1"},
        label2id={"LABEL_0": 0, "LABEL_1": 1},
    )
    config.architectures = ["XLMRobertaForTokenClassification"]
    torch.manual_seed(args.seed)
    return AutoModelForTokenClassification.from_config(config, attn_implementation="eager")


def batches(examples: list, batch: int, rng: random.Random, unk_share: float) -> list:
    """Padded batches (ids, attention mask, labels), int64 [b, n], in random order."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    out = []
    for i in range(0, len(order), batch):
        members = [examples[j] for j in order[i:i + batch]]
        n = max(len(m[0]) for m in members)
        ids = np.full((len(members), n), PAD, dtype=np.int64)
        mask = np.zeros((len(members), n), dtype=np.int64)
        labels = np.full((len(members), n), -100, dtype=np.int64)
        for r, (x, y, _) in enumerate(members):
            ids[r, :len(x)] = x
            mask[r, :len(x)] = 1
            labels[r, :len(y)] = y
            if rng.random() < unk_share:
                ids[r, 0] = UNK
                ids[r, len(x) - 1] = UNK
        out.append((torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels)))
    return out


@torch.no_grad()
def keep_probs(model, examples: list, device) -> list:
    """P(keep) of every token of each example, float32 [n] each."""
    model.eval()
    out = []
    for i in range(0, len(examples), 64):
        chunk = examples[i:i + 64]
        n = max(len(x) for x, _, _ in chunk)
        ids = torch.full((len(chunk), n), PAD, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        for r, (x, _, _) in enumerate(chunk):
            ids[r, :len(x)] = torch.tensor(x)
            mask[r, :len(x)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        probs = torch.softmax(logits, dim=-1)[..., 1].cpu().numpy()
        out += [probs[r, :len(x)] for r, (x, _, _) in enumerate(chunk)]
    model.train()
    return out


def evaluate(model, examples: list, device) -> dict:
    """Token accuracy, word accuracy (mean of the word's token probabilities > 0.5, as LLMLingua-2 merges
    pieces), and the share of gold-kept words among the top-ranked words at the gold keep rate."""
    probs = keep_probs(model, examples, device)
    tok_ok = tok_n = word_ok = word_n = top_ok = top_n = 0
    for (ids, labels, words), p in zip(examples, probs):
        per_word: dict = {}
        gold: dict = {}
        for t, (y, w) in enumerate(zip(labels, words)):
            if y < 0:
                continue
            tok_n += 1
            tok_ok += int((p[t] > 0.5) == (y == 1))
            per_word.setdefault(w, []).append(float(p[t]))
            gold[w] = y
        scores = {w: sum(v) / len(v) for w, v in per_word.items()}
        for w, s in scores.items():
            word_n += 1
            word_ok += int((s > 0.5) == (gold[w] == 1))
        k = sum(gold.values())
        ranked = sorted(scores, key=lambda w: -scores[w])[:k]
        top_ok += sum(gold[w] for w in ranked)
        top_n += k
    return {
        "token_accuracy": round(tok_ok / max(1, tok_n), 4),
        "word_accuracy": round(word_ok / max(1, word_n), 4),
        "gold_rate_recall": round(top_ok / max(1, top_n), 4),
        "documents": len(examples),
    }


# ---------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------


class LogitsOnly(torch.nn.Module):
    """The classifier with plain tensor inputs and the logits as its only output, for the ONNX exporter."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model, path: str, sample: list) -> str:
    """Exports to `path`; returns the exporter used. Traced on a padded batch so that the graph keeps the
    attention mask, with dynamic batch and sequence axes."""
    import onnx

    model = model.to("cpu").float().eval()
    wrapper = LogitsOnly(model).eval()
    ids = torch.full((2, 24), PAD, dtype=torch.long)
    mask = torch.zeros((2, 24), dtype=torch.long)
    for r, n in enumerate([24, 15]):
        x = sample[r % len(sample)][0][:n]
        x = x[:-1] + [EOS] if len(x) == n else x
        ids[r, :len(x)] = torch.tensor(x)
        mask[r, :len(x)] = 1
    kwargs = dict(
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={
            "input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"},
        },
    )
    used = "torch.onnx.export(dynamo=False)"
    try:
        with torch.no_grad():
            torch.onnx.export(wrapper, (ids, mask), path, dynamo=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - fall back to the other exporter, then fail loudly
        log(f"the TorchScript ONNX exporter failed ({type(e).__name__}: {e}); trying dynamo=True")
        used = "torch.onnx.export(dynamo=True)"
        with torch.no_grad():
            torch.onnx.export(wrapper, (ids, mask), path, dynamo=True, external_data=False, **kwargs)
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    names = [i.name for i in graph.graph.input]
    assert names == ["input_ids", "attention_mask"], f"the ONNX graph has inputs {names}"
    assert [o.name for o in graph.graph.output] == ["logits"]
    return used


def check_onnx(model, path: str, examples: list) -> float:
    """Largest |logit difference| between onnxruntime and torch (f32, CPU) over real positions of a padded
    batch of three documents and of one unpadded document."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    model = model.to("cpu").float().eval()
    worst = 0.0
    for group in [examples[:3], examples[3:4]]:
        n = max(len(x) for x, _, _ in group)
        ids = np.full((len(group), n), PAD, dtype=np.int64)
        mask = np.zeros((len(group), n), dtype=np.int64)
        for r, (x, _, _) in enumerate(group):
            ids[r, :len(x)] = x
            mask[r, :len(x)] = 1
        (got,) = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
        with torch.no_grad():
            ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
        assert got.shape == ref.shape == (len(group), n, 2), (got.shape, ref.shape)
        valid = mask.astype(bool)
        worst = max(worst, float(np.abs(got[valid] - ref[valid]).max()))
    return worst


def write_tokenizer_files(tok: Tokenizer, out: str) -> None:
    tok.save(os.path.join(out, "tokenizer.json"))
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "model_max_length": MAX_LEN,
        "clean_up_tokenization_spaces": False,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------


def lr_at(frac: float, peak: float, warmup: float) -> float:
    if frac < warmup:
        return peak * max(frac / warmup, 0.01)
    progress = min(1.0, (frac - warmup) / max(1e-9, 1.0 - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def main() -> None:
    ap = argparse.ArgumentParser(description="Trains edgemix's default compressor (see the module docstring).")
    ap.add_argument("--world", default="fixtures/world")
    ap.add_argument("--out", default=None, help="default fixtures/compressor/default (dry run: a temp dir)")
    ap.add_argument("--minutes", type=float, default=3.0, help="wall-clock training budget (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: time only)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, a few seconds, writes to a temp dir")
    args = ap.parse_args()
    if args.dry_run:
        args.vocab, args.hidden, args.layers, args.heads = 600, 32, 1, 2
        args.minutes, args.max_steps = min(args.minutes, 0.3), 20
        args.out = args.out or os.path.join(os.environ.get("TMPDIR", "/tmp"), "edgemix_compressor_dry_run")
    args.out = args.out or "fixtures/compressor/default"

    t_start = time.time()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = os.path.join(args.world, "compressor_train.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"cannot train the compressor: {path} is missing; run "
                         f"`python3 tools/world/generate.py --seed 0 --out {args.world}` first")
    rows = read_jsonl(path)
    if args.dry_run:
        rows = rows[:300]
    train_rows = [r for r in rows if not r["heldout"]]
    held_rows = [r for r in rows if r["heldout"]]
    assert train_rows and held_rows, "compressor_train.jsonl needs training and held-out documents"
    texts = [join_with_spans(r["words"])[0] for r in rows]
    log(f"device {device}; {len(train_rows)} training and {len(held_rows)} held-out documents")

    tok = train_tokenizer(texts, args.vocab)
    vocab_size = tok.get_vocab_size()
    log(f"tokenizer: Unigram, {vocab_size} pieces; sample {tok.encode(texts[0]).tokens[:14]}")

    def encode(rs: list) -> list:
        out = []
        for r in rs:
            ids, labels, words = token_labels(tok, r["words"], r["labels"])
            assert len(ids) <= MAX_LEN, f"{r['id']} has {len(ids)} tokens, more than {MAX_LEN}"
            out.append((ids, labels, words))
        return out

    train_ex, held_ex = encode(train_rows), encode(held_rows)
    n_tok = sum(len(x) for x, _, _ in train_ex)
    keep = sum(sum(1 for y in ys if y == 1) for _, ys, _ in train_ex) / max(1, sum(
        sum(1 for y in ys if y >= 0) for _, ys, _ in train_ex))
    log(f"data: {n_tok} training tokens, {keep:.1%} labelled keep")

    model = build_model(args, vocab_size).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: XLM-RoBERTa token classifier, hidden {args.hidden}, {args.layers} layers, "
        f"{n_params / 1e6:.2f}M parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = random.Random(f"compressor:{args.seed}")
    budget = args.minutes * 60.0
    t_train = time.time()
    step = epoch = 0
    done = False
    model.train()
    while not done:
        for ids, mask, labels in batches(train_ex, args.batch, rng, 0.25):
            frac = (time.time() - t_train) / budget
            if frac >= 1.0 or (args.max_steps and step >= args.max_steps):
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(frac, args.lr, 0.05)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % 100 == 0 or step == 1:
                log(f"step {step:5d} epoch {epoch:3d} loss {out.loss.item():.4f} "
                    f"lr {opt.param_groups[0]['lr']:.2e} elapsed {time.time() - t_train:.0f}s")
        epoch += 1
        if epoch % 5 == 0 and not done:
            log(f"epoch {epoch}: held-out {evaluate(model, held_ex[:100], device)}")
    log(f"trained {step} steps, {epoch} epochs in {time.time() - t_train:.0f}s")

    model.eval()
    metrics = evaluate(model, held_ex, device)
    log(f"held-out: token accuracy {metrics['token_accuracy']:.4f}, word accuracy {metrics['word_accuracy']:.4f}, "
        f"gold-rate recall {metrics['gold_rate_recall']:.4f} over {metrics['documents']} documents")

    out = args.out
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "onnx"))
    model = model.to("cpu").float().eval()
    model.config.save_pretrained(out)
    write_tokenizer_files(tok, out)
    onnx_path = os.path.join(out, "onnx", "model.onnx")
    exporter = export_onnx(model, onnx_path, held_ex)
    diff = check_onnx(model, onnx_path, held_ex)
    log(f"ONNX ({exporter}): max |logit difference| vs torch {diff:.2e}")
    assert diff < 1e-3, f"onnxruntime disagrees with torch by {diff}"

    # The tokenizer must load in transformers as well (AutoTokenizer), with the same ids.
    try:
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(out)
        same = hf(texts[0])["input_ids"] == tok.encode(texts[0]).ids
        log(f"AutoTokenizer loads {out}: {type(hf).__name__}, same ids: {same}")
    except Exception as e:  # noqa: BLE001 - informative only; transformers.js reads tokenizer.json itself
        log(f"warning: AutoTokenizer could not load {out}: {type(e).__name__}: {e}")

    golden_texts = [join_with_spans(r["words"])[0] for r in held_rows[:2]] + [
        "The quick brown fox jumps over the lazy dog. Numbers like 1854 and 4213 stay.",
    ]
    golden = []
    with torch.no_grad():
        for text in golden_texts:
            ids = tok.encode(text).ids
            logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            golden.append({"text": text, "input_ids": ids,
                           "logits": [[round(float(v), 5) for v in row] for row in logits.logits[0]]})
    report = {
        "generator": "tools/train_compressor.py",
        "args": vars(args),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "parameters": n_params,
        "steps": step,
        "epochs": epoch,
        "exporter": exporter,
        "onnx_max_abs_diff": diff,
        "heldout": metrics,
        "cases": golden,
    }
    with open(os.path.join(out, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs)
    files = sorted(os.path.relpath(os.path.join(dp, f), out) for dp, _, fs in os.walk(out) for f in fs)
    log(f"wrote {out}: {files}, {size / 1e6:.2f} MB; done in {time.time() - t_start:.0f}s")
    assert size < MAX_BYTES, f"{out} holds {size} bytes, more than {MAX_BYTES}"


if __name__ == "__main__":
    sys.exit(main())
