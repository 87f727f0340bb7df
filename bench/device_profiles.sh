#!/usr/bin/env bash
# Profile the demo and experiment models on this machine's GPU (and, for the roofline check across
# hosts, on its CPU with 2 threads), writing profiles and the machine's description to OUTDIR.
#
#   bash bench/device_profiles.sh OUTDIR [SMOLLM2_CONFIG_FOLDER]
#
# Needs torch with CUDA and the project's Python packages importable (run from the repository root).
# SMOLLM2_CONFIG_FOLDER is a folder named smollm2-135m holding that model's config.json: latency does
# not depend on the weights' values, so the GPU profile is taken on seeded random weights of the real
# shapes and merged with the CPU profile of the real weights (`aiflow profile merge`).
set -euo pipefail
out=${1:?usage: device_profiles.sh OUTDIR [SMOLLM2_CONFIG_FOLDER]}
smollm=${2:-}
mkdir -p "$out"
py=${PYTHON:-python3}
aiflow() { "$py" -m orchestrator.cli "$@"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  lscpu | grep -E 'Model name|^CPU\(s\)' || true
  "$py" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
} > "$out/machine.txt" 2>&1

models=(tiny-captioner vit-gpt2-captioner tiny-gpt2 tiny-llama gpt2)
[ -n "$smollm" ] && models+=("$smollm")
for m in "${models[@]}"; do
  name=$(basename "$m")
  echo "== $name on the GPU"
  aiflow profile model "$m" --device cuda --hardware h200 --repeats 30 --warmup 5 --no-store \
    --out "$out/$name.h200.json" > "$out/$name.h200.log" 2>&1 || { tail -5 "$out/$name.h200.log"; exit 1; }
  tail -3 "$out/$name.h200.log"
done
for m in tiny-captioner vit-gpt2-captioner; do
  echo "== $m on this host's CPU, 2 threads, with roofline estimates"
  aiflow profile model "$m" --device cpu --threads 2 --hardware cpu-host2 --repeats 10 --warmup 2 --no-store \
    --estimate phone-a78 --estimate jetson-orin-nano --estimate h200 \
    --out "$out/$m.cpuhost.json" > "$out/$m.cpuhost.log" 2>&1 || { tail -5 "$out/$m.cpuhost.log"; exit 1; }
  tail -3 "$out/$m.cpuhost.log"
done
