#!/usr/bin/env bash
# On the device machine (benchmarks/gpu/README.md): install the wheels that pack.sh gathered (once
# per machine), then run gpu_checks.py with the arguments given. Nothing is fetched: that machine
# reaches no network.
set -euo pipefail
cd "$(dirname "$0")/../.."
site=/tmp/training-hub-site
if [ ! -e "$site/.installed" ]; then
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu/wheels/*.whl
  touch "$site/.installed"
fi
export PYTHONPATH="$site:$PWD" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec python3 benchmarks/gpu/gpu_checks.py "$@"
