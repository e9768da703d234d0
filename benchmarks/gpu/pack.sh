#!/usr/bin/env bash
# Here, before a device run (benchmarks/gpu/README.md): fill .gpu/wheels (ignored by git) with what
# the device machine's image lacks, at this repository's locked versions, for its Python 3.12 on
# x86-64: instructlab-training, trl, datasets, pydantic, msgspec and their missing needs (about 6 MB).
# The models are made on that machine, so nothing else travels.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Packages the device image does not have (its list: the device tool's KINDS.md).
MISSING=(pydantic pydantic-core annotated-types typing-inspection msgspec datasets dill multiprocess
         trl instructlab-training)
rm -rf .gpu
mkdir -p .gpu/wheels
pins=()
for name in "${MISSING[@]}"; do
  pin="$(grep -E "^$name==" requirements/lock.txt | sed 's/ .*//')"
  [ -n "$pin" ] || { echo "pack: $name is not in requirements/lock.txt" >&2; exit 1; }
  pins+=("$pin")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/wheels "${pins[@]}"
du -sh .gpu/wheels
