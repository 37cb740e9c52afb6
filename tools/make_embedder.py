#!/usr/bin/env python3
"""Writes the tiny sentence-embedding fixture that edgemix's retrieval tests use (fixtures/embedder/).

It trains a BERT WordPiece tokenizer (lower-casing, accent stripping) on the corpus below with `tokenizers`,
builds a seeded random BertModel (hidden 32, 2 layers, 4 heads, 128 positions), and saves it in the layout
transformers.js loads from a local directory:

  config.json, model.safetensors       the model (save_pretrained)
  tokenizer.json, tokenizer_config.json, special_tokens_map.json
  onnx/model.onnx                      ONNX export (TorchScript exporter, opset 17), inputs input_ids,
                                       attention_mask, token_type_ids [batch, sequence] int64, output
                                       last_hidden_state [batch, sequence, 32] f32
  golden.json                          texts, their token ids (special tokens included, truncated to 128) and
                                       their embeddings: mean of last_hidden_state over the attention mask,
                                       L2-normalised, computed by torch in float32 one text at a time

Before writing golden.json it runs the ONNX file with onnxruntime on all texts in one padded batch and checks
the pooled embeddings against torch's, so a broken export or a padding leak fails here, not in the Deno tests.

Run from the repository root (needs torch, transformers, tokenizers, onnx, onnxruntime, numpy; no network):
    python3 tools/make_embedder.py --out fixtures/embedder
"""

import argparse
import json
import os
import shutil

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel

SEED = 1234
HIDDEN = 32
LAYERS = 2
HEADS = 4
INTERMEDIATE = 64
MAX_POSITIONS = 128
VOCAB_SIZE = 600
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

CORPUS = """
Mixture-of-experts language models route every token to a few small feed-forward networks.
A router scores the experts, keeps the top k, and mixes their outputs with the router weights.
Retrieval-augmented generation looks up passages in a knowledge base before it answers a question.
The knowledge base stores documents as chunks with a full-text index and a vector index.
Hybrid search fuses the full-text ranking and the vector ranking with reciprocal rank fusion.
An embedding model maps a sentence to a vector; similar sentences get nearby vectors.
Mean pooling averages the token vectors over the attention mask, then the vector is normalised.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!
Prompt compression removes words that carry little information, so the model reads fewer tokens.
Key and value caches grow with the context; quantizing them saves memory on long conversations.
WebGPU exposes compute shaders written in WGSL; a kernel reads storage buffers and writes results.
LanceDB keeps tables in a directory or in object storage, so several replicas can share one database.
Questions and answers, lists of numbers like 42, 2048 and 3.14, and accents such as café and naïve.
Cats sleep in the sun. Dogs bark at the mail carrier. Birds sing in the morning.
The capital of France is Paris. The Seine flows through Paris to the English Channel.
Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in green plants.
""".strip()

GOLDEN_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hybrid search fuses full-text and vector rankings.",
    "cats",
    "Café naïve ÉCOLE – accents are stripped and text is lower-cased!",
    "Unknown symbols like ∮ and 東京 become [UNK] tokens.",
    "",
    # Longer than 128 tokens: truncated to 126 word pieces plus [CLS] and [SEP].
    " ".join(["Mixture-of-experts models route each token to a few experts and mix their outputs."] * 12),
]


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=1, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    cls_id = tok.token_to_id("[CLS]")
    sep_id = tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.enable_truncation(max_length=MAX_POSITIONS)
    return tok


def write_tokenizer(tok: Tokenizer, out: str) -> None:
    tok.no_truncation()
    tok.save(os.path.join(out, "tokenizer.json"))
    tok.enable_truncation(max_length=MAX_POSITIONS)
    special = {
        "unk_token": "[UNK]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": MAX_POSITIONS,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": True,
        **special,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)


def build_model(vocab_size: int, pad_id: int) -> BertModel:
    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=2,
        pad_token_id=pad_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "eager"
    model = BertModel(config, add_pooling_layer=False)
    # Larger random weights than the default init (std 0.02) so that different texts get clearly different
    # embeddings; layer norms keep activations in range.
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                continue
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if "embeddings" in name else 0.2))
    model.eval()
    return model


class LastHidden(torch.nn.Module):
    """Wraps BertModel so that the traced graph returns last_hidden_state only."""

    def __init__(self, model: BertModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
        )
        return out.last_hidden_state


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """hidden [b, t, d] f32, mask [b, t] int -> [b, d] f32, mean over mask then L2-normalised."""
    m = mask.astype(np.float32)[:, :, None]
    summed = (hidden * m).sum(axis=1)
    pooled = summed / m.sum(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def padded_batch(encodings: list, pad_id: int):
    length = max(len(e) for e in encodings)
    ids = np.full((len(encodings), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), length), dtype=np.int64)
    for i, e in enumerate(encodings):
        ids[i, : len(e)] = e
        mask[i, : len(e)] = 1
    return ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="fixtures/embedder")
    args = parser.parse_args()
    out = args.out
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "onnx"))

    tok = build_tokenizer()
    pad_id = tok.token_to_id("[PAD]")
    model = build_model(tok.get_vocab_size(), pad_id)
    model.save_pretrained(out)
    write_tokenizer(tok, out)
    print(f"tokenizer: {tok.get_vocab_size()} word pieces; model: {sum(p.numel() for p in model.parameters())} parameters")

    encodings = [tok.encode(t).ids for t in GOLDEN_TEXTS]
    assert len(encodings[-1]) == MAX_POSITIONS, f"the long text has {len(encodings[-1])} tokens, not truncated"
    unk = tok.token_to_id("[UNK]")
    assert any(unk in e for e in encodings), "no golden text produces [UNK]"

    # Torch reference: one text at a time, no padding.
    embeddings = []
    with torch.no_grad():
        for e in encodings:
            ids = torch.tensor([e], dtype=torch.int64)
            mask = torch.ones_like(ids)
            hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
            embeddings.append(mean_pool(hidden.numpy(), mask.numpy())[0])
    embeddings = np.stack(embeddings).astype(np.float32)

    # ONNX export with dynamic batch and sequence axes.
    wrapper = LastHidden(model).eval()
    ids, mask = padded_batch(encodings[:2], pad_id)
    onnx_path = os.path.join(out, "onnx", "model.onnx")
    dynamic = {0: "batch_size", 1: "sequence_length"}
    torch.onnx.export(
        wrapper,
        (torch.from_numpy(ids), torch.from_numpy(mask), torch.zeros_like(torch.from_numpy(ids))),
        onnx_path,
        dynamo=False,
        opset_version=17,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "token_type_ids": dynamic,
                      "last_hidden_state": dynamic},
        do_constant_folding=True,
    )
    import onnx  # noqa: E402  (imported late: only the check needs it)
    import onnxruntime as ort  # noqa: E402

    onnx.checker.check_model(onnx.load(onnx_path))
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ids, mask = padded_batch(encodings, pad_id)
    (hidden,) = session.run(["last_hidden_state"], {
        "input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    onnx_embeddings = mean_pool(hidden, mask)
    diff = float(np.abs(onnx_embeddings - embeddings).max())
    print(f"onnxruntime, all {len(encodings)} texts in one padded batch vs torch one by one: max |diff| {diff:.3g}")
    if diff > 1e-5:
        raise SystemExit("the ONNX export does not reproduce torch's embeddings")
    cosines = embeddings @ embeddings.T
    off_diagonal = cosines[~np.eye(len(encodings), dtype=bool)]
    print(f"cosine between different golden texts: min {off_diagonal.min():.3f}, max {off_diagonal.max():.3f}")
    if off_diagonal.max() > 0.999:
        raise SystemExit("two golden texts have (nearly) the same embedding: the fixture cannot tell them apart")

    golden = {
        "description": "mean over the attention mask of last_hidden_state, L2-normalised; torch float32, "
                       "one text at a time; made by tools/make_embedder.py",
        "seed": SEED,
        "dim": HIDDEN,
        "max_length": MAX_POSITIONS,
        "texts": GOLDEN_TEXTS,
        "input_ids": encodings,
        "embeddings": [[float(x) for x in row] for row in embeddings],
        "onnx_max_abs_diff": diff,
    }
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
    for root, _dirs, files in sorted(os.walk(out)):
        for name in sorted(files):
            path = os.path.join(root, name)
            print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
