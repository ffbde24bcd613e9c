#!/usr/bin/env bash
# The GPU check (tools/gpu_check.py) as one prepared run of under 8 minutes on one GPU:
# CUDA-vs-CPU parity of MobileSAM, then images/s and peak GPU memory per model, into a JSON.
#
#   tools/gpu_check.sh [MOBILE_SAM_PT] [OUT_JSON]
#
# MOBILE_SAM_PT: the MobileSAM checkpoint (default: the cached one, fetched on first use).
# OUT_JSON: where the results go (default: docs/gpu_check.json).
# Python packages missing on the GPU machine can be given as wheels in .whl/ (installed into
# /tmp/site first, no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt="${1:-mobile_sam}"
out="${2:-docs/gpu_check.json}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 470 python3 tools/gpu_check.py --checkpoint "$ckpt" --images examples/dog.jpg \
    --budget-s 360 --json "$out"
