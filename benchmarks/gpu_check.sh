#!/usr/bin/env bash
# On a machine with a CUDA GPU, in under 5 minutes: the tests that train (now on the device, which
# train.device=auto picks), then the training speed there (benchmarks/gpu_speed.py).
#   bash benchmarks/gpu_check.sh
# Needs the package and its test extra installed (pip install -e '.[test]'); no corpus download.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device; run this on a GPU machine (and a CUDA build of torch)")
print("device:", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY
timeout 200 python -m pytest -q -x -p no:cacheprovider tests/test_device.py tests/test_lm_trainer.py tests/test_train.py -m "not slow"
timeout 90 python benchmarks/gpu_speed.py --steps 50
