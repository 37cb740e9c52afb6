#!/usr/bin/env python3
"""Trains edgemix's default reader: a small Mixtral (8 experts, top-2, about 12.6M parameters) that answers
questions about the synthetic world of tools/world, from memory (parametric facts) and from context passages
(fresh and updated facts), and saves it where `serve` finds it.

Run from the repository root on a GPU host (torch 2.11, transformers 5.17, tokenizers 0.23; no network):

    python3 tools/train_reader.py --dry-run          # tiny sizes, a few seconds: checks every step
    python3 tools/train_reader.py                    # the real run (7 min of training, ~8.5 min in all)

What it does:
 1. reads fixtures/world (generate it with `python3 tools/world/generate.py --seed 0 --out fixtures/world`);
 2. trains a byte-level BPE tokenizer (ChatML special tokens <|endoftext|> <|im_start|> <|im_end|>) on the
    world's text with `tokenizers`;
 3. builds a MixtralForCausalLM from a MixtralConfig (tied embeddings) and checks it has at most 15M parameters;
 4. trains it for --minutes of wall-clock time (bf16 autocast, AdamW, warm-up then cosine decay on the elapsed
    fraction of the time budget, router load-balancing loss) on packed rows of the training text (every token
    scored) and of QA pairs rendered through the chat template (only the answer and <|im_end|> scored);
 5. measures exact match on held-out questions without context, with context, and with compressed context;
 6. saves the model in f16 safetensors with tokenizer.json, tokenizer_config.json (with the chat template),
    chat_template.jinja, generation_config.json, README.md and train_report.json, reloads it with
    transformers and checks that the reloaded logits match.

The prompt format the reader is trained on (the serve pipeline must use the same):
    user message without context:  "{question}" or "Question: {question}"
    user message with context:     "Context:\\n{passage 1}\\n\\n{passage 2}\\n\\nQuestion: {question}"
    answer:                        the short answer, then <|im_end|>
rendered with the ChatML chat template (an optional system message is accepted).
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import string
import sys
import time

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, GenerationConfig, MixtralConfig, PreTrainedTokenizerFast

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "Answer the question with a short phrase.",
    "Answer briefly, using the context when it is given.",
]
PUNCTUATION = {".", ",", ";", ":", "!", "?"}
MAX_PARAMETERS = 15_000_000
MAX_BYTES = 35 * 1024 * 1024


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def read_jsonl(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def join_words(words: list) -> str:
    parts = []
    for w in words:
        if parts and w in PUNCTUATION:
            parts[-1] += w
        else:
            parts.append(w)
    return " ".join(parts)


class World:
    def __init__(self, root: str):
        for name in ["documents.jsonl", "questions.jsonl", "train_text.txt", "train_qa.jsonl",
                     "compressor_train.jsonl"]:
            if not os.path.exists(os.path.join(root, name)):
                raise SystemExit(f"cannot train the reader: {root}/{name} is missing; run "
                                 f"`python3 tools/world/generate.py --seed 0 --out {root}` first")
        self.documents = {d["id"]: d["text"] for d in read_jsonl(os.path.join(root, "documents.jsonl"))}
        self.questions = read_jsonl(os.path.join(root, "questions.jsonl"))
        with open(os.path.join(root, "train_text.txt"), encoding="utf-8") as f:
            self.train_text = [line.rstrip("\n") for line in f if line.strip()]
        self.train_qa = read_jsonl(os.path.join(root, "train_qa.jsonl"))
        self.labels = {c["id"]: (c["words"], c["labels"])
                       for c in read_jsonl(os.path.join(root, "compressor_train.jsonl"))}
        assert set(self.labels) == set(self.documents), "compressor labels and documents disagree"

    def compressed(self, doc_id: str, rng: random.Random) -> str:
        """The document with its filler words dropped, keeping a random share of them (as a real compressor
        at rates between the gold one and 0.5 would)."""
        words, labels = self.labels[doc_id]
        extra = rng.uniform(0.0, 0.35)
        return join_words([w for w, k in zip(words, labels) if k == "1" or rng.random() < extra])


def user_content(question: str, passages: list, rng: random.Random | None) -> str:
    """The user message. With an rng the format varies as in training; without, the canonical form."""
    if not passages:
        if rng is not None and rng.random() < 0.5:
            return question
        return f"Question: {question}"
    if rng is not None and rng.random() < 0.3:
        passages = [f"[{i + 1}] {p}" for i, p in enumerate(passages)]
    return "Context:\n" + "\n\n".join(passages) + f"\n\nQuestion: {question}"


def messages_for(question: str, passages: list, rng: random.Random | None) -> list:
    msgs = []
    if rng is not None and rng.random() < 0.25:
        msgs.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    msgs.append({"role": "user", "content": user_content(question, passages, rng)})
    return msgs


def render_prompt(tok: PreTrainedTokenizerFast, msgs: list) -> str:
    """The ChatML prompt of `msgs` with the assistant's turn opened: what CHATML_TEMPLATE renders (checked by
    check_chat_template), written out because rendering Jinja for every training example is slow."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs) + "<|im_start|>assistant\n"


def check_chat_template(tok: PreTrainedTokenizerFast) -> None:
    """The tokenizer's chat template renders exactly what render_prompt writes."""
    rng = random.Random(0)
    cases = [messages_for("Q?", [], None), messages_for("Who?", ["Doc one.", "Doc two."], None)]
    cases += [messages_for(f"Question {i}?", ["A passage."] * (i % 3), rng) for i in range(20)]
    for msgs in cases:
        want = render_prompt(tok, msgs)
        got = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert got == want, f"the chat template renders {got!r}, expected {want!r}"


def build_examples(world: World, tok: PreTrainedTokenizerFast, rng: random.Random, limit: int | None) -> list:
    """(ids int32 [n], labels int32 [n]) for every training line and QA pair; labels -100 where not scored."""
    eot, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    text = world.train_text[:limit] if limit else world.train_text
    qa = world.train_qa[:limit] if limit else world.train_qa
    prompts, answers = [], []
    for t in qa:
        passages = [world.compressed(d, rng) if t.get("compressed") else world.documents[d]
                    for d in t["context_ids"]]
        prompts.append(render_prompt(tok, messages_for(t["question"], passages, rng)))
        answers.append(t["answer"])
    enc_text = tok(text, add_special_tokens=False)["input_ids"]
    enc_prompts = tok(prompts, add_special_tokens=False)["input_ids"]
    enc_answers = tok(answers, add_special_tokens=False)["input_ids"]
    out = []
    for ids in enc_text:
        ids = ids + [eot]
        out.append((np.asarray(ids, dtype=np.int32), np.asarray(ids, dtype=np.int32)))
    for p, a in zip(enc_prompts, enc_answers):
        assert len(a) > 0, "an empty answer"
        ids = p + a + [im_end]
        labels = [-100] * len(p) + a + [im_end]
        out.append((np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32)))
    return out


def pack(examples: list, seq_len: int, pad: int, rng: random.Random) -> tuple:
    """Shuffles the examples and packs them greedily into rows of seq_len tokens without splitting one;
    returns (ids int64 [rows, seq_len], labels int64 [rows, seq_len], examples dropped as too long)."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    rows: list = []
    current: list = []
    used = 0
    dropped = 0
    for i in order:
        n = len(examples[i][0])
        if n > seq_len:
            dropped += 1
            continue
        if used + n > seq_len:
            rows.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        rows.append(current)
    ids = np.full((len(rows), seq_len), pad, dtype=np.int64)
    labels = np.full((len(rows), seq_len), -100, dtype=np.int64)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            x, y = examples[i]
            ids[r, at:at + len(x)] = x
            labels[r, at:at + len(y)] = y
            at += len(x)
    return ids, labels, dropped


# ---------------------------------------------------------------------------------------------------------
# Tokenizer and model
# ---------------------------------------------------------------------------------------------------------


def train_tokenizer(world: World, vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 / Qwen style) with the ChatML special tokens as ids 0, 1, 2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    scaffold = ["Context:\n", "Question: ", "\n\n", "assistant\n", "user\n", "system\n"] + SYSTEM_PROMPTS
    corpus = (world.train_text + list(world.documents.values()) + [q["question"] for q in world.questions]
              + [q["answer"] for q in world.questions] + scaffold * 50 + [string.printable] * 5)
    tok.train_from_iterator(corpus, trainer=trainer)
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, f"special token {s} has id {tok.token_to_id(s)}, expected {i}"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=2048,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_model(args, vocab_size: int, tok: PreTrainedTokenizerFast, tie: bool):
    eot, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    config = MixtralConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.expert_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        num_local_experts=args.experts,
        num_experts_per_tok=args.top_k,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=tie,
        sliding_window=None,
        router_aux_loss_coef=float(args.aux_coef),
        router_jitter_noise=0.0,
        output_router_logits=True,
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=eot,
    )
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def set_experts_impl(model, impl: str) -> None:
    try:
        model.set_experts_implementation(impl)
    except Exception as e:  # noqa: BLE001 - older or newer transformers: set the config field it reads
        log(f"set_experts_implementation({impl!r}) failed ({type(e).__name__}: {e}); setting the config field")
        model.config._experts_implementation = impl


def choose_experts_impl(model, x, y, device, requested: str) -> str:
    """The first experts implementation that runs forward and backward under autocast and agrees with eager."""
    if requested != "auto":
        set_experts_impl(model, requested)
        return requested
    losses = {}
    for impl in ["eager", "grouped_mm"]:
        try:
            set_experts_impl(model, impl)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(input_ids=x, labels=y, output_router_logits=True).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss {loss.item()}")
            losses[impl] = loss.item()
        except Exception as e:  # noqa: BLE001 - any failure means: do not use this implementation
            log(f"experts implementation {impl!r} is not usable here: {type(e).__name__}: {e}")
    if "eager" not in losses:
        raise SystemExit("cannot train: the eager experts implementation failed (see above)")
    chosen = "eager"
    if "grouped_mm" in losses and abs(losses["grouped_mm"] - losses["eager"]) < 2e-2 * abs(losses["eager"]):
        chosen = "grouped_mm"
    log(f"experts implementation: {chosen} (first-batch loss {losses})")
    set_experts_impl(model, chosen)
    return chosen


# ---------------------------------------------------------------------------------------------------------
# Exact match
# ---------------------------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """SQuAD normalization, as tools/world/exact_match.ts: lower case, no punctuation, no articles."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(pred: str, q: dict, answer_key: str = "answer") -> bool:
    gold = [q[answer_key]] + (q.get("aliases", []) if answer_key == "answer" else [])
    p = normalize(pred)
    return p != "" and any(normalize(g) == p for g in gold)


@torch.no_grad()
def generate_answers(model, tok, prompts: list, device, batch: int = 64) -> list:
    eot, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    tok.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        gen = model.generate(
            **enc,
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=[im_end, eot],
            pad_token_id=eot,
        )
        new = gen[:, enc["input_ids"].shape[1]:]
        out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return out


def evaluate(model, tok, world: World, device, per_split: int, seed: int) -> dict:
    """EM on held-out questions of each split: without context, with the gold document among two distractors,
    and with that context compressed to its kept words."""
    model.eval()
    rng = random.Random(f"eval:{seed}")
    doc_ids = list(world.documents)
    report = {}
    samples = []
    for split in ["parametric", "fresh", "conflicting"]:
        qs = [q for q in world.questions if q["heldout"] and q["split"] == split]
        qs = rng.sample(qs, min(per_split, len(qs)))
        contexts = []
        for q in qs:
            ctx = [q["doc_id"]] + [d for d in rng.sample(doc_ids, 3) if d != q["doc_id"]][:2]
            rng.shuffle(ctx)
            contexts.append(ctx)
        modes = {
            "no_context": [render_prompt(tok, messages_for(q["question"], [], None)) for q in qs],
            "context": [render_prompt(tok, messages_for(q["question"], [world.documents[d] for d in c], None))
                        for q, c in zip(qs, contexts)],
            "compressed_context": [
                render_prompt(tok, messages_for(
                    q["question"],
                    [join_words([w for w, k in zip(*world.labels[d]) if k == "1"]) for d in c], None))
                for q, c in zip(qs, contexts)],
        }
        for mode, prompts in modes.items():
            preds = generate_answers(model, tok, prompts, device)
            em = sum(exact_match(p, q) for p, q in zip(preds, qs)) / max(1, len(qs))
            report[f"{split}/{mode}"] = round(em, 4)
            if split == "conflicting" and mode == "no_context":
                old = sum(exact_match(p, q, "trained_answer") for p, q in zip(preds, qs)) / max(1, len(qs))
                report["conflicting/no_context_trained_answer"] = round(old, 4)
            samples += [{"split": split, "mode": mode, "question": q["question"], "gold": q["answer"],
                         "predicted": p} for p, q in list(zip(preds, qs))[:2]]
    model.train()
    return {"em": report, "n_per_split": per_split, "samples": samples}


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------


def lr_at(frac: float, peak: float, warmup: float) -> float:
    if frac < warmup:
        return peak * max(frac / warmup, 0.01)
    progress = min(1.0, (frac - warmup) / max(1e-9, 1.0 - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(args) -> None:
    t_start = time.time()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log(f"device {device}" + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""))

    world = World(args.world)
    log(f"world: {len(world.documents)} documents, {len(world.questions)} questions, "
        f"{len(world.train_text)} training lines, {len(world.train_qa)} QA pairs")

    tok = train_tokenizer(world, args.vocab)
    vocab_size = int(math.ceil(len(tok) / 64) * 64)
    log(f"tokenizer: {len(tok)} tokens (model vocabulary {vocab_size}); "
        f"sample: {tok.tokenize(world.train_text[0])[:16]}")
    check_chat_template(tok)

    model = build_model(args, vocab_size, tok, tie=True)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if not tied:
        log("tie_word_embeddings did not tie the LM head to the embedding; building an untied model instead")
        model = build_model(args, vocab_size, tok, tie=False)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: Mixtral, {args.layers} layers, hidden {args.hidden}, {args.experts} experts of width "
        f"{args.expert_size}, top-{args.top_k}, {n_params / 1e6:.2f}M parameters (tied: {tied})")
    assert n_params <= MAX_PARAMETERS, f"{n_params} parameters exceed {MAX_PARAMETERS}"
    model.to(device)
    model.train()

    rng = random.Random(f"data:{args.seed}")
    limit = 200 if args.dry_run else None
    variants = [build_examples(world, tok, rng, limit) for _ in range(1 if args.dry_run else 2)]
    n_tokens = sum(len(x) for x, _ in variants[0])
    n_scored = sum(int((y >= 0).sum()) for _, y in variants[0])
    log(f"data: {len(variants[0])} examples, {n_tokens} tokens ({n_scored} scored) per epoch, "
        f"{len(variants)} renderings; built in {time.time() - t_start:.1f}s")
    pad = tok.convert_tokens_to_ids("<|endoftext|>")

    ids, labels, dropped = pack(variants[0], args.seq_len, pad, rng)
    if dropped:
        log(f"warning: {dropped} examples are longer than {args.seq_len} tokens and are skipped")
    assert ids.shape[1] == args.seq_len and labels.shape == ids.shape
    x0 = torch.from_numpy(ids[: min(args.batch, len(ids))]).to(device)
    y0 = torch.from_numpy(labels[: min(args.batch, len(ids))]).to(device)
    impl = choose_experts_impl(model, x0, y0, device, args.experts_impl)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda",
    )

    budget = args.minutes * 60.0
    t_train = time.time()
    step, epoch, seen = 0, 0, 0
    last_log = t_train
    loss_ema = None
    history = []
    done = False
    while not done:
        if epoch > 0:
            ids, labels, _ = pack(variants[epoch % len(variants)], args.seq_len, pad, rng)
        ids_t = torch.from_numpy(ids).to(device, non_blocking=True)
        labels_t = torch.from_numpy(labels).to(device, non_blocking=True)
        for b in range(0, len(ids) - args.batch + 1 if len(ids) >= args.batch else 1, args.batch):
            frac = (time.time() - t_train) / budget
            if frac >= 1.0 or (args.max_steps and step >= args.max_steps):
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(frac, args.lr, args.warmup)
            x = ids_t[b:b + args.batch]
            y = labels_t[b:b + args.batch]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model(input_ids=x, labels=y, output_router_logits=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            seen += x.numel()
            if step % args.log_every == 0 or step == 1:
                loss = out.loss.item()
                loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
                aux = getattr(out, "aux_loss", None)
                now = time.time()
                log(f"step {step:5d} epoch {epoch:3d} loss {loss:.4f} (ema {loss_ema:.4f}) "
                    f"aux {float(aux) if aux is not None else float('nan'):.3f} grad {float(grad_norm):.2f} "
                    f"lr {opt.param_groups[0]['lr']:.2e} {seen / (now - t_train):,.0f} tok/s "
                    f"elapsed {now - t_train:.0f}s/{budget:.0f}s")
                history.append({"step": step, "epoch": epoch, "loss": round(loss, 4),
                                "elapsed_s": round(now - t_train, 1)})
                last_log = now
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.time() - t_train
    log(f"trained {step} steps, {epoch} epochs, {seen / 1e6:.1f}M tokens in {train_s:.0f}s "
        f"(last log {time.time() - last_log:.0f}s ago)")

    # Evaluate with the weights exactly as they will be stored (f16), computing in f32 with the reference
    # (eager) experts implementation, as users of the saved checkpoint will by default on any device.
    model.config.output_router_logits = False
    set_experts_impl(model, "eager")
    with torch.no_grad():
        big = max(float(p.abs().max()) for p in model.parameters())
        assert big < 60000, f"a weight of {big} does not fit f16"
        for p in model.parameters():
            p.copy_(p.to(torch.float16).to(torch.float32))
    report = evaluate(model, tok, world, device, 16 if args.dry_run else args.eval_n, args.seed)
    for k, v in report["em"].items():
        log(f"EM {k}: {v:.3f}")
    for s in report["samples"]:
        log(f"  [{s['split']}/{s['mode']}] {s['question']} -> {s['predicted']!r} (gold {s['gold']!r})")

    save(args, model, tok, {
        "generator": "tools/train_reader.py",
        "args": vars(args),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "parameters": n_params,
        "tied_embeddings": tied,
        "experts_implementation": impl,
        "steps": step,
        "epochs": epoch,
        "train_seconds": round(train_s, 1),
        "tokens_seen": seen,
        "loss_history": history,
        **report,
    }, device)
    log(f"done in {time.time() - t_start:.0f}s")


def save(args, model, tok, report: dict, device) -> None:
    out = args.out
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    eot, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    model.eval()
    model.generation_config = GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot)
    ref_ids = tok([render_prompt(tok, messages_for("Where was the first person born?", [], None))],
                  return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    with torch.no_grad():
        ref = model(input_ids=ref_ids).logits.float().cpu()
    model.to("cpu").to(torch.float16)
    model.config.dtype = "float16"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # Our engine reads chat_template.jinja first; other tools look for the template in tokenizer_config.json.
    cfg_path = os.path.join(out, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        tcfg = json.load(f)
    tcfg["chat_template"] = CHATML_TEMPLATE
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    if not os.path.exists(os.path.join(out, "chat_template.jinja")):
        with open(os.path.join(out, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(CHATML_TEMPLATE)
    if os.path.exists(os.path.join(out, "special_tokens_map.json")):
        os.remove(os.path.join(out, "special_tokens_map.json"))
    with open(os.path.join(out, "train_report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
        f.write("\n")
    write_model_card(out, report)

    # Reload exactly as a user would and compare the logits of the in-memory model.
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(device).eval()
    set_experts_impl(reloaded, "eager")
    with torch.no_grad():
        got = reloaded(input_ids=ref_ids).logits.float().cpu()
    diff = float((got - ref).abs().max())
    log(f"reloaded model: max |logit difference| {diff:.2e} (f16 storage of f16-rounded weights)")
    assert diff < 2e-2, f"the saved model does not reproduce the trained one (max difference {diff})"
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    for key in ["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "num_local_experts", "num_experts_per_tok", "intermediate_size", "vocab_size"]:
        assert key in cfg, f"config.json lacks {key}"
    assert cfg["model_type"] == "mixtral" and cfg.get("hidden_act", "silu") == "silu"
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    names = []
    for f in sorted(os.listdir(out)):
        if f.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(os.path.join(out, f), "pt") as st:
                keys = list(st.keys())
                dtypes = {str(st.get_tensor(k).dtype) for k in keys}
            names += keys
            log(f"{f}: {len(keys)} tensors, dtypes {sorted(dtypes)}")
            assert dtypes == {"torch.float16"}, f"{f} holds {dtypes}, expected float16 only"
    log(f"layer-0 tensors: {sorted(n for n in names if '.layers.0.' in n)[:12]} ...")
    log(f"wrote {out}: {sorted(os.listdir(out))}, {size / 1e6:.1f} MB")
    assert size < MAX_BYTES, f"{out} holds {size} bytes, more than {MAX_BYTES}"


def write_model_card(out: str, report: dict) -> None:
    em = report.get("em", {})
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in em.items())
    a = report["args"]
    text = f"""# edgemix default reader

A {report['parameters'] / 1e6:.1f}M-parameter Mixtral (Mixture of Experts: {a['experts']} experts, top-{a['top_k']},
{a['layers']} layers, hidden {a['hidden']}) trained from scratch by `tools/train_reader.py` on the synthetic world
of `tools/world` (seed 0): it knows the world's parametric facts, reads fresh and updated facts from context
passages, and answers in one to three words. It knows nothing else.

## Prompt format (ChatML)

- without context, user message: `{{question}}` or `Question: {{question}}`
- with context, user message: `Context:\\n{{passage 1}}\\n\\n{{passage 2}}\\n\\nQuestion: {{question}}`
- the answer follows `<|im_start|>assistant\\n` and ends with `<|im_end|>`; an optional system message is accepted.

## Exact match on held-out questions ({report['n_per_split']} per split, f16 weights)

| split / mode | EM |
| --- | --- |
{rows}

Trained {report['steps']} steps ({report['epochs']} epochs, {report['tokens_seen'] / 1e6:.0f}M tokens) in
{report['train_seconds']:.0f} s with torch {report['torch']} and transformers {report['transformers']}; details in
`train_report.json`.
"""
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)


def main() -> None:
    ap = argparse.ArgumentParser(description="Trains edgemix's default reader (see the module docstring).")
    ap.add_argument("--world", default="fixtures/world")
    ap.add_argument("--out", default=None, help="default fixtures/models/reader (dry run: a temp directory)")
    ap.add_argument("--minutes", type=float, default=7.0, help="wall-clock training budget (default 7)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=6144)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--expert-size", type=int, default=192)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64, help="rows of --seq-len tokens per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=float, default=0.03, help="share of the time budget")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--aux-coef", type=float, default=0.01, help="router load-balancing loss weight")
    ap.add_argument("--experts-impl", default="auto", choices=["auto", "eager", "grouped_mm", "batched_mm"])
    ap.add_argument("--eval-n", type=int, default=200, help="held-out questions per split for EM")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: time only)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, a few seconds, writes to a temp dir")
    args = ap.parse_args()
    if args.dry_run:
        args.vocab, args.hidden, args.layers, args.heads, args.kv_heads = 512, 64, 2, 4, 2
        args.expert_size, args.seq_len, args.batch = 64, 512, 8
        args.minutes, args.max_steps, args.log_every = min(args.minutes, 0.5), 20, 5
        args.out = args.out or os.path.join(os.environ.get("TMPDIR", "/tmp"), "edgemix_reader_dry_run")
    args.out = args.out or "fixtures/models/reader"
    train(args)


if __name__ == "__main__":
    sys.exit(main())
