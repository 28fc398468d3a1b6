#!/usr/bin/env bash
# One-command GPU verification (issue 17): pytest -m gpu, a FlashAttention App. E slice beside
# the paper's Tables 20/21, a fastformer-fig2-bf16 slice, flex rows, and lsbench's latency and
# peak memory against independent CUDA-event / allocator readings. About 8 minutes on one
# H200. Prints PASS/FAIL per check; exit 0 all passed, 1 a check failed, 2 no GPU here.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
then
  echo "benchmarks/gpu_check.sh needs a CUDA GPU: torch.cuda.is_available() is False on this" \
       "machine (torch $(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null))." >&2
  echo "Run it where nvidia-smi lists a GPU; on a CPU use python3 -m pytest." >&2
  exit 2
fi
exec python3 benchmarks/gpu_check.py "$@"
