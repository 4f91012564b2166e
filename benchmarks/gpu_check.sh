#!/usr/bin/env bash
# The paper-size DAG on one GPU, prepared to run whenever one is at hand:
#
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/paper_scale_gpu/paper_scale.{md,json}
#   bash benchmarks/gpu_check.sh --stages train@ease train_text@bert_rs   # a few stages only (paper_scale.py's options)
#
# Needs an NVIDIA GPU and Python 3.11 whose torch is a CUDA build (requirements.lock pins the CPU build, so torch is
# left as installed and every other library comes from the lock). train.device and the encoder's device are `auto`,
# so fine-tuning, encoding, the neural heads and the closed-form models (ease, dense bert_rs: Gram, decomposition,
# search and final solve) all run on the GPU; the scalable bert_rs solver still fits on the CPU. Resumable like
# benchmarks/paper_scale.py: rerun the same command after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device: install a CUDA build of torch first")'
mkdir -p build
# the lock without its torch entry (the line and its hash lines), so the CUDA build stays
awk '/^torch==/ {skip = 1; next} skip && /^[ #]/ {next} {skip = 0; print}' requirements.lock > build/requirements-gpu.lock
"$PYTHON" -m pip install -q --require-hashes --no-deps -r build/requirements-gpu.lock
"$PYTHON" -m pip install -q --no-deps --no-build-isolation -e .
"$PYTHON" benchmarks/paper_scale.py --work build/paper_scale_gpu --out benchmarks/results/paper_scale_gpu "$@"
