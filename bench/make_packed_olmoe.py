#!/usr/bin/env python3
"""Writes a random-weight OLMoE-1B-7B-shaped checkpoint directly in edgemix's packed format, for speed benchmarks
of quantized experts on a GPU host (where the 7B model cannot be calibrated on the CPU in reasonable time).

    python3 bench/make_packed_olmoe.py --out /tmp/olmoe-w4 --experts w4g128
    python3 bench/make_packed_olmoe.py --out /tmp/olmoe-mx325 --experts w4g128,w2g128   # alternating per expert

The layout is exactly what `deno task quantize` writes (docs/quantization.md): per expert block `.qweight` u32
(group-aligned words), `.scales` / `.zeros` f16 per (row, group), `quantization.json` with the scheme of every
packed tensor; attention projections and routers in `--attention` (default w8g128, the tool's default);
embeddings, LM head and norms f16. Levels, scales and minimums are random (seeded): the speed of the kernels does
not depend on the values. `--experts` lists schemes assigned to experts round-robin (expert e gets entry
e mod n; gate, up and down of an expert share it), so "w4g128,w2g128" is a 3.25-bit mix; `--down-experts`
gives the down projections their own list (as MxMoE allocates them), e.g. a mix like a real 3.25-bit allocation:

    python3 bench/make_packed_olmoe.py --out /tmp/mxreal \
      --experts w2g128,w4g128,w2g128,w4g64,w2g128,w3g128,w2g64,w2g128 \
      --down-experts w4g128,w8g128,w2g128,w4g64,w2g128,w3g128,w2g128,w2g128

`--dead-experts` gives the last experts of every layer these schemes (one each, gate/up and down) and a router
row of zeros, so they are never routed to (the live experts' logits are far above 0): the expert kernels are
built with their scheme branches, which never run (a diagnostic of what the branches cost by being there):

    python3 bench/make_packed_olmoe.py --out /tmp/w4dead --experts w4g128 --dead-experts w2g128,w8g128

`--allocation` takes the per-layer table of a quantized checkpoint's `quantization.json` (e.g. one that
`deno task quantize --bits 3.25 --max-paths 2` wrote for a small model): layer l gets the table's layer
l mod (its layers), expert e that layer's expert e mod (its experts), so each layer keeps the allocation's
scheme pattern and proportions at this shape. A group that does not divide this shape's row becomes the
nearest of 128, 64, 32 that does, the larger on a tie (printed; e.g. the 96 of rows of 192 becomes 128):

    python3 bench/make_packed_olmoe.py --out /tmp/alloc --allocation /tmp/r2/quantization.json

bench/allocations/ holds the default reader's 3.25-bit allocations (uncapped, `--max-paths 2`, `--max-paths 1`)
cut to their tables. Their code paths at this shape can outnumber the cap they were made under: the reader's
down rows (192 values) put w2g96, w3g96 and w8g96 on one word-by-word path, which here become w2g128, w3g128
and w8g128, a path each (the `--max-paths 2` table: 2 gate/up and up to 3 down paths per layer).
reader_mx325_g64.json was made with groups of 64 only (`--candidates f16,w8g64,w4g64,w3g64,w2g64`), whose
code paths are the same at both shapes: at most 2 per projection here too.

numpy only.
"""

import argparse
import json
import math
import os
import re

import numpy as np


def words_per_group(bits, group):
    # 3 bits: bit planes in blocks of 128 values, ceil(n/16) + ceil(n/32) words per block of n (engine/quant/pack.ts).
    if bits == 3:
        full, rest = divmod(group, 128)
        return full * 12 + ((rest + 15) // 16 + (rest + 31) // 32 if rest else 0)
    return math.ceil(group / (32 // bits))


def stored_bits(bits, group):
    return (words_per_group(bits, group) * 32 + 32) / group


def parse(s):
    m = re.fullmatch(r"w([2348])g(\d+)", s)
    if not m:
        raise SystemExit(f"unsupported scheme {s!r} (want w{{2,3,4,8}}g{{group}})")
    return int(m.group(1)), int(m.group(2))


def allocation_table(path, H, I):
    """Per layer, the routed experts' (gate/up, down) schemes of a quantization.json, groups fitted to H and I."""
    with open(path) as f:
        q = json.load(f)
    layers = q.get("layers") or []
    if not layers or any(not lay.get("experts") for lay in layers):
        raise SystemExit(f"{path} has no per-layer expert allocation (layers[].experts)")
    notes = {}

    def fit(scheme, cols):
        bits, g = parse(scheme)
        if cols % g == 0:
            return bits, g
        fits = sorted((abs(c - g), -c) for c in (128, 64, 32) if cols % c == 0)
        new = -fits[0][1] if fits else None
        if new is None:
            raise SystemExit(f"no group of 128, 64 or 32 fits {scheme} to rows of {cols}")
        notes[f"{scheme} (rows of {cols})"] = f"w{bits}g{new}"
        return bits, new

    table = [[(fit(gu, H), fit(dn, I)) for gu, dn in lay["experts"]] for lay in layers]
    for old, new in notes.items():
        print(f"allocation: {old} -> {new}", flush=True)
    return table


class Shard:
    """Accumulates tensors and writes safetensors files of about `limit` bytes."""

    def __init__(self, out, limit):
        self.out, self.limit, self.cur, self.size, self.files = out, limit, {}, 0, []
        self.index = {}

    def add(self, name, arr, dtype):
        self.cur[name] = (np.ascontiguousarray(arr), dtype)
        self.size += arr.nbytes
        if self.size >= self.limit:
            self.flush()

    def flush(self):
        if not self.cur:
            return
        name = f"model-{len(self.files) + 1:05d}.safetensors"
        header, off = {}, 0
        for k, (a, dt) in self.cur.items():
            header[k] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
            off += a.nbytes
        h = json.dumps(header).encode()
        h += b" " * ((8 - (8 + len(h)) % 8) % 8)
        with open(os.path.join(self.out, name), "wb") as f:
            f.write(len(h).to_bytes(8, "little"))
            f.write(h)
            for a, _ in self.cur.values():
                f.write(a.tobytes())
        for k in self.cur:
            self.index[k] = name
        self.files.append(name)
        self.cur, self.size = {}, 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--experts", default="w4g128")
    ap.add_argument("--down-experts", help="schemes of the down projections, round-robin (default: --experts)")
    ap.add_argument("--dead-experts", default="", help="schemes of never-routed experts at the end of each layer")
    ap.add_argument("--allocation", help="a quantization.json whose per-layer table (expert: gate_up, down) to follow")
    ap.add_argument("--attention", default="w8g128")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=1024)
    ap.add_argument("--num-experts", type=int, default=64)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--shard-bytes", type=int, default=1 << 30)
    args = ap.parse_args()
    H, I, E, L, V = args.hidden, args.inter, args.num_experts, args.layers, args.vocab
    experts = [parse(s) for s in args.experts.split(",")]
    downs = [parse(s) for s in (args.down_experts or args.experts).split(",")]
    dead = [parse(s) for s in args.dead_experts.split(",") if s]
    if len(dead) >= E:
        raise SystemExit(f"--dead-experts lists {len(dead)} schemes; the layer has {E} experts")
    att = parse(args.attention)
    table = allocation_table(args.allocation, H, I) if args.allocation else None
    for bits, g in experts + dead + [att]:
        if H % g:
            raise SystemExit(f"group {g} must divide the row length {H}")
    for bits, g in downs + dead:
        if I % g:
            raise SystemExit(f"group {g} must divide the down projection's row length {I}")
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    shard = Shard(args.out, args.shard_bytes)
    tensors = {}

    def packed(name, rows, cols, scheme, zero_rows=0):
        bits, g = scheme
        groups = cols // g
        wpg = words_per_group(bits, g)
        shard.add(name.replace(".weight", ".qweight"),
                  rng.integers(0, 2**32, size=(rows, groups * wpg), dtype=np.uint32), "U32")
        # Weights ≈ scale · level + min with |w| ≲ 0.05: scale 0.1 / (2^bits − 1), min −0.05.
        scale = np.full((rows, groups), 0.1 / (2**bits - 1), dtype=np.float16)
        minimum = np.full((rows, groups), -0.05, dtype=np.float16)
        if zero_rows:  # the last rows are exactly zero (dead experts' router rows)
            scale[rows - zero_rows:] = 0
            minimum[rows - zero_rows:] = 0
        shard.add(name.replace(".weight", ".scales"), scale, "F16")
        shard.add(name.replace(".weight", ".zeros"), minimum, "F16")
        tensors[name] = {"scheme": f"w{bits}g{g}", "shape": [rows, cols]}

    def f16(name, shape, std=0.02):
        shard.add(name, (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16), "F16")

    def ones(name, n):
        shard.add(name, np.ones((n,), dtype=np.float16), "F16")

    f16("model.embed_tokens.weight", (V, H))
    expert_bits = expert_weights = 0
    layers = []
    for l in range(L):
        p = f"model.layers.{l}."
        ones(p + "input_layernorm.weight", H)
        ones(p + "post_attention_layernorm.weight", H)
        ones(p + "self_attn.q_norm.weight", H)
        ones(p + "self_attn.k_norm.weight", H)
        for proj in "qkvo":
            packed(p + f"self_attn.{proj}_proj.weight", H, H, att)
        packed(p + "mlp.gate.weight", E, H, att, zero_rows=len(dead))
        alloc = []
        for e in range(E):
            s, sd = experts[e % len(experts)], downs[e % len(downs)]
            if table:
                src = table[l % len(table)]
                s, sd = src[e % len(src)]
            if e >= E - len(dead):
                s = sd = dead[e - (E - len(dead))]
            for part, (rows, cols), sc in (("gate_proj", (I, H), s), ("up_proj", (I, H), s), ("down_proj", (H, I), sd)):
                packed(p + f"mlp.experts.{e}.{part}.weight", rows, cols, sc)
                expert_bits += stored_bits(*sc) * rows * cols
                expert_weights += rows * cols
            alloc.append([f"w{s[0]}g{s[1]}", f"w{sd[0]}g{sd[1]}"])
        layers.append({"layer": l, "experts": alloc, "solver": "bench"})
        print(f"layer {l + 1}/{L}", flush=True)
    ones("model.norm.weight", H)
    f16("lm_head.weight", (V, H))
    shard.flush()
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": shard.index}, f)
    config = {
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "vocab_size": V, "hidden_size": H,
        "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": args.heads,
        "num_key_value_heads": args.heads, "num_experts": E, "num_experts_per_tok": args.topk,
        "max_position_embeddings": 4096, "norm_topk_prob": False, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "tie_word_embeddings": False, "eos_token_id": 50279, "pad_token_id": 1,
        "torch_dtype": "float16",
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    q = {
        "format": "edgemix-packed-v2", "method": "random (benchmark)",
        "mode": (f"bench allocation {args.allocation}" if table else f"bench {args.experts}"
                 + (f" / {args.down_experts}" if args.down_experts else ""))
        + (f" + dead {args.dead_experts}" if dead else ""),
        "average_bits": expert_bits / expert_weights, "attention": args.attention, "router": args.attention,
        "tensors": tensors, "layers": layers,
    }
    with open(os.path.join(args.out, "quantization.json"), "w") as f:
        json.dump(q, f)
    print(json.dumps({"out": args.out, "average_bits": q["average_bits"], "files": len(shard.files)}))


if __name__ == "__main__":
    main()
