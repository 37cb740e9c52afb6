#!/usr/bin/env python3
"""Writes the tiny Mixture-of-Experts fixtures that edgemix's tests use.

For each of the five supported architectures (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GraniteMoE) it builds a
random checkpoint with Hugging Face transformers, saves it in the Hugging Face layout (config.json,
tokenizer.json, tokenizer_config.json, safetensors single or sharded, f32 / f16 / bf16), and writes golden
outputs computed by transformers in float32 on the CPU:

  golden.json          prompt ids, a 24-token greedy continuation, tokenizer and chat-template cases
  golden.safetensors   logits [prompt + continuation, vocab] f32 from one forward pass

Seeds are searched until no router top-k boundary and no greedy arg-max is a near tie, so that a correct
implementation with float32 rounding differences reproduces the same expert choices and tokens.

Run (needs torch, transformers >= 5, tokenizers, safetensors; no network):
    python3 tools/make_fixtures.py --out fixtures/models
"""

import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GraniteMoeConfig,
    MixtralConfig,
    OlmoeConfig,
    PreTrainedTokenizerFast,
    Qwen2MoeConfig,
    Qwen3MoeConfig,
)

CORPUS = """
Mixture-of-experts language models route every token to a few small feed-forward networks.
A router scores the experts, keeps the top k, and mixes their outputs with the router weights.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!
Retrieval-augmented generation looks up passages in a knowledge base before it answers a question.
Prompt compression removes words that carry little information, so the model reads fewer tokens.
Key and value caches grow with the context; quantizing them saves memory on long conversations.
WebGPU exposes compute shaders written in WGSL; a kernel reads storage buffers and writes results.
Numbers like 3.14159, 2048 and 1e-5 appear in configs: hidden_size, rope_theta and rms_norm_eps.
Questions? Answers! Lists: one, two, three. Tabs\tand  double  spaces, newlines\nand unicode: café, naïve, 東京, 🚀.
def forward(x): return x * 2  # code also shows up in prompts
""".strip()

TOKENIZER_CASES = [
    "Hello world",
    "The router keeps the top k experts.",
    "  leading spaces and trailing  ",
    "café naïve 東京 🚀 emoji",
    "numbers 12345 and 3.14",
    "line one\nline two\n\nline four\ttab",
    "<|im_start|>user\nHi<|im_end|>",
    "",
]

CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is a mixture of experts?"},
    {"role": "assistant", "content": "Several small networks and a router."},
    {"role": "user", "content": "Why use one?"},
]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[SYS] ' + message['content'] + ' [/SYS]' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

PROMPT = "The router keeps the top k experts and mixes their outputs."
NEW_TOKENS = 24


def bytelevel_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2 / Qwen / OLMoE style byte-level BPE tokenizer with ChatML special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.split("\n") * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def metaspace_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A Llama / Mistral style BPE tokenizer: '▁' for spaces, byte fallback <0xXX>, BOS added by the post-processor."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS.split("\n") * 4, trainer=trainer)
    # Put the 256 byte-fallback tokens <0x00>..<0xFF> right after the special tokens, as Llama's vocab does.
    spec = json.loads(tok.to_str())
    old = spec["model"]["vocab"]
    vocab = {s: i for i, s in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(old.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    spec["model"]["vocab"] = vocab
    for added in spec["added_tokens"]:
        added["id"] = vocab[added["content"]]
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [vocab["<s>"]], "tokens": ["<s>"]}},
    }
    tok = Tokenizer.from_str(json.dumps(spec))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True
    )
    fast.chat_template = LLAMA_TEMPLATE
    return fast


def base_kwargs(vocab: int, eos: int, bos: int | None) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.1,
        max_position_embeddings=512,
        eos_token_id=eos,
        bos_token_id=bos,
        pad_token_id=eos,
    )


def architectures(tok_bl: PreTrainedTokenizerFast, tok_ms: PreTrainedTokenizerFast):
    """(name, config, tokenizer, save dtype, shard size) for each fixture."""
    v_bl, v_ms = len(tok_bl), len(tok_ms)
    eos_bl = tok_bl.convert_tokens_to_ids("<|endoftext|>")
    eos_ms, bos_ms = tok_ms.convert_tokens_to_ids("</s>"), tok_ms.convert_tokens_to_ids("<s>")
    yield (
        "mixtral",
        MixtralConfig(
            **base_kwargs(v_ms, eos_ms, bos_ms),
            intermediate_size=96,
            num_local_experts=8,
            num_experts_per_tok=2,
            rope_theta=1e6,
            rms_norm_eps=1e-5,
        ),
        tok_ms,
        torch.float32,
        "600KB",
    )
    yield (
        "qwen2_moe",
        Qwen2MoeConfig(
            **base_kwargs(v_bl, eos_bl, None),
            intermediate_size=80,
            moe_intermediate_size=48,
            shared_expert_intermediate_size=96,
            num_experts=6,
            num_experts_per_tok=3,
            norm_topk_prob=False,
            qkv_bias=True,
            mlp_only_layers=[2],
            rope_theta=1e6,
            rms_norm_eps=1e-6,
        ),
        tok_bl,
        torch.bfloat16,
        None,
    )
    yield (
        "qwen3_moe",
        Qwen3MoeConfig(
            **base_kwargs(v_bl, eos_bl, None),
            intermediate_size=96,
            moe_intermediate_size=40,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            head_dim=24,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
        ),
        tok_bl,
        torch.float16,
        None,
    )
    yield (
        "olmoe",
        OlmoeConfig(
            **base_kwargs(v_bl, eos_bl, None),
            intermediate_size=48,
            num_experts=8,
            num_experts_per_tok=4,
            norm_topk_prob=False,
            clip_qkv=2.0,
            rope_theta=1e4,
            rms_norm_eps=1e-5,
        ),
        tok_bl,
        torch.float32,
        None,
    )
    yield (
        "granitemoe",
        GraniteMoeConfig(
            **base_kwargs(v_bl, eos_bl, None),
            intermediate_size=56,
            num_local_experts=6,
            num_experts_per_tok=2,
            embedding_multiplier=0.3,
            residual_multiplier=1.5,
            attention_multiplier=0.09,
            logits_scaling=2.5,
            tie_word_embeddings=True,
            rope_theta=1e7,
            rms_norm_eps=1e-6,
        ),
        tok_bl,
        torch.float32,
        None,
    )


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Gives norm weights and biases non-trivial values (they start as ones and zeros)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def router_gaps(model: torch.nn.Module, ids: torch.Tensor, k: int, n_experts: int) -> float:
    """Smallest gap between the k-th and (k+1)-th router logit over all tokens and layers."""
    gaps: list[float] = []

    def hook(_m, _inp, out):
        for t in out if isinstance(out, tuple) else (out,):
            if torch.is_tensor(t) and t.is_floating_point() and t.dim() == 2 and t.shape[-1] == n_experts:
                s = torch.sort(t.float(), dim=-1, descending=True).values
                gaps.append(float((s[:, k - 1] - s[:, k]).min()))
                return

    handles = [m.register_forward_hook(hook) for n, m in model.named_modules() if type(m).__name__.endswith("TopKRouter")]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    assert gaps, "no router outputs were captured"
    return min(gaps)


def build(name, config, tok, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, gen)
    model.eval()
    return model


def make(name, config, tok, dtype, shard, out_root):
    prompt_ids = tok(PROMPT)["input_ids"]
    ids = torch.tensor([prompt_ids])
    k = config.num_experts_per_tok
    n_exp = getattr(config, "num_experts", None) or config.num_local_experts
    for seed in range(1000):
        model = build(name, config, tok, seed)
        if dtype != torch.float32:  # golden outputs come from the weights exactly as stored
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.to(dtype).to(torch.float32))
        with torch.no_grad():
            gen_ids = model.generate(
                ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                pad_token_id=config.pad_token_id,
            )[0, len(prompt_ids):].tolist()
            full = torch.tensor([prompt_ids + gen_ids])
            logits = model(full).logits[0].float()
        top2 = torch.topk(logits, 2, dim=-1).values
        greedy_gap = float((top2[:, 0] - top2[:, 1])[len(prompt_ids) - 1:-1].min())
        rgap = router_gaps(model, full, k, n_exp)
        distinct = len(set(gen_ids))
        scale = float(logits.abs().max())
        print(f"{name} seed {seed}: router gap {rgap:.4g}, greedy gap {greedy_gap:.4g} (max|logit| {scale:.3g}), {distinct} distinct")
        if rgap > 2e-3 and greedy_gap > 2e-3 * scale and distinct >= 4:
            break
    else:
        raise SystemExit(f"{name}: no seed without near ties")

    # Check that greedy generation (KV cache) and the one-pass forward agree on every continuation token.
    assert logits[len(prompt_ids) - 1:-1].argmax(-1).tolist() == gen_ids, "generate and forward disagree"

    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    model.to(dtype)
    model.config.dtype = str(dtype).removeprefix("torch.")
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out, **kwargs)
    tok.save_pretrained(out)
    for f in ("generation_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(out, f)) and f == "special_tokens_map.json":
            os.remove(os.path.join(out, f))

    cases = []
    for text in TOKENIZER_CASES:
        enc = tok(text)["input_ids"]
        cases.append(
            {
                "text": text,
                "ids": enc,
                "decoded": tok.decode(enc, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(enc, skip_special_tokens=True),
            }
        )
    golden = {
        "generator": "tools/make_fixtures.py",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "seed": seed,
        "architecture": name,
        "stored_dtype": str(dtype).removeprefix("torch."),
        "prompt": PROMPT,
        "prompt_ids": prompt_ids,
        "generated_ids": gen_ids,
        "min_router_gap": rgap,
        "min_greedy_gap": greedy_gap,
        "max_abs_logit": scale,
        "tokenizer_cases": cases,
        "chat": {
            "messages": CHAT,
            "rendered": tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
            "rendered_no_generation_prompt": tok.apply_chat_template(CHAT, tokenize=False),
        },
    }
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
    save_file({"logits": logits.contiguous()}, os.path.join(out, "golden.safetensors"))
    print(f"{name}: wrote {sorted(os.listdir(out))}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fixtures/models")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(4)
    tok_bl = bytelevel_tokenizer(384)
    tok_ms = metaspace_tokenizer(512)
    for name, config, tok, dtype, shard in architectures(tok_bl, tok_ms):
        if args.only and name not in args.only:
            continue
        make(name, config, tok, dtype, shard, args.out)


if __name__ == "__main__":
    main()
