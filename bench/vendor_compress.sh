#!/usr/bin/env bash
# Packs what bench/compress_bench.ts needs from npm into dist/compress_denodir.tar.xz, for a GPU host that
# reaches no registry: a Deno cache (DENO_DIR) holding only the packages of its import graph
# (bench/compress_device_config.json), without the files it never loads there (sharp's native libraries but for the native run, source
# maps, and the ONNX Runtime build the run does not use). Default: the web build (onnxruntime-web's
# WebAssembly/WebGPU file, ~17 MB); --native: onnxruntime-node's Linux x64 library instead (~27 MB).
#
#   bash bench/vendor_compress.sh [--native]    # here, where npm is reachable
#   # on the host:
#   mkdir -p /tmp/dd && tar xJf dist/compress_denodir.tar.xz -C /tmp/dd
#   DENO_DIR=/tmp/dd/deno deno run -A --cached-only --config bench/compress_device_config.json \
#     --node-modules-dir=none bench/compress_bench.ts --model M --backend wasm --device webgpu
set -euo pipefail
cd "$(dirname "$0")/.."
deno=${DENO:-"npx -y deno@2.9.6"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
DENO_DIR="$work/deno" $deno cache --config bench/compress_device_config.json --node-modules-dir=none \
  bench/compress_bench.ts >/dev/null 2>&1
npm="$work/deno/npm/registry.npmjs.org"
if [ "${1:-}" = --native ]; then
  find "$npm/onnxruntime-node" -path "*/bin/*" -type f ! -path "*/linux/x64/*" -delete
  find "$npm/onnxruntime-web" -name "*.wasm" -delete
else
  find "$npm/onnxruntime-node" -path "*/bin/*" -type f -delete
  find "$npm/onnxruntime-web" -name "*.wasm" ! -name "ort-wasm-simd-threaded.asyncify.wasm" -delete
fi
find "$npm/onnxruntime-web" -path "*/dist/*" -type f ! -name "ort-wasm-simd-threaded.asyncify.*" \
  ! -name "ort.webgpu*" ! -name "ort.node.min.*" ! -name "ort.min.*" ! -name "ort.bundle.min.mjs" -delete
# The Node build of transformers.js imports sharp (image processing) at load: keep its Linux x64 libraries there.
keep=$([ "${1:-}" = --native ] && echo "*/@img/*linux-x64*" || echo "/nowhere")
find "$npm" \( -name "*.map" -o -name "*.so" -o -name "*.so.*" -o -name "*.node" \) ! -path "*/onnxruntime-node/*" \
  ! -path "$keep" -delete
find "$npm/@huggingface/transformers" \( -name "*.min.*" -o -name "*.cjs" \) -delete
rm -rf "$work/deno/gen"
mkdir -p dist
rm -f dist/compress_denodir.tgz dist/compress_denodir.tar.xz
XZ_OPT=-9T0 tar cJf dist/compress_denodir.tar.xz -C "$work" deno
du -h dist/compress_denodir.tar.xz
