#!/usr/bin/env bash
# The GPU-host work of one session, in two device calls of at most 10 minutes each, returning at most 8 files
# (16 MiB each) under $OUT, as the device tool allows.
#
# Prepare here (a registry is reachable):
#   bash ../shared/gpu/pack.sh
#   for b in gpu_decode gpu_gear http_load; do npx -y deno@2.9.6 bundle --platform deno bench/$b.ts -o dist/$b.js; done
# Then call the device with carry [".gpu-pack", "dist"] and the command
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh train     # ~9 min: the default reader
#   bash bench/gpu_session.sh continue     # ~9.5 min, no carry: continue training the reader in the tree
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh lingua    # ~6 min: LLMLingua-2, XLM-R-large
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh serve     # ~9 min: HTTP load, LLMLingua-2, gear-2
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh http      # ~4 min: HTTP load only
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh bench     # ~5 min: quantized experts
#     (TPS="0 32 128": decode steps per submission to try, default 0: serve's adaptive schedule)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh kernels   # ~6 min: per-kernel and
#     per-dispatch costs, the GPU's idle state, decode of f16 / w4g128 / MxMoE 3.25 with per-step profiles
#     (bundle gpu_idle, dispatch_cost, matvec_kernels, gear_kernels, gpu_profile and gpu_decode first)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh loop      # ~7 min: readback timing, GPU
#     clocks, whole-step GPU time vs decode speed (bundle readback_latency, gpu_idle, gpu_profile, gpu_decode)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh step      # ~4 min: packed checkpoints'
#     step profile with per-kernel ablation, decode speed (bundle gpu_profile, gpu_decode)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh measure   # ~8 min: step as above for f16,
#     w4g128 and MxMoE 3.25, decode of MxMoE 2.25, w4g128 without fused norms and sampled, and GEAR's kernels
#     at 1k-32k (bundle gpu_profile, gpu_decode, gear_kernels)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh tune      # ~8 min: packed mat-vec shapes
#     (SHAPES="qdown=32x8x8 ..." to choose), then step profiles and decode of w4g128, MxMoE 3.25 and f16
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh quick     # ~4 min: w4g128 and MxMoE 3.25
#     step profile and decode speed (bundle gpu_profile, gpu_decode)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh mxvsw4    # ~8 min: MxMoE 3.25 vs w4g128
#     decode alternated on one machine, then MxMoE 2.25 (bundle gpu_decode); `mx225`: MxMoE 2.25 alone (~2 min);
#     `mxstep`: their step's GPU time alternated (~3 min; bundle gpu_profile);
#     `gearregs`: GEAR's split kernels at 8k/32k, plain and full store, and at 32k with workgroup memory padded
#     (an occupancy diagnostic; ~2 min; bundle gear_kernels);
#     `sampler`: w4g128 greedy and sampled at temperature 0.7 and 0.1 (~3 min; bundle gpu_decode)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh gearvalues  # ~4 min: GEAR's 64-thread
#     kernel before and after (bundles gear_kernels_old, gear_kernels_rounds, gear_kernels), a step at 32k with
#     f16 and gear-2 (bundle gpu_profile); `gearbatch` (~1 min): the kernel by VALUE_BATCH (bundles
#     gear_kernels_vb4, gear_kernels_vb16, gear_kernels_or, gear_kernels); `geartiles` (~2 min): the 64-thread
#     kernel over 1, 2, 4, 8 tiles per workgroup (bundle gear_kernels); `gearab` (~4 min): two builds of the
#     split kernels alternated, a step at 32k with f16 and gear-2 (bundles gear_kernels_base, gear_kernels,
#     gpu_profile)
#   bash bench/gpu_session.sh long      # ~8 min, no carry: the reader trained further on rows of 4,096 tokens
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh mx2       # ~5 min: step profiles of
#     MxMoE 3.25, w4g128 and w2g128, decode of w4g128 and MxMoE 3.25 (bundle gpu_profile, gpu_decode)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh mxshapes  # ~5 min: MxMoE 3.25 step time
#     by packed shape, decode of w4g128 and MxMoE 3.25 (MX_SHAPES=... to choose; bundle gpu_profile, gpu_decode)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh codes     # ~7 min: GEAR's split kernels,
#     w4g128 and MxMoE 3.25 step profiles and decode, a step at 32k with f16 and gear-2 (bundle gear_kernels,
#     gpu_profile, gpu_decode)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh final     # ~8 min: GEAR's split kernels,
#     decode of w4g128, MxMoE 3.25 and f16 at serve's schedule, 64 and 128 per submission, sampled w4g128
#     (bundle gear_kernels, gpu_decode)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh overlap   # ~7 min: readback overlap probe,
#     w4g128 decode by ReadbackOverlap, GEAR's split kernel at 32k by store part (bundle readback_overlap,
#     gpu_decode, gear_kernels)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh kvstep    # ~5 min: a decode step's GPU
#     time at 1k/8k/32k context with the f16 cache, quant-2 and gear-2 (bundle gpu_profile)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh gear32k   # ~3 min: GEAR's kernels, steady
#     decode after a 32k prompt with gear-2 and the f16 cache (bundle gear_kernels, gpu_gear)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh mxsplit   # ~4 min: MxMoE 3.25 and w4g128
#     step time with the down projection's experts summed by teams of threads (bundle gpu_profile)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh mxw3   # ~5 min: MxMoE's mixes with 3-bit
#     experts against uniform w4g128, step times and decode (bundles gpu_profile, gpu_decode)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh mxdown  # ~6 min: the packed down's teams
#     (2, 4, 8) for uniform w4g128, w4g128 + w2g128 and mxreal, step and decode (bundles gpu_profile, gpu_decode)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh mxdead  # ~5 min: uniform w4g128 with
#     never-routed experts in other schemes (branches built, never run) against real mixes (bundles gpu_profile,
#     gpu_decode)
#   MIXES="p2:w4g128,w2g128:w4g128,w2g128" bash bench/gpu_session.sh mxpaths   # (after the prelude) uniform
#     w4g128 against the listed mixes, step and decode (bundles gpu_profile, gpu_decode)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh kerneltests   # ~1 min: the bundled kernel
#     tests (TESTS="qmatvec_test …": dist/NAME.js from `deno bundle kernels/NAME.ts`) on the GPU, and
#     bench/int_dot_probe.ts (bundle int_dot_probe)
#   source .gpu-pack/prelude.sh >/dev/null; bash bench/gpu_session.sh gearfit   # ~5 min: GEAR's kernels with the
#     joint fit's compression, a step at 32k, steady decode at 32k (bundle gear_kernels, gpu_profile, gpu_gear)
# The working tree travels to the device with the carried paths (64 MiB in all): move fixtures/models/reader
# (25 MB) out of the tree for the call, and back afterwards.
# and unpack here with: tar xzf /work/.device/N/reader.tgz -C fixtures/models (after joining its parts with cat).
set -uo pipefail
what=${1:?train, continue, long, lingua, serve, http, bench, kernels, loop, step, measure, tune, quick, sampler, mxvsw4, mx225, gearregs, gearvalues, gearbatch, geartiles, gearab, mxstep, mx2, mxshapes, codes, final, overlap, kvstep, gear32k, mxsplit, mxw3, mxdown, mxdead, mxpaths, kerneltests or gearfit}
out=${OUT:?OUT must be set}
logs=${LOGS:-$(mktemp -d)}  # LOGS: write the logs there as they come (e.g. under $OUT)
export PYTHONUNBUFFERED=1

# A packed OLMoE-shape checkpoint /tmp/NAME with experts in SCHEMES (round-robin; bench/make_packed_olmoe.py).
packed() {
  python3 bench/make_packed_olmoe.py --out "/tmp/$1" --experts "$2" >"$logs/$1.log" 2>&1
}
# The f16 OLMoE-shape checkpoint /tmp/olmoe (bench/olmoe_torch.py, random weights, no torch run).
olmoe_f16() {
  timeout 150 python3 bench/olmoe_torch.py --out /tmp/olmoe --skip-torch >"$logs/olmoe.log" 2>&1
}

# For each checkpoint /tmp/NAME: a decode step's profile at position 128 (with the ablation of each kind of
# dispatch in one pass), and decode speed with serve's schedule and with 64 steps per submission.
profile_and_decode() {
  for m in "$@"; do
    timeout 90 deno run -A dist/gpu_profile.js --model "/tmp/$m" --pos 128 >"$logs/profile_$m.log" 2>&1
    for tps in 0 64; do
      timeout 90 deno run -A dist/gpu_decode.js --model "/tmp/$m" --dtype f16 --reps 2 --tokens-per-submit "$tps" \
        >>"$logs/decode_$m.log" 2>&1
    done
  done
}

# Decode of /tmp/NAME with serve's schedule and 64 steps per submission, REPS repetitions each, appended to
# $logs/LOG, each run headed "== LABEL tps N" (no heading when LABEL is empty); further arguments go to gpu_decode.
decode_tps() {
  local m=$1 reps=$2 log=$3 label=$4
  shift 4
  for tps in 0 64; do
    [ -n "$label" ] && echo "== $label tps $tps" >>"$logs/$log"
    timeout 60 deno run -A dist/gpu_decode.js --model "/tmp/$m" --dtype f16 --reps "$reps" --tokens-per-submit "$tps" \
      "$@" >>"$logs/$log" 2>&1
  done
}

case "$what" in
train)
  # The default reader (tools/train_reader.py): a dry run first (seconds), then the real run (~9 min).
  timeout 40 python3 tools/train_reader.py --dry-run >"$logs/reader_dry.log" 2>&1
  timeout 555 python3 tools/train_reader.py --minutes 7.8 --out /tmp/reader >"$logs/reader.log" 2>&1
  echo "train_reader rc=$?" >>"$logs/reader.log"
  if [ -d /tmp/reader ]; then
    tar czf /tmp/reader.tgz -C /tmp reader
    split -b 15M -d /tmp/reader.tgz "$out/reader.tgz.part"
  fi
  ;;
continue)
  # Continued training of the reader in the tree (tools/train_reader.py --init): a dry run, then ~8.5 min.
  # Carry nothing: the tree with the reader is 48 MB, and this needs only Python.
  timeout 40 python3 tools/train_reader.py --dry-run --init fixtures/models/reader >"$logs/reader_dry.log" 2>&1
  timeout 540 python3 tools/train_reader.py --init fixtures/models/reader --minutes 7.5 \
    --lr "${CONTINUE_LR:-5e-4}" --warmup 0.02 --out /tmp/reader >"$logs/reader.log" 2>&1
  echo "train_reader rc=$?" >>"$logs/reader.log"
  if [ -d /tmp/reader ]; then
    tar czf /tmp/reader.tgz -C /tmp reader
    split -b 15M -d /tmp/reader.tgz "$out/reader.tgz.part"
  fi
  ;;
long)
  # The reader trained further on rows of 4,096 tokens (it was trained on 1,024), so GEAR's quality can be
  # measured at 2,048 and 4,096 tokens on a model that is not extrapolating there: a dry run, then ~8 min.
  # Carry nothing (the tree with the reader is 51 MB).
  timeout 40 python3 tools/train_reader.py --dry-run --init fixtures/models/reader >"$logs/reader_dry.log" 2>&1
  timeout 510 python3 tools/train_reader.py --init fixtures/models/reader --minutes 6.5 --seq-len 4096 --batch 16 \
    --lr "${CONTINUE_LR:-5e-4}" --warmup 0.02 --out /tmp/reader >"$logs/reader.log" 2>&1
  echo "train_reader rc=$?" >>"$logs/reader.log"
  if [ -d /tmp/reader ]; then
    tar czf /tmp/reader.tgz -C /tmp reader
    split -b 15M -d /tmp/reader.tgz "$out/reader.tgz.part"
  fi
  ;;
lingua)
  # LLMLingua-2 at XLM-RoBERTa-large shape: PyTorch and onnxruntime (Python) on the model that
  # bench/compress_torch.py exports, then edgemix's compressor on it (bench/compress_bench.ts) on the GPU through
  # onnxruntime-web's WebGPU provider, and on the CPU (WebAssembly). Carry [".gpu-pack", "dist/compress_denodir.tgz"]
  # (made by bash bench/vendor_compress.sh,
  # or with --native for the CPU run of the native backend) and leave fixtures/models, fixtures/world and
  # fixtures/compressor/default out of the tree: 64 MiB in all.
  if [ ! -f /tmp/lingua-bench/onnx/model.onnx ]; then
    timeout 200 python3 bench/compress_torch.py --out /tmp/lingua-bench >"$logs/compress.log" 2>&1
  fi
  mkdir -p /tmp/dd && tar xJf dist/compress_denodir.tar.xz -C /tmp/dd
  bench=(env DENO_DIR=/tmp/dd/deno deno run -A --cached-only --config bench/compress_device_config.json
    --node-modules-dir=none bench/compress_bench.ts --model /tmp/lingua-bench)
  if [ -n "$(find /tmp/dd -name libonnxruntime.so.1 -print -quit)" ]; then
    # The native backend (onnxruntime-node) on the host's CPU, on the input length PyTorch's CPU rows use.
    timeout 150 "${bench[@]}" --words 1500 --backend native --device cpu --repeat 3 >"$logs/compress_edgemix.log" 2>&1
    echo "native rc=$?" >>"$logs/compress_edgemix.log"
  else
    timeout 240 "${bench[@]}" --input /tmp/lingua-bench/input.txt --backend wasm --device webgpu --repeat 3 \
      >"$logs/compress_edgemix.log" 2>&1
    echo "webgpu rc=$?" >>"$logs/compress_edgemix.log"
    timeout 120 "${bench[@]}" --words 1500 --backend wasm --device cpu --repeat 1 >>"$logs/compress_edgemix.log" 2>&1
    echo "wasm rc=$?" >>"$logs/compress_edgemix.log"
  fi
  ;;
serve | http)
  # The service under load on the GPU: an OLMoE-1B-7B-shape f16 checkpoint (random weights) with the 384-id
  # vocabulary of the fixture tokenizer, so that every sampled id decodes to text and the time to first token
  # is seen; 1/8/32 streaming clients with continuous batching.
  timeout 150 python3 bench/olmoe_torch.py --out /tmp/olmoe384 --vocab 384 --skip-torch >"$logs/olmoe384.log" 2>&1
  cp fixtures/models/olmoe/tokenizer.json fixtures/models/olmoe/tokenizer_config.json \
    fixtures/models/olmoe/chat_template.jinja /tmp/olmoe384/
  timeout 200 deno run -A --unstable-no-legacy-abort dist/http_load.js --model /tmp/olmoe384 --backend webgpu \
    --dtype f16 --context 1024 --clients 1,8,32 --requests 2 --max-tokens 64 >"$logs/http_olmoe.log" 2>&1
  rm -rf /tmp/olmoe384
  if [ "$what" = serve ]; then
    # LLMLingua-2 at XLM-RoBERTa-large shape in PyTorch and onnxruntime.
    timeout 150 python3 bench/compress_torch.py --out /tmp/lingua-bench >"$logs/compress.log" 2>&1
    # gear-2 at long contexts, on the full OLMoE-1B-7B shape.
    olmoe_f16
    timeout 200 deno run -A dist/gpu_gear.js --model /tmp/olmoe --modes gear-2 --contexts 1024,8192,32768 \
      --decode 225 >"$logs/gear.log" 2>&1
  fi
  ;;
bench)
  # Quantized experts: packed OLMoE-shape checkpoints, prefill 512 / decode 128.
  for spec in "w4 w4g128" "mx325 w4g128,w2g128"; do
    set -- $spec
    timeout 120 python3 bench/make_packed_olmoe.py --out "/tmp/$1" --experts "$2" >>"$logs/quant.log" 2>&1
    du -sb "/tmp/$1" >>"$logs/quant.log"
    for tps in ${TPS:-0}; do  # decode steps per submission (0: the adaptive schedule of serve)
      echo "tokens-per-submit $tps" >>"$logs/quant.log"
      timeout 100 deno run -A dist/gpu_decode.js --model "/tmp/$1" --dtype f16 --tokens-per-submit "$tps" \
        >>"$logs/quant.log" 2>&1
    done
    rm -rf "/tmp/$1"
  done
  ;;
kernels)
  # The GPU's idle state (bench/gpu_idle.ts, the device's own keep-awake off), then costs of dispatches and
  # kernels, then end-to-end decode with a profile of one step per checkpoint.
  (packed w4 w4g128
    packed mx325 w4g128,w2g128) &
  for sc in "fresh 0" "idle 0" "idle 250" "busy 0" "burn 0"; do
    set -- $sc
    EDGEMIX_GPU_KEEP_AWAKE=0 timeout 40 deno run -A dist/gpu_idle.js --scenario "$1" --keep-awake "$2" \
      >>"$logs/idle.log" 2>&1
  done
  timeout 60 deno run -A dist/dispatch_cost.js >"$logs/dispatch.log" 2>&1
  timeout 200 deno run -A dist/matvec_kernels.js >"$logs/matvec.log" 2>&1
  timeout 60 deno run -A dist/gear_kernels.js --contexts 1024,8192,32768 --reps 30 >"$logs/gear_kernels.log" 2>&1
  olmoe_f16
  wait
  for m in olmoe w4 mx325; do
    timeout 90 deno run -A dist/gpu_decode.js --model "/tmp/$m" --dtype f16 --reps 2 >"$logs/decode_$m.log" 2>&1
    timeout 60 deno run -A dist/gpu_profile.js --model "/tmp/$m" --pos 128 >"$logs/profile_$m.log" 2>&1
  done
  ;;
loop)
  # The generation loop against the GPU: when readbacks resolve (bench/readback_latency.ts), the GPU's clocks
  # (nvidia-smi every 100 ms) through the idle scenarios, and for w4g128 / f16 the GPU time of a whole step
  # against decode speed at several submission sizes, with the keep-awake on and off (bundle readback_latency,
  # gpu_idle, gpu_profile and gpu_decode first).
  nvidia-smi --query-gpu=timestamp,pstate,clocks.sm,clocks.mem,power.draw,utilization.gpu \
    --format=csv -lms 100 >"$logs/smi.csv" 2>&1 &
  smi=$!
  mark() { echo "$(date +%H:%M:%S.%N) $*" >>"$logs/marks.log"; }
  (packed w4 w4g128) &
  w4=$!
  mark readback
  timeout 60 deno run -A dist/readback_latency.js --work 40 >"$logs/readback.log" 2>&1
  timeout 60 deno run -A dist/readback_latency.js --work 100 >>"$logs/readback.log" 2>&1
  for sc in "fresh 0" "idle 0" "idle 250" "idle 50" "busy 0" "burn 0"; do
    set -- $sc
    mark "idle $1 $2"
    EDGEMIX_GPU_KEEP_AWAKE=0 timeout 40 deno run -A dist/gpu_idle.js --scenario "$1" --keep-awake "$2" \
      >>"$logs/idle.log" 2>&1
  done
  mark olmoe
  olmoe_f16
  wait "$w4"
  for m in w4 olmoe; do
    mark "profile $m"
    timeout 60 deno run -A dist/gpu_profile.js --model "/tmp/$m" --pos 128 >"$logs/profile_$m.log" 2>&1
    for tps in 0 32 128; do
      mark "decode $m $tps"
      timeout 90 deno run -A dist/gpu_decode.js --model "/tmp/$m" --dtype f16 --reps 2 --tokens-per-submit "$tps" \
        >>"$logs/decode_$m.log" 2>&1
    done
    mark "decode $m keep-awake off"
    EDGEMIX_GPU_KEEP_AWAKE=0 timeout 90 deno run -A dist/gpu_decode.js --model "/tmp/$m" --dtype f16 --reps 2 \
      >>"$logs/decode_$m.log" 2>&1
  done
  kill "$smi"
  ;;
step)
  # Packed checkpoints only: a decode step's profile with the ablation of each kind of dispatch in one pass,
  # and decode speed with serve's schedule and 64 steps per submission (bundle gpu_profile and gpu_decode).
  (packed w4 w4g128) &
  packed mx325 w4g128,w2g128
  wait
  profile_and_decode w4 mx325
  ;;
measure)
  # The decode kernels' state in one call: GEAR's attention kernels at long contexts, step profiles with ablation
  # and decode speed for f16, w4g128 and MxMoE 3.25, w4g128 without fused norms and sampled, MxMoE 2.25's decode
  # (bundle gpu_profile, gpu_decode and gear_kernels).
  (packed w4 w4g128
    packed mx325 w4g128,w2g128) &
  packed=$!
  # MxMoE 2.25 at this shape is every expert w2g128 (docs/benchmarks.md).
  (packed mx225 w2g128) &
  packed2=$!
  olmoe_f16
  timeout 60 deno run -A dist/gear_kernels.js --contexts 1024,8192,32768 --reps 30 >"$logs/gear_kernels.log" 2>&1
  wait "$packed"
  profile_and_decode olmoe w4 mx325
  # The norms left as their own dispatches, for comparison.
  timeout 90 deno run -A dist/gpu_profile.js --model /tmp/w4 --pos 128 --fuse-norms off >"$logs/profile_w4_unfused.log" 2>&1
  timeout 90 deno run -A dist/gpu_decode.js --model /tmp/w4 --dtype f16 --reps 2 --fuse-norms off \
    >>"$logs/decode_w4.log" 2>&1
  wait "$packed2"
  timeout 90 deno run -A dist/gpu_decode.js --model /tmp/mx225 --dtype f16 --reps 2 >"$logs/decode_mx225.log" 2>&1
  # Sampled decoding (the sampler's top-k and top-p bisections pass over the vocabulary 32 times each).
  timeout 90 deno run -A dist/gpu_decode.js --model /tmp/w4 --dtype f16 --reps 2 --temperature 0.8 --top-k 40 \
    --top-p 0.9 >>"$logs/decode_w4.log" 2>&1
  ;;
tune)
  # Shapes of the packed mat-vecs (gpu_profile --shapes, one pass per step, no ablation) for w4g128, then the
  # step profile with ablation and decode speed of w4g128 and MxMoE 3.25 with the defaults, the f16 model's,
  # and the attention kernels at 1k-32k (bundle gpu_profile, gpu_decode and gear_kernels).
  (packed w4 w4g128
    packed mx325 w4g128,w2g128) &
  packed=$!
  olmoe_f16
  timeout 60 deno run -A dist/gear_kernels.js --contexts 1024,8192,32768 --reps 30 >"$logs/gear_kernels.log" 2>&1
  wait "$packed"
  for sh in ${SHAPES:-qdown=16x16x1 qdown=32x8x8 qdown=64x4x8 qdown=16x16x8 qgateup=32x8 qgateup=8x32 qgemv=32x8 qgemv=64x4}; do
    echo "== $sh" >>"$logs/tune.log"
    timeout 60 deno run -A dist/gpu_profile.js --model /tmp/w4 --pos 128 --ablate off --shapes "$sh" 2>&1 |
      grep -E "one pass|Error|error" >>"$logs/tune.log"
  done
  profile_and_decode w4 mx325 olmoe
  ;;
quick)
  # Packed checkpoints only, briefly: a decode step's profile (no ablation) and decode speed with serve's schedule
  # and 64 steps per submission, w4g128 also at 128 (bundle gpu_profile, gpu_decode).
  (packed w4 w4g128) &
  packed mx325 w4g128,w2g128
  wait
  for m in w4 mx325; do
    timeout 60 deno run -A dist/gpu_profile.js --model "/tmp/$m" --pos 128 --ablate off >"$logs/profile_$m.log" 2>&1
    for tps in 0 64 ${EXTRA_TPS:-}; do
      timeout 60 deno run -A dist/gpu_decode.js --model "/tmp/$m" --dtype f16 --reps 2 --tokens-per-submit "$tps" \
        >>"$logs/decode_$m.log" 2>&1
    done
  done
  ;;
sampler)
  # w4g128 decode greedy and sampled (top-k 40, top-p 0.9) at temperature 0.7 and 0.1 (bundle gpu_decode).
  packed w4 w4g128
  for t in 0 0.7 0.1; do
    echo "== temperature $t" >>"$logs/decode.log"
    timeout 60 deno run -A dist/gpu_decode.js --model /tmp/w4 --dtype f16 --reps 2 --temperature "$t" --top-k 40 \
      --top-p 0.9 >>"$logs/decode.log" 2>&1
  done
  ;;
mxvsw4)
  # MxMoE 3.25 against uniform w4g128 on one machine: decode runs alternated (3 rounds, serve's schedule and 64
  # per submission, 3 repetitions each), then MxMoE 2.25 (bundle gpu_decode).
  packed w4 w4g128
  packed mx325 w4g128,w2g128
  (packed mx225 w2g128) &
  for round in 1 2 3; do
    for m in w4 mx325; do decode_tps "$m" 3 decode.log "round $round $m"; done
  done
  wait
  decode_tps mx225 3 decode.log mx225
  ;;
mx225)
  # MxMoE 2.25 (every expert w2g128) decode with serve's schedule and 64 per submission (bundle gpu_decode).
  packed mx225 w2g128
  decode_tps mx225 2 decode_mx225.log ""
  ;;
gearvalues)
  # GEAR's 64-thread kernel: as on 2026-12-02 at the start of the day (dist/gear_kernels_old.js), with value
  # loads in rounds of 8 tokens per channel pair (dist/gear_kernels_rounds.js), and now (word-wise values, key
  # words and outliers loaded early; dist/gear_kernels.js) at 1k-32k, plain 2-bit and the full store; a decode
  # step at 32,778 tokens with the f16 cache and gear-2 (bundle gear_kernels three times, gpu_profile).
  olmoe_f16 &
  for rs in "0 0" "4 0.02"; do
    set -- $rs
    for b in gear_kernels_old gear_kernels_rounds gear_kernels; do
      echo "== $b rank $1 outliers $2" >>"$logs/gear_values.log"
      timeout 60 deno run -A "dist/$b.js" --contexts 1024,2048,4096,8192,32768 --reps 30 --rank "$1" \
        --outliers "$2" >>"$logs/gear_values.log" 2>&1
    done
  done
  wait
  for kv in f16 gear-2 f16 gear-2; do
    echo "== pos 32778 kv $kv" >>"$logs/kvstep.log"
    timeout 70 deno run -A dist/gpu_profile.js --model /tmp/olmoe --pos 32778 --ablate off --kv "$kv" \
      >>"$logs/kvstep.log" 2>&1
  done
  ;;
gearbatch)
  # GEAR's 64-thread kernel by VALUE_BATCH (tokens per round of value loads; dist/gear_kernels.js 8,
  # dist/gear_kernels_vb4.js, dist/gear_kernels_vb16.js) and with outlier scatters loading 4 entries per thread
  # before adding them (dist/gear_kernels_or.js), plain 2-bit and the full store at 8k and 32k, two passes.
  for pass in 1 2; do
    for rs in "0 0" "4 0.02"; do
      set -- $rs
      for b in gear_kernels gear_kernels_vb4 gear_kernels_vb16 gear_kernels_or; do
        echo "== $b rank $1 outliers $2" >>"$logs/gear_batch.log"
        timeout 60 deno run -A "dist/$b.js" --contexts 8192,32768 --reps 30 --rank "$1" --outliers "$2" \
          >>"$logs/gear_batch.log" 2>&1
      done
    done
  done
  ;;
geartiles)
  # GEAR's 64-thread split kernel over 1, 2, 4 and 8 tiles of 64 keys per workgroup (with its merge) at 4k-32k,
  # plain 2-bit and the full store, two passes (bundle gear_kernels; ~2 min).
  for pass in 1 2; do
    for rs in "0 0" "4 0.02"; do
      set -- $rs
      echo "== pass $pass rank $1 outliers $2" >>"$logs/gear_tiles.log"
      timeout 90 deno run -A dist/gear_kernels.js --contexts 4096,8192,16384,32768 --reps 30 --rank "$1" \
        --outliers "$2" --tiles-per-split 2,4,8 >>"$logs/gear_tiles.log" 2>&1
    done
  done
  ;;
mxstep)
  # The GPU time of a decode step (one pass of 32 steps at position 128, per kernel) of w4g128 and MxMoE 3.25,
  # alternated 3 times (bundle gpu_profile; ~3 min).
  packed w4 w4g128
  packed mx325 w4g128,w2g128
  for round in 1 2 3; do
    for m in w4 mx325; do
      echo "== round $round $m" >>"$logs/mxstep.log"
      timeout 60 deno run -A dist/gpu_profile.js --model "/tmp/$m" --pos 128 --ablate off >>"$logs/mxstep.log" 2>&1
    done
  done
  ;;
gearregs)
  # GEAR's split kernels at 8k and 32k, plain 2-bit and the full store, then at 32k with 8, 16 and 32 KiB of
  # extra workgroup memory per workgroup (gear_kernels --pad-kb: fewer workgroups fit an SM; a time that does not
  # move says no more than that many ran at once). On 2026-12-02 this mode also ran a scratch variant of the
  # 256-thread kernel (value loads after the softmax: no change; not kept). Bundle gear_kernels.
  for rs in "0 0" "4 0.02"; do
    set -- $rs
    echo "== rank $1 outliers $2" >>"$logs/gear_regs.log"
    timeout 50 deno run -A dist/gear_kernels.js --contexts 8192,32768 --reps 30 --rank "$1" --outliers "$2" \
      >>"$logs/gear_regs.log" 2>&1
    for pad in 8 16 32; do
      echo "== rank $1 outliers $2 pad $pad KiB" >>"$logs/gear_regs.log"
      timeout 50 deno run -A dist/gear_kernels.js --contexts 32768 --reps 30 --rank "$1" --outliers "$2" \
        --pad-kb "$pad" >>"$logs/gear_regs.log" 2>&1
    done
  done
  ;;
mx2)
  # Step time of MxMoE 3.25, w4g128 and w2g128 (uniform 2-bit experts), then decode of w4g128 and MxMoE 3.25
  # with serve's schedule and 64 per submission (bundle gpu_profile, gpu_decode).
  packed mx325 w4g128,w2g128
  (packed w4 w4g128
    packed w2 w2g128) &
  timeout 60 deno run -A dist/gpu_profile.js --model /tmp/mx325 --pos 128 >"$logs/profile_mx325.log" 2>&1
  wait
  for m in w4 w2; do
    timeout 60 deno run -A dist/gpu_profile.js --model "/tmp/$m" --pos 128 >"$logs/profile_$m.log" 2>&1
  done
  for m in w4 mx325; do decode_tps "$m" 2 decode.log "$m"; done
  ;;
mxshapes)
  # MxMoE 3.25 (w4g128 and w2g128 experts) step time with other packed gate/up and down shapes, then decode
  # with the fastest of them tried here beside w4g128 and MxMoE with the defaults (bundle gpu_profile, gpu_decode).
  packed mx325 w4g128,w2g128
  (packed w4 w4g128) &
  for sh in none qgateup=8x32 qgateup=32x8 qdown=8x32 qgateup=8x32,qdown=8x32; do
    echo "== shapes $sh" >>"$logs/shapes.log"
    args=(); [ "$sh" != none ] && args=(--shapes "$sh")
    timeout 60 deno run -A dist/gpu_profile.js --model /tmp/mx325 --pos 128 --ablate off "${args[@]}" \
      >>"$logs/shapes.log" 2>&1
  done
  wait
  for run in "w4 none" "mx325 none" "mx325 ${MX_SHAPES:-qgateup=8x32}"; do
    set -- $run
    args=(); [ "$2" != none ] && args=(--shapes "$2")
    decode_tps "$1" 2 decode.log "$1 $2" "${args[@]}"
  done
  ;;
codes)
  # After the codes' int-to-float conversion was replaced: GEAR's split kernels at 1k-32k (and plain 2-bit at
  # 32k), w4g128 and MxMoE 3.25 step profiles and decode (serve's schedule, 64 per submission), and a step's GPU
  # time at a 32k context with the f16 cache and gear-2 (bundle gear_kernels, gpu_profile, gpu_decode).
  (packed w4 w4g128
    packed mx325 w4g128,w2g128) &
  (olmoe_f16) &
  timeout 60 deno run -A dist/gear_kernels.js --contexts 1024,2048,4096,8192,32768 --reps 30 \
    >"$logs/gear_kernels.log" 2>&1
  timeout 40 deno run -A dist/gear_kernels.js --contexts 32768 --reps 30 --rank 0 --outliers 0 \
    >>"$logs/gear_parts.log" 2>&1
  wait
  profile_and_decode w4 mx325
  for kv in f16 gear-2; do
    echo "== pos 32778 kv $kv" >>"$logs/kvstep.log"
    timeout 70 deno run -A dist/gpu_profile.js --model /tmp/olmoe --pos 32778 --ablate off --kv "$kv" \
      >>"$logs/kvstep.log" 2>&1
  done
  ;;
final)
  # GEAR's split kernels at 1k-32k (and at 32k by part of the store), then decode with serve's schedule, 64 and
  # 128 steps per submission for w4g128 and MxMoE 3.25, serve's schedule and 64 for f16, sampled w4g128
  # (bundle gear_kernels and gpu_decode).
  (packed w4 w4g128
    packed mx325 w4g128,w2g128) &
  (olmoe_f16) &
  timeout 60 deno run -A dist/gear_kernels.js --contexts 1024,2048,4096,8192,32768 --reps 30 \
    >"$logs/gear_kernels.log" 2>&1
  for rs in "0 0" "2 0"; do
    set -- $rs
    timeout 40 deno run -A dist/gear_kernels.js --contexts 32768 --reps 30 --rank "$1" --outliers "$2" \
      >>"$logs/gear_parts.log" 2>&1
  done
  wait
  for m in w4 mx325 olmoe; do
    for tps in 0 64 128; do
      [ "$m" = olmoe ] && [ "$tps" = 128 ] && continue
      echo "== $m tps $tps" >>"$logs/decode.log"
      timeout 60 deno run -A dist/gpu_decode.js --model "/tmp/$m" --dtype f16 --reps 2 --tokens-per-submit "$tps" \
        >>"$logs/decode.log" 2>&1
    done
  done
  echo "== w4 sampled" >>"$logs/decode.log"
  timeout 60 deno run -A dist/gpu_decode.js --model /tmp/w4 --dtype f16 --reps 2 --temperature 0.7 --top-k 40 \
    --top-p 0.9 >>"$logs/decode.log" 2>&1
  ;;
overlap)
  # Whether work submitted while a readback waits overlaps its 10 ms sleep (readback_overlap), then w4g128 decode
  # with each ReadbackOverlap (gpu_decode --overlap) at serve's schedule, 64 and 128 steps per submission, and
  # GEAR's split kernel at 32k by part of the store (bundle readback_overlap, gpu_decode, gear_kernels).
  (packed w4 w4g128) &
  timeout 60 deno run -A dist/readback_overlap.js --work 20 >"$logs/readback_overlap.log" 2>&1
  for rs in "4 0.02" "0 0" "2 0" "0 0.02"; do
    set -- $rs
    timeout 40 deno run -A dist/gear_kernels.js --contexts 32768 --reps 30 --rank "$1" --outliers "$2" \
      >>"$logs/gear_parts.log" 2>&1
  done
  wait
  for ov in call timer off; do
    for tps in 0 64 128; do
      timeout 60 deno run -A dist/gpu_decode.js --model /tmp/w4 --dtype f16 --reps 2 --tokens-per-submit "$tps" \
        --overlap "$ov" >>"$logs/decode_w4_overlap.log" 2>&1
    done
  done
  ;;
gearab)
  # GEAR's split kernels of two builds alternated (dist/gear_kernels_base.js, e.g. bundled from the last commit,
  # and dist/gear_kernels.js), two passes, plain 2-bit and the full store; then the GPU time of a decode step at
  # 32,778 tokens of context with the f16 cache and with gear-2, and of gear-2's step at 32,831 (it completes a
  # block: its compression, once per 64 steps), alternated twice (bundle gpu_profile; ~4 min).
  for pass in 1 2; do
    for rs in "0 0" "4 0.02"; do
      for v in base new; do
        set -- $rs
        b=dist/gear_kernels.js
        [ "$v" = base ] && b=dist/gear_kernels_base.js
        echo "== pass $pass $v rank $1 outliers $2" >>"$logs/gear_ab.log"
        timeout 90 deno run -A "$b" --contexts 1024,2048,4096,8192,32768 --reps 30 --rank "$1" --outliers "$2" \
          >>"$logs/gear_ab.log" 2>&1
      done
    done
  done
  olmoe_f16
  for round in 1 2; do
    for run in "f16 32778" "gear-2 32778" "gear-2 32831"; do
      set -- $run
      echo "== round $round kv $1 pos $2" >>"$logs/kvstep.log"
      timeout 70 deno run -A dist/gpu_profile.js --model /tmp/olmoe --pos "$2" --ablate off --kv "$1" \
        >>"$logs/kvstep.log" 2>&1
    done
  done
  ;;
kvstep)
  # The GPU time of a whole decode step (one pass, 32 steps) of the f16 OLMoE shape at 1k, 8k and 32k tokens of
  # context with the f16 cache, quant-2 and gear-2 (positions that complete no block: no compression in the
  # step; it adds its cost once per 64 steps). Bundle gpu_profile.
  olmoe_f16
  for pos in 32778 8202 1034; do
    for kv in f16 gear-2 quant-2; do
      [ "$pos" = 1034 ] && [ "$kv" = quant-2 ] && continue
      echo "== pos $pos kv $kv" >>"$logs/kvstep.log"
      timeout 70 deno run -A dist/gpu_profile.js --model /tmp/olmoe --pos "$pos" --ablate off --kv "$kv" \
        >>"$logs/kvstep.log" 2>&1
    done
  done
  ;;
gear32k)
  # GEAR's attention kernels at 1k-32k, then steady-state decode at a 32k context with gear-2 and with the f16
  # cache (bench/gpu_gear.ts: tokens/s between batch arrivals, the prefill excluded; subtracting two
  # generations that each hold a 32k-token prefill, as gpu_decode.ts --decode-prompt does, is swamped by the
  # prefills' spread). Bundle gear_kernels and gpu_gear; ~3 min.
  olmoe_f16
  timeout 60 deno run -A dist/gear_kernels.js --contexts 1024,8192,32768 --reps 30 >"$logs/gear_kernels.log" 2>&1
  for kv in gear-2 f16; do
    timeout 150 deno run -A dist/gpu_gear.js --model /tmp/olmoe --modes "$kv" --contexts 32768 \
      >>"$logs/decode_32k.log" 2>&1
    echo "$kv rc=$?" >>"$logs/decode_32k.log"
  done
  ;;
mxsplit)
  # MxMoE 3.25 against w4g128: a decode step's GPU time with the packed down projection's experts summed by
  # teams (the third number of a shape: qdown=TPOxOUTSxSPLIT), alternated by model (~4 min; bundle gpu_profile).
  (packed mx325 w4g128,w2g128) &
  (packed w4 w4g128) &
  wait
  for sh in none qdown=16x16x1 qdown=32x8x2 qdown=16x16x4; do
    for m in mx325 w4; do
      echo "== $m shapes $sh" >>"$logs/shapes.log"
      args=(); [ "$sh" != none ] && args=(--shapes "$sh")
      timeout 45 deno run -A dist/gpu_profile.js --model "/tmp/$m" --pos 128 --ablate off "${args[@]}" \
        >>"$logs/shapes.log" 2>&1
    done
  done
  ;;
mxw3)
  # MxMoE's mixes with 3-bit experts (bit planes, read in 128-value chunks) against uniform w4g128: m3 (w4g128,
  # w2g128, w3g128), w3 (uniform w3g128) and mxreal (as many schemes per projection as a real 3.25-bit
  # allocation). A step's GPU time, then decode, alternated ROUNDS times (default 2: ~4 min; bundles gpu_profile,
  # gpu_decode).
  mk() { python3 bench/make_packed_olmoe.py --out "/tmp/$1" --experts "$2" --down-experts "$3" >"$logs/$1.log" 2>&1; }
  mk w4 w4g128 w4g128 &
  mk w3 w3g128 w3g128 &
  mk m3 w4g128,w2g128,w3g128 w4g128,w2g128,w3g128 &
  mk mxreal w2g128,w4g128,w2g128,w4g64,w2g128,w3g128,w2g64,w2g128 \
    w4g128,w8g128,w2g128,w4g64,w2g128,w3g128,w2g128,w2g128 &
  wait
  for round in $(seq "${ROUNDS:-2}"); do
    for m in w4 w3 m3 mxreal; do
      echo "== $m round $round" >>"$logs/w3_profile.log"
      timeout 45 deno run -A dist/gpu_profile.js --model "/tmp/$m" --pos 128 --ablate off >>"$logs/w3_profile.log" 2>&1
    done
  done
  for round in $(seq "${ROUNDS:-2}"); do
    for m in w4 w3 m3 mxreal; do
      echo "== $m round $round" >>"$logs/w3_decode.log"
      timeout 45 deno run -A dist/gpu_decode.js --model "/tmp/$m" --dtype f16 --reps 2 --tokens-per-submit 64 \
        >>"$logs/w3_decode.log" 2>&1
    done
  done
  ;;
mxdown)
  # The packed down projection's teams against its scheme branches: uniform w4g128, m2 (w4g128 + w2g128) and
  # mxreal (a real 3.25-bit allocation's schemes) stepped with the down's experts summed by 2, 4 or 8 teams
  # (qdown=TPOxOUTSxSPLIT; with 8 teams each warp sums one expert, its scheme branch taken once), then decode
  # of w4 and mxreal at the default and two 8-team shapes (~6 min; bundles gpu_profile, gpu_decode).
  mk() { python3 bench/make_packed_olmoe.py --out "/tmp/$1" --experts "$2" --down-experts "$3" >"$logs/$1.log" 2>&1; }
  mk w4 w4g128 w4g128 &
  mk m2 w4g128,w2g128 w4g128,w2g128 &
  mk mxreal w2g128,w4g128,w2g128,w4g64,w2g128,w3g128,w2g64,w2g128 \
    w4g128,w8g128,w2g128,w4g64,w2g128,w3g128,w2g128,w2g128 &
  wait
  for sh in ${DOWN_SHAPES:-none qdown=16x16x8 qdown=32x8x8 qdown=64x4x8 qdown=16x16x4}; do
    for m in w4 m2 mxreal; do
      echo "== $m shapes $sh" >>"$logs/down_profile.log"
      args=(); [ "$sh" != none ] && args=(--shapes "$sh")
      timeout 45 deno run -A dist/gpu_profile.js --model "/tmp/$m" --pos 128 --ablate off "${args[@]}" \
        >>"$logs/down_profile.log" 2>&1
    done
  done
  for sh in ${DECODE_SHAPES:-none qdown=16x16x8 qdown=32x8x8}; do
    for m in w4 mxreal; do
      echo "== $m shapes $sh" >>"$logs/down_decode.log"
      args=(); [ "$sh" != none ] && args=(--shapes "$sh")
      timeout 45 deno run -A dist/gpu_decode.js --model "/tmp/$m" --dtype f16 --reps 2 --tokens-per-submit 64 \
        "${args[@]}" >>"$logs/down_decode.log" 2>&1
    done
  done
  ;;
mxdead)
  # What scheme branches cost by being there: uniform w4g128 with never-routed ("dead") experts in other
  # schemes (their branches are built into the expert kernels but never run), against the real mixes m2 and
  # mxreal. Step times alternated ROUNDS times (default 2), then decode of w4, dall and mxreal (~5 min; bundles
  # gpu_profile, gpu_decode).
  mk() { python3 bench/make_packed_olmoe.py --out "/tmp/$1" "${@:2}" >"$logs/$1.log" 2>&1; }
  mk w4 --experts w4g128 &
  mk d2 --experts w4g128 --dead-experts w2g128 &
  mk d8 --experts w4g128 --dead-experts w8g128 &
  mk d4 --experts w4g128 --dead-experts w2g128,w4g64,w3g128,w2g64 &
  mk dall --experts w4g128 --dead-experts w2g128,w4g64,w3g128,w2g64,w8g128 &
  mk m2 --experts w4g128,w2g128 &
  mk mxreal --experts w2g128,w4g128,w2g128,w4g64,w2g128,w3g128,w2g64,w2g128 \
    --down-experts w4g128,w8g128,w2g128,w4g64,w2g128,w3g128,w2g128,w2g128 &
  wait
  # BUILDS: suffixes of bundles to compare (dist/gpu_profile$SFX.js, dist/gpu_decode$SFX.js; "-" is none).
  # VARIANTS: one more argument for both, space-separated, each run in turn ("-": none; e.g. "- --unify=off").
  for round in $(seq "${ROUNDS:-2}"); do
    for b in ${BUILDS:--}; do
      sfx=${b#-}
      for m in ${DEAD_MODELS:-w4 d2 d8 d4 dall m2 mxreal}; do
        echo "== $m build $b round $round" >>"$logs/dead_profile.log"
        timeout 45 deno run -A "dist/gpu_profile$sfx.js" --model "/tmp/$m" --pos 128 --ablate off \
          >>"$logs/dead_profile.log" 2>&1
      done
    done
  done
  for b in ${BUILDS:--}; do
    sfx=${b#-}
    for m in ${DECODE_MODELS:-w4 dall mxreal}; do
      echo "== $m build $b" >>"$logs/dead_decode.log"
      timeout 45 deno run -A "dist/gpu_decode$sfx.js" --model "/tmp/$m" --dtype f16 --reps 2 --tokens-per-submit 64 \
        >>"$logs/dead_decode.log" 2>&1
    done
  done
  ;;
mxpaths)
  # Uniform w4g128 against OLMoE-shape mixes given as MIXES="name:GATEUP_SCHEMES:DOWN_SCHEMES[:DEAD] ..."
  # (comma lists, round-robin over experts; e.g. the scheme proportions of an allocation with --max-paths;
  # DEAD: schemes of never-routed experts): a step's GPU time,
  # then decode alternated ROUNDS times (default 2; ~1 min per mix and round; bundles gpu_profile, gpu_decode).
  # SHAPES: --shapes values for both, space-separated, each run in turn ("-": the defaults; e.g.
  # SHAPES="- qgateup=/2,qdown=/2 qgemv=+int8 qgateup=+f32,qdown=+f32": loops of 2 chunks per pass in the
  # expert kernels with several code paths, int8 inputs for the linear mat-vecs, f32 ones for the experts).
  # An optional fourth field lists never-routed experts' schemes (make_packed_olmoe.py --dead-experts).
  # A GATEUP_SCHEMES of @FILE follows a quantization.json's per-layer allocation instead (make_packed_olmoe.py
  # --allocation; e.g. "a2:@bench/allocations/reader_mx325_paths2.json", or
  # "a3:@bench/allocations/reader_mx325_g64.json", a real 3.25-bit allocation whose code paths stay at most 2
  # per projection at this shape).
  mk() {
    if [[ $2 == @* ]]; then
      python3 bench/make_packed_olmoe.py --out "/tmp/$1" --allocation "${2#@}" >"$logs/$1.log" 2>&1
    else
      python3 bench/make_packed_olmoe.py --out "/tmp/$1" --experts "$2" --down-experts "$3" \
        ${4:+--dead-experts "$4"} >"$logs/$1.log" 2>&1
    fi
  }
  names="w4"
  mk w4 w4g128 w4g128 &
  for mix in ${MIXES:?MIXES must list name:gate_up:down[:dead]}; do
    IFS=: read -r name gu dn dead <<<"$mix"
    mk "$name" "$gu" "$dn" "$dead" &
    names="$names $name"
  done
  wait
  # BUILDS: suffixes of bundles to compare (dist/gpu_profile$SFX.js, dist/gpu_decode$SFX.js; "-" is none).
  # VARIANTS: one more argument for both, space-separated, each run in turn ("-": none; e.g. "- --unify=off").
  # each_run BENCH LOG TAG ARGS...: BENCH on every build, shapes and model, appended to LOG.
  each_run() {
    local bench=$1 log=$2 tag=$3 b sh m
    shift 3
    for b in ${BUILDS:--}; do
      for sh in ${SHAPES:--}; do
        local shapes=()
        [[ $sh != - ]] && shapes=(--shapes "$sh")
        for v in ${VARIANTS:--}; do
          local extra=()
          [[ $v != - ]] && extra=("$v")
          for m in $names; do
            echo "== $m build $b shapes $sh${extra:+ $v}$tag" >>"$logs/$log"
            timeout 45 deno run -A "dist/$bench${b#-}.js" --model "/tmp/$m" "$@" "${shapes[@]}" "${extra[@]}" \
              >>"$logs/$log" 2>&1
          done
        done
      done
    done
  }
  each_run gpu_profile paths_profile.log "" --pos 128 --ablate off
  for round in $(seq "${ROUNDS:-2}"); do
    each_run gpu_decode paths_decode.log " round $round" --dtype f16 --reps 2 --tokens-per-submit 64
  done
  ;;
kerneltests)
  # Bundled test files run outside the tree (the project's deno.json leaves dist/ out of `deno test`).
  for t in ${TESTS:-qmatvec_test}; do
    cp "dist/$t.js" "/tmp/${t}.js"
    (cd /tmp && timeout 120 deno test -A "${t}.js") >"$logs/$t.log" 2>&1
    echo "$t rc=$?" >>"$logs/$t.log"
  done
  [ -f dist/int_dot_probe.js ] && timeout 30 deno run -A dist/int_dot_probe.js >"$logs/int_dot_probe.log" 2>&1
  ;;
gearfit)
  # GEAR's kernels with mode gear's joint fit in the compression (decode rank 2 and prefill rank 4), the f16
  # cache's for comparison, then a decode step at 32k with f16 and gear-2 and gear-2's block-completing step,
  # then steady decode at 32k with both caches (bundles gear_kernels, gpu_profile, gpu_gear; ~5 min).
  for r in 2 4; do
    echo "== fit joint rank $r" >>"$logs/gear_kernels.log"
    timeout 90 deno run -A dist/gear_kernels.js --contexts 1024,8192,32768 --reps 30 --rank "$r" --fit joint \
      >>"$logs/gear_kernels.log" 2>&1
  done
  olmoe_f16
  for run in "f16 32778" "gear-2 32778" "gear-2 32831"; do
    set -- $run
    echo "== kv $1 pos $2" >>"$logs/kvstep.log"
    timeout 70 deno run -A dist/gpu_profile.js --model /tmp/olmoe --pos "$2" --ablate off --kv "$1" \
      >>"$logs/kvstep.log" 2>&1
  done
  for kv in gear-2 f16; do
    timeout 100 deno run -A dist/gpu_gear.js --model /tmp/olmoe --modes "$kv" --contexts 32768 \
      >>"$logs/decode_32k.log" 2>&1
    echo "$kv rc=$?" >>"$logs/decode_32k.log"
  done
  ;;
*)
  echo "usage: bench/gpu_session.sh train|continue|long|lingua|serve|http|bench|kernels|loop|step|measure|tune|quick|sampler|mxvsw4|mx225|gearregs|gearvalues|gearbatch|geartiles|gearab|mxstep|mx2|mxshapes|codes|final|overlap|kvstep|gear32k|mxsplit|mxw3|mxdown|mxdead|mxpaths|gearfit" >&2
  exit 2
  ;;
esac
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >"$logs/device.txt" 2>&1
tar czf "$out/logs.tgz" -C "$logs" .
ls -la "$out"
