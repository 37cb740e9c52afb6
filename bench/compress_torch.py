#!/usr/bin/env python3
"""LLMLingua-2 compression throughput in PyTorch with an XLM-RoBERTa-large-shaped token classifier (24 layers,
hidden 1024, 16 heads, FFN 4096; random weights), and the ONNX export of the same model that
bench/compress_bench.ts times in edgemix.

Writes OUT/ in transformers.js layout (config.json, the tokenizer of fixtures/compressor/xlmr, onnx/model.onnx of
about 1.2 GB: the vocabulary is the fixture tokenizer's, not XLM-R's 250k, which changes only the embedding
lookup) and OUT/input.txt, then times on cuda (when present) and cpu:
  model     forward passes over the input's 512-token chunks in batches of 50 (the reference's max_batch_size)
  compress  the whole compress_prompt_llmlingua2 (the Python port of tools/make_compressor_fixtures.py) at rate 0.33
  onnxruntime  the exported model on onnxruntime (Python; the same engine as edgemix's native backend), batched
               as edgemix batches
Throughput is in classifier (XLM-R) tokens of the input per second. Prints one JSON line per measurement, then a
Markdown table.

Run on the GPU host from the repository root, after tools/make_compressor_fixtures.py:
    python3 bench/compress_torch.py --out /tmp/lingua-bench
then time edgemix on the same model and input:
    deno run -A bench/compress_bench.ts --model /tmp/lingua-bench --input /tmp/lingua-bench/input.txt
"""

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_compressor_fixtures as fx  # noqa: E402
from export_compressor_onnx import check_onnx, export_onnx, save_tokenizer_files  # noqa: E402


def load_tokenizer(fixture: str):
    from transformers import PreTrainedTokenizerFast

    with open(os.path.join(fixture, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    specials = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "pad_token",
                                     "mask_token") if isinstance(cfg.get(k), str)}
    return PreTrainedTokenizerFast(tokenizer_file=os.path.join(fixture, "tokenizer.json"), model_max_length=512,
                                   **specials)


def large_config(vocab_size: int):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=vocab_size, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                            intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                            bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, num_labels=2)


def input_text(words: int) -> str:
    base = " ".join([fx.MEETING, fx.TRANSCRIPT, fx.NEWS, *fx.GSM8K]).split(" ")
    return " ".join(base[i % len(base)] for i in range(words))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_model(model, tokenizer, text: str, device: str, dtype, batch: int = 50) -> dict:
    tokens = tokenizer.tokenize(text)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    unk = tokenizer.unk_token_id
    rows = [[unk] + ids[i:i + 510] + [unk] for i in range(0, len(ids), 510)]
    pad = tokenizer.pad_token_id
    batches = []
    for b in range(0, len(rows), batch):
        part = rows[b:b + batch]
        width = max(len(r) for r in part)
        x = torch.tensor([r + [pad] * (width - len(r)) for r in part], device=device)
        m = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in part], device=device)
        batches.append((x, m))
    with torch.no_grad(), torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
        model(input_ids=batches[0][0][:1, :64], attention_mask=batches[0][1][:1, :64])  # warm-up
        sync(device)
        start = time.perf_counter()
        for x, m in batches:
            torch.softmax(model(input_ids=x, attention_mask=m).logits.float(), dim=-1)
        sync(device)
        seconds = time.perf_counter() - start
    return {"classifierTokens": len(ids), "seconds": seconds, "tokensPerSecond": len(ids) / seconds}


def time_onnxruntime(onnx_path: str, tokenizer, text: str, provider: str, batch: int = 32) -> dict:
    """The exported model on onnxruntime (the engine edgemix's native backend runs), batched as edgemix batches:
    chunks sorted by length, 16384 tokens per call."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=[provider])
    ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
    unk, pad = tokenizer.unk_token_id, tokenizer.pad_token_id
    rows = sorted(([unk] + ids[i:i + 510] + [unk] for i in range(0, len(ids), 510)), key=len, reverse=True)
    feeds = []
    for b in range(0, len(rows), batch):
        part = rows[b:b + batch]
        width = len(part[0])
        feeds.append({
            "input_ids": np.array([r + [pad] * (width - len(r)) for r in part], dtype=np.int64),
            "attention_mask": np.array([[1] * len(r) + [0] * (width - len(r)) for r in part], dtype=np.int64),
        })
    session.run(["logits"], {k: v[:1, :64] for k, v in feeds[0].items()})  # warm-up
    start = time.perf_counter()
    for feed in feeds:
        session.run(["logits"], feed)
    seconds = time.perf_counter() - start
    return {"classifierTokens": len(ids), "seconds": seconds, "tokensPerSecond": len(ids) / seconds}


def time_compress(model, tokenizer, text: str, device: str) -> dict:
    def logits(ids, mask):
        with torch.no_grad():
            return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()

    port = fx.Lingua2Port(tokenizer, "xlmr", logits, fx.count_tokens)
    port.compress_prompt_llmlingua2([fx.MEETING], rate=0.33)  # warm-up
    port.chunks.clear()
    sync(device)
    start = time.perf_counter()
    result = port.compress_prompt_llmlingua2([text], rate=0.33, force_tokens=["\n", ".", "?", "!"])
    sync(device)
    seconds = time.perf_counter() - start
    n = len(tokenizer.tokenize(text))
    return {"classifierTokens": n, "seconds": seconds, "tokensPerSecond": n / seconds,
            "keptShare": result["compressed_tokens"] / result["origin_tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/lingua-bench")
    parser.add_argument("--fixture", default=os.path.join(ROOT, "fixtures", "compressor", "xlmr"))
    parser.add_argument("--words", type=int, default=12000, help="input length on the GPU (words)")
    parser.add_argument("--cpu-words", type=int, default=1500, help="input length on the CPU (words)")
    parser.add_argument("--no-export", action="store_true", help="reuse OUT/onnx/model.onnx")
    args = parser.parse_args()

    import transformers
    from transformers import AutoModelForTokenClassification

    tokenizer = load_tokenizer(args.fixture)
    config = large_config(len(tokenizer))
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_config(config).eval()
    os.makedirs(args.out, exist_ok=True)
    text = input_text(args.words)
    with open(os.path.join(args.out, "input.txt"), "w") as f:
        f.write(text)
    if not args.no_export:
        config.save_pretrained(args.out)
        save_tokenizer_files(tokenizer, args.out)
        exporter = AutoModelForTokenClassification.from_config(config, attn_implementation="eager").eval()
        exporter.load_state_dict(model.state_dict())
        start = time.perf_counter()
        path = export_onnx(exporter, os.path.join(args.out, "onnx"))
        ids = torch.tensor([[3, 10, 20, 30, 40, 3], [3, 50, 60, 3, 1, 1]])
        mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
        diff = check_onnx(path, exporter, ids, mask, atol=1e-3)
        print(f"exported {path} ({os.path.getsize(path) / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s, "
              f"max |onnxruntime - torch| logit {diff:.1e}", file=sys.stderr)
        del exporter

    rows = []
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    for device in devices:
        model.to(device)
        sample = text if device == "cuda" else input_text(args.cpu_words)
        name = torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()}"
        dtypes = [torch.float32, torch.float16] if device == "cuda" else [torch.float32]
        for dtype in dtypes:
            r = time_model(model, tokenizer, sample, device, dtype)
            rows.append({"system": "pytorch", "what": "model", "device": name, "dtype": str(dtype).split(".")[1], **r})
            print(json.dumps(rows[-1]), flush=True)
        r = time_compress(model, tokenizer, sample, device)
        rows.append({"system": "pytorch", "what": "compress", "device": name, "dtype": "float32", **r})
        print(json.dumps(rows[-1]), flush=True)

    import onnxruntime

    onnx_path = os.path.join(args.out, "onnx", "model.onnx")
    for provider in ("CUDAExecutionProvider", "CPUExecutionProvider"):
        if provider not in onnxruntime.get_available_providers():
            continue
        sample = text if provider.startswith("CUDA") else input_text(args.cpu_words)
        device = "cuda" if provider.startswith("CUDA") else f"cpu x{os.cpu_count()}"
        r = time_onnxruntime(onnx_path, tokenizer, sample, provider)
        rows.append({"system": f"onnxruntime {onnxruntime.__version__}", "what": "model", "device": device,
                     "dtype": "float32", **r})
        print(json.dumps(rows[-1]), flush=True)

    print(f"\nPyTorch {torch.__version__}, transformers {transformers.__version__}; XLM-R-large shape, random weights\n")
    print("| system | what | device | dtype | classifier tokens | tokens/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['system']} | {r['what']} | {r['device']} | {r['dtype']} | {r['classifierTokens']:,} | "
              f"{r['tokensPerSecond']:,.0f} |")


if __name__ == "__main__":
    main()
