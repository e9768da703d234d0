"""A node's place in a launch, from a parameter or from torchrun's ``PET_*`` environment.

Both the launcher (``torchrun.py``) and the tracker (``tracking.py``, which opens an MLflow run on
node 0 only) read it, so it lives below both and knows no parameter schema.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def as_int(raw: str, name: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"Environment variable {name} must be an integer, got {raw!r}.") from None
    if value < minimum:
        raise ValueError(f"Environment variable {name} must be >= {minimum}, got {value}.")
    return value


def env_int(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = env.get(name)
    return None if raw in (None, "") else as_int(raw, name, minimum)


def pick(param_value, env_value, default):
    return next((v for v in (param_value, env_value) if v not in (None, "")), default)


def node_rank(param: int | None, env: Mapping[str, str] | None = None) -> int:
    """This node's rank: the parameter, else ``PET_NODE_RANK``, else 0."""
    return pick(param, env_int(os.environ if env is None else env, "PET_NODE_RANK", 0), 0)
