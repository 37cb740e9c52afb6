#!/usr/bin/env python3
"""Exports an LLMLingua-2 token classifier to ONNX in transformers.js layout, the way edgemix loads it.

    out/config.json  out/tokenizer.json  out/tokenizer_config.json  out/special_tokens_map.json (when written)
    out/onnx/model.onnx  (+ out/onnx/model.onnx_data when the weights pass 1.8 GB)

Like LLMLingua-2's PromptCompressor, it first adds the 100 tokens [NEW0]..[NEW99] (used for force tokens that
are not one classifier token) to the tokenizer and resizes the embeddings after seed_everything(42), so that
compressions with multi-token force tokens match the Python package. Pass --no-new-tokens to skip that (edgemix
then feeds such force tokens to the model as the unknown token).

Run where torch, transformers (>= 4.45), onnx and onnxruntime are installed, e.g.:
    python3 tools/export_compressor_onnx.py microsoft/llmlingua-2-xlm-roberta-large-meetingbank \\
        models/llmlingua-2-xlm-roberta-large
    python3 tools/export_compressor_onnx.py microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank \\
        models/llmlingua-2-mbert

Smaller variants (onnx/model_quantized.onnx for dtype "q8", ...) can be made from model.onnx with onnxruntime's
quantization tools; edgemix picks the file by its dtype option.

The functions are also used by tools/make_compressor_fixtures.py and bench/compress_torch.py.
"""

import argparse
import os
import random
import sys
import tempfile

import numpy as np
import torch

MAX_FORCE_TOKENS = 100
EXTERNAL_DATA_BYTES = 1_800_000_000


def seed_everything(seed: int) -> None:
    """What llmlingua.utils.seed_everything does."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def add_llmlingua_tokens(tokenizer, model, count: int = MAX_FORCE_TOKENS) -> None:
    """PromptCompressor.init_llmlingua2: seed 42, add [NEW0]..[NEW{count-1}] as special tokens, resize embeddings."""
    from tokenizers import AddedToken

    seed_everything(42)
    new = [AddedToken(f"[NEW{i}]", special=True, normalized=False, lstrip=False, rstrip=False) for i in range(count)]
    tokenizer.add_tokens(new, special_tokens=True)
    model.resize_token_embeddings(len(tokenizer))


class _LogitsOnly(torch.nn.Module):
    """input_ids, attention_mask -> logits: the graph transformers.js expects for token classification."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model, onnx_dir: str, opset: int = 17) -> str:
    """Writes onnx_dir/model.onnx (float32; weights in model.onnx_data past 1.8 GB) and returns its path."""
    import onnx

    os.makedirs(onnx_dir, exist_ok=True)
    final = os.path.join(onnx_dir, "model.onnx")
    wrapper = _LogitsOnly(model).eval()
    device = next(model.parameters()).device
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1]], dtype=torch.long, device=device)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.long, device=device)
    axes = {0: "batch", 1: "sequence"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["logits"]}
        dynamic = {"input_ids": axes, "attention_mask": axes, "logits": axes}
        with torch.no_grad():
            try:
                torch.onnx.export(wrapper, (ids, mask), path, dynamo=False, opset_version=opset, dynamic_axes=dynamic,
                                  do_constant_folding=True, **names)
            except Exception as e:  # noqa: BLE001 - any tracing failure: try the other exporter
                print(f"TorchScript ONNX export failed ({type(e).__name__}: {e}); trying dynamo=True", file=sys.stderr)
                for leftover in os.listdir(tmp):
                    os.remove(os.path.join(tmp, leftover))
                torch.onnx.export(wrapper, (ids, mask), path, dynamo=True, opset_version=max(opset, 18),
                                  dynamic_axes=dynamic, **names)
        proto = onnx.load(path)  # loads external data too, when the exporter wrote any
        size = sum(len(t.raw_data) for t in proto.graph.initializer)
        for stale in (final, final + "_data"):
            if os.path.exists(stale):
                os.remove(stale)
        if size > EXTERNAL_DATA_BYTES:
            onnx.save_model(proto, final, save_as_external_data=True, all_tensors_to_one_file=True,
                            location="model.onnx_data", size_threshold=1024)
        else:
            onnx.save_model(proto, final)
    return final


def check_onnx(onnx_path: str, model, input_ids, attention_mask, atol: float = 1e-4) -> float:
    """Runs the ONNX file with onnxruntime (CPU) and returns the largest |logit difference| to torch; asserts atol."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()})[0]
    with torch.no_grad():
        want = model(input_ids=input_ids, attention_mask=attention_mask).logits.float().cpu().numpy()
    m = attention_mask.cpu().numpy().astype(bool)
    diff = float(np.abs(got - want)[m].max())
    assert diff <= atol, f"onnxruntime and torch logits differ by {diff} > {atol}"
    return diff


def save_tokenizer_files(tokenizer, out_dir: str) -> None:
    """save_pretrained, keeping only what transformers.js and edgemix read."""
    tokenizer.save_pretrained(out_dir)
    for extra in ("chat_template.jinja", "added_tokens.json", "vocab.txt", "sentencepiece.bpe.model"):
        path = os.path.join(out_dir, extra)
        if os.path.exists(path) and os.path.exists(os.path.join(out_dir, "tokenizer.json")):
            os.remove(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Hugging Face repo id or local directory of a *ForTokenClassification model")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--no-new-tokens", action="store_true", help="do not add [NEW0]..[NEW99]")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()

    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForTokenClassification.from_pretrained(args.model, attn_implementation="eager").eval()
    if not args.no_new_tokens:
        add_llmlingua_tokens(tokenizer, model)
    os.makedirs(args.out, exist_ok=True)
    model.config.save_pretrained(args.out)
    save_tokenizer_files(tokenizer, args.out)
    path = export_onnx(model, os.path.join(args.out, "onnx"), opset=args.opset)
    ids = torch.tensor([[0, 100, 200, 300, 2], [0, 400, 500, 2, 1]], dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.long)
    diff = check_onnx(path, model, ids, mask)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB graph), max |onnxruntime - torch| logit {diff:.2e}")


if __name__ == "__main__":
    main()
