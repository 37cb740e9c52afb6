#!/usr/bin/env bash
# The engine-core benchmark on a GPU host: OLMoE-1B-7B shape, random weights, batch 1, edgemix (WebGPU, f16
# weights) next to PyTorch eager (transformers, bf16), both measured in this one run.
#
# Prepare where a registry is reachable:   deno bundle bench/gpu_decode.ts -o dist/gpu_decode.js
# Run on the GPU host (deno, torch, transformers and a Vulkan loader present):
#   bash bench/gpu_bench.sh [OUT_DIR]
# Prints both JSON lines and a Markdown table for docs/benchmarks.md.
set -euo pipefail
out=${1:-/tmp/edgemix-bench}
mkdir -p "$out"
ckpt=/tmp/olmoe-bench
PYTHONUNBUFFERED=1 python3 bench/olmoe_torch.py --out "$ckpt" ${TORCH_ARGS:-} | tee "$out/torch.json"
deno run -A dist/gpu_decode.js --model "$ckpt" --dtype f16 ${EDGEMIX_ARGS:-} | tee "$out/edgemix.json"
python3 - "$out/torch.json" "$out/edgemix.json" <<'PY'
import json, sys
t = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
e = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print("| system | weights | prefill 512 tok/s | decode 128 tok/s |")
print("| --- | --- | --- | --- |")
print(f"| PyTorch eager {t['torch']}, transformers {t['transformers']} | bf16 | {t.get('prefillTokS', float('nan')):,.0f} | {t.get('decodeTokS', float('nan')):,.1f} |")
print(f"| edgemix WebGPU ({e['adapter']}) | f16, {e['weightGiB']:.2f} GiB | {e['prefillTokS']:,.0f} | {e['decodeTokS']:,.1f} |")
PY
