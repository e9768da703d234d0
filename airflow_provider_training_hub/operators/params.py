"""DAG trigger-form ``Param``s derived from an algorithm's parameter schema (never retyped)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from airflow_provider_training_hub.algorithms import AlgorithmRegistry

_CONSTRAINTS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "minLength", "pattern")


def algorithm_params(algorithm: str, names: list[str], **defaults: Any) -> dict[str, Param]:
    """``Param``s for ``names`` with the schema's type, bounds, title and help text.

    ``defaults`` replaces the schema default for the form (a demo may want 3 epochs, not 1); a
    given default of ``None`` lets the form leave the value empty, for a DAG that fills it in itself.
    """
    properties = AlgorithmRegistry.get_algorithm(algorithm).params_schema.model_json_schema()["properties"]
    unknown = [n for n in [*names, *defaults] if n not in properties]
    if unknown:
        raise ValueError(f"{algorithm} has no parameter(s) {unknown}; it has {list(properties)}")
    params = {}
    for name in names:
        prop = properties[name]
        default = defaults.get(name, prop.get("default"))
        variants = prop.get("anyOf", [prop])
        if name in defaults and default is None and not any(v.get("type") == "null" for v in variants):
            variants = [*variants, {"type": "null"}]  # the form may leave it empty
        if len([v for v in variants if v.get("type") != "null"]) > 1:
            # Alternatives with their own constraints (an integer, or one of 'auto'/'gpu'): one
            # merged set would apply the enum of one to the other.
            schema = {"anyOf": [{k: v for k, v in variant.items() if k in ("type", *_CONSTRAINTS)} for variant in variants]}
        else:
            types = [v["type"] for v in variants if "type" in v]
            constraints = {k: v for variant in variants for k, v in variant.items() if k in _CONSTRAINTS}
            schema = {"type": types[0] if len(types) == 1 else types, **constraints}
        params[name] = Param(default, title=prop.get("title", name), description=prop.get("description"), **schema)
    return params
