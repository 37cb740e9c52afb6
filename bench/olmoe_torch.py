#!/usr/bin/env python3
"""Builds a random-weight checkpoint of OLMoE-1B-7B shape with transformers and measures PyTorch eager on it.

    python3 bench/olmoe_torch.py --out /tmp/olmoe-bench [--layers 16] [--prompt 512] [--decode 128]

Writes the checkpoint (f16 safetensors, Hugging Face layout) to --out and prints one JSON line with PyTorch
eager's prefill and decode tokens/s at batch 1 (bf16 weights, the same shapes, random token ids).
"""

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, OlmoeConfig


def cuda_time(fn, reps):
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--decode-prompt", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-torch", action="store_true")
    # A smaller vocabulary (e.g. the 384 ids of fixtures/models/olmoe's tokenizer, so that every sampled id
    # decodes to text for the HTTP benchmark's time to first token); the end token stays 50279, never sampled.
    ap.add_argument("--vocab", type=int, default=50304)
    args = ap.parse_args()
    cfg = OlmoeConfig(
        vocab_size=args.vocab, hidden_size=2048, intermediate_size=1024, num_hidden_layers=args.layers,
        num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
        max_position_embeddings=4096, norm_topk_prob=False, rope_theta=10000.0, eos_token_id=50279,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.eval()
    build_s = time.perf_counter() - t
    result = {"system": "pytorch eager", "torch": torch.__version__, "transformers": __import__("transformers").__version__,
              "device": torch.cuda.get_device_name(), "buildS": build_s}
    if not args.skip_torch:
        g = torch.Generator(device="cuda").manual_seed(1)
        prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt), device="cuda", generator=g)
        short = torch.randint(0, cfg.vocab_size, (1, args.decode_prompt), device="cuda", generator=g)
        with torch.no_grad():
            model(prompt)  # warm-up
            prefill = cuda_time(lambda: model(prompt), args.reps)
            gen = dict(do_sample=False, eos_token_id=None, pad_token_id=1)
            model.generate(short, max_new_tokens=4, min_new_tokens=4, **gen)  # warm-up
            one = cuda_time(lambda: model.generate(short, max_new_tokens=1, min_new_tokens=1, **gen), args.reps)
            full = cuda_time(lambda: model.generate(short, max_new_tokens=args.decode, min_new_tokens=args.decode, **gen), 1)
        result.update(prefillTokS=args.prompt / prefill, decodeTokS=(args.decode - 1) / (full - one),
                      promptLen=args.prompt, decodeLen=args.decode)
    t = time.perf_counter()
    model.to(torch.float16).save_pretrained(args.out, max_shard_size="4GB")
    result["saveS"] = time.perf_counter() - t
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
