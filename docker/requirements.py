"""Print a requirement set of pyproject.toml, one per line, for the images and their tests.

    python docker/requirements.py train   the [train] extra: what a training pod needs
    python docker/requirements.py train tracking
                                          ... and the [tracking] extra (MLflow, W&B, TensorBoard)
    python docker/requirements.py base    the package's own dependencies (Airflow and its
                                          Kubernetes provider included): the Airflow image's
    python docker/requirements.py core    what the package itself needs with neither Airflow nor
                                          torch (the requirements both the base install and
                                          [train] carry)

The Dockerfiles install from this, so pyproject.toml stays the one list of dependencies.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirement_set(which: str) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    train = project["optional-dependencies"]["train"]
    if which in ("train", "tracking"):
        return project["optional-dependencies"][which]
    if which == "base":
        return project["dependencies"]
    if which == "core":
        base = {_name(r) for r in project["dependencies"]}
        return [r for r in train if _name(r) in base]
    raise SystemExit(f"unknown requirement set {which!r}: use train, tracking, base or core")


if __name__ == "__main__":
    print("\n".join(r for which in sys.argv[1:] or ["train"] for r in requirement_set(which)))
