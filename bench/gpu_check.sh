#!/usr/bin/env bash
# The GPU check, as one command on a GPU machine (issue 15): bench/gpu_check.sh OUT
#   1. pytest -m gpu (nccl training step, GPU decode vs CPU decode, a scoring batch on the device)
#   2-4. bench/gpu_bench.py: JPEG decode img/s (GPU vs every CPU core), ResNet-50 training img/s at
#        224 px fed from JPEG bytes, scoring img/s at --tta 0 and --tta 4
# Everything it prints goes to OUT/gpu_check.log; the figures to OUT/gpu_bench.json and
# OUT/gpu_section.md, which `python bench/results.py gpu OUT` puts into bench/RESULTS.md.
# The machine has Python with torch, torchvision and pillow and no Ray: raycat's core needs no
# more. pytest comes from bench/wheels/ when the machine lacks it (`make gpu-wheels` fills it).
# Budget: about 6 minutes (pytest about 1, the figures 3 x 4 measures x 20 s).
set -uo pipefail
OUT=${1:?usage: bench/gpu_check.sh OUT}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
exec > >(tee "$OUT/gpu_check.log") 2>&1
echo "== $(date -u +%FT%TZ) $(hostname)"; nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
if ! $PY -c "import pytest" 2>/dev/null; then
  $PY -m pip install --quiet --no-index --find-links bench/wheels --target "$OUT/.pytest" pytest \
    && export PYTHONPATH="$OUT/.pytest${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
echo "== 1. pytest -m gpu"
timeout 240 $PY -m pytest -m gpu -p no:cacheprovider -q tests/test_gpu.py tests/test_decode.py -o addopts="-ra"
echo "pytest exit: $?"
echo "== 2-4. decode, training, scoring figures"
timeout 300 $PY bench/gpu_bench.py "$OUT" --seconds "${SECONDS_PER_MEASURE:-20}"
echo "gpu_bench exit: $?"
