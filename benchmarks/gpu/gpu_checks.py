"""What only a CUDA GPU can measure, in one run of at most ``--budget`` seconds (8 minutes).

On a GPU machine with no network, the script makes its own models (random Llamas: ``medium``,
227M parameters, the shape of the first GPU run; ``large``, 1.0B, Llama-3.2-1B's shape with an
8,192-token vocabulary) and data (``cpu_vs_trl.make_data``'s chats of about 180 tokens), then runs
engines in interleaved cycles, each engine once per cycle, each run a real training run (one epoch,
128 samples per step, seed 42, checkpoint at the end):

    upstream   instructlab-training's own run_training, TrainingArgs written out here
    sft-il     sft() on the instructlab-training backend      (compared with upstream)
    sft-pt     sft() on the pytorch backend                   (compared with sft-il)
    lora-il    lora_sft() on the instructlab-training backend
    lora-pt    lora_sft() on the pytorch backend              (compared with lora-il)
    dpo-pt     dpo() on the pytorch backend, on preference pairs of ``cpu_vs_trl.make_pairs``
               (about 190 tokens per sequence; 128 pairs per step)

with the large model's first ``sft-pt`` run after the first cycle, and its ``sft-pt``/``sft-il``
pairs after the last, while the budget allows. Each run reports
tokens/s (the median of its steps after the first), MFU (6 x parameters x tokens/s over the bf16
matmul peak measured at the start of this run), the GPU memory it used at its peak (NVML, the
process tree's whole footprint over the idle device), wall time and its per-step losses. Pairs
report the median of their same-cycle tokens/s ratios and how far their loss curves are apart.

Checks: the packed forward on this GPU against the model's own per-conversation forward (loss and
gradients), and ``load_in_4bit`` refused with a ValueError before any work where bitsandbytes or
CUDA is missing.

Everything lands in ``--out``/gpu_checks.json, rewritten after every run, so a run stopped at its
time limit still returns what it measured. Without CUDA only the pytorch engines run (that is
how this script is checked on CPU: ``--models tiny``); the others are reported as skipped.

    python benchmarks/gpu/gpu_checks.py --out DIR [--models medium,large] [--cycles 3] [--budget 480]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cpu_vs_trl import make_data, make_pairs  # noqa: E402  (the CPU benchmark's synthetic chats and pairs)

BATCH = 128
MAX_LEN = 1024
LR = {"sft": 1e-5, "lora_sft": 2e-4, "dpo": 5e-6}
SEED = 42
QUESTION = "Who is the Training Hub mascot?"
MODELS = {  # make_tiny_model's arguments
    "tiny": {"vocab_size": 512, "hidden_size": 32, "num_layers": 2},
    "medium": {"vocab_size": 8192, "hidden_size": 1024, "num_layers": 24},
    "large": {"vocab_size": 8192, "hidden_size": 2048, "num_layers": 16, "num_heads": 32, "num_kv_heads": 8,
              "intermediate_size": 8192},
}
CYCLE = ("lora-il", "lora-pt", "upstream", "sft-il", "sft-pt", "dpo-pt")
LARGE = ("sft-pt", "sft-il")
PAIRS = (("sft-il", "upstream"), ("sft-pt", "sft-il"), ("lora-pt", "lora-il"))
FIRST_LARGE_RUN_S = 60  # what a large run is assumed to take before one has


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class GpuMemory:
    """The device's used memory, sampled every 0.2 s while a run goes on, above what was used before it."""

    def __init__(self) -> None:
        self.peak = self.idle = 0
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._used = lambda: pynvml.nvmlDeviceGetMemoryInfo(self._handle).used
        except Exception:  # no NVML (CPU): no figure
            self._used = None

    def __enter__(self) -> GpuMemory:
        if self._used:
            self.idle = self.peak = self._used()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._used())

    def __exit__(self, *exc) -> None:
        if self._used:
            self._stop.set()
            self._thread.join()

    def mib(self) -> float | None:
        return round((self.peak - self.idle) / 2**20) if self._used else None


def bf16_peak_tflops() -> float | None:
    """The bf16 matmul rate this GPU reaches (8192^3, after warm-up): MFU's denominator."""
    if not cuda():
        return None
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(50):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000
    del a, b
    torch.cuda.empty_cache()
    return round(50 * 2 * 8192**3 / seconds / 1e12, 1)


def step_tokens_per_s(record: dict) -> float:
    """Our trainer records tokens/s; instructlab's records samples/s and rank 0's tokens."""
    if "tokens_per_second" in record:
        return record["tokens_per_second"]
    return record["num_tokens_rank0"] * record["overall_throughput"] / record["batch_size"]


def measured(out: Path, started: float, checkpoint: str | None, memory: GpuMemory, reload: bool) -> dict:
    from airflow_provider_training_hub.checkpoints import read_metrics
    from airflow_provider_training_hub.models import generate

    wall = time.perf_counter() - started
    if checkpoint is None:
        raise RuntimeError(f"the run saved no checkpoint in {out}")
    records = [r for r in read_metrics(out) if "avg_loss" in r]
    steady = records[1:] or records  # the first step carries compilation and allocator warm-up
    row = {
        "wall_s": round(wall, 1),
        "steps": len(records),
        "tokens_per_s": round(statistics.median(map(step_tokens_per_s, steady)), 1),
        "losses": [round(r["avg_loss"], 5) for r in records],
        "peak_gpu_mib": memory.mib(),
        "checkpoint_mb": round(sum(p.stat().st_size for p in Path(checkpoint).rglob("*") if p.is_file()) / 2**20, 1),
    }
    log = out / "full_logs_global0.log"
    plan = [line for line in log.read_text(errors="replace").splitlines() if "tokens per micro-batch (" in line] \
        if log.is_file() else []
    if plan:  # the pytorch backend names its device plan: attention kernel, precision, optimizer
        row["plan"] = plan[0].split("tokens per micro-batch (", 1)[1].removesuffix(")")
    if reload:
        row["reloaded_answer"] = generate(checkpoint, [QUESTION], max_new_tokens=8)[0]  # the checkpoint loads
    return row


def common(algorithm: str) -> dict:
    length = {"max_length": MAX_LEN} if algorithm == "dpo" else {"max_seq_len": MAX_LEN}
    return {"num_epochs": 1, "effective_batch_size": BATCH, **length, "learning_rate": LR[algorithm],
            "random_seed": SEED, "accelerate_full_state_at_epoch": False, "checkpoint_at_epoch": True}


def estimate_mib(algorithm: str, backend: str, model: Path, data: Path, out: Path) -> list[int]:
    """The memory check's bounds for this run (the operators refuse a run by its lower bound),
    to set beside its measured peak."""
    from airflow_provider_training_hub.algorithms import AlgorithmRegistry

    method = AlgorithmRegistry.get_algorithm(algorithm)
    params = method.params_schema.parse({"model_path": str(model), "data_path": str(data), "ckpt_output_dir": str(out),
                                         **common(algorithm)})
    result = method.memory_estimate(params, AlgorithmRegistry.get_backend(algorithm, backend))
    return [round(b / 2**20) for b in result.bounds]


def ours(engine: str, model: Path, data: Path, out: Path, reload: bool) -> dict:
    from airflow_provider_training_hub import dpo, lora_sft, sft

    algorithm = {"lora": "lora_sft", "dpo": "dpo"}.get(engine.split("-")[0], "sft")
    backend = "pytorch" if engine.endswith("-pt") else "instructlab-training"
    extra = {"save_steps": 0} if algorithm == "lora_sft" else {}
    train = {"sft": sft, "lora_sft": lora_sft, "dpo": dpo}[algorithm]
    if algorithm == "dpo":
        data = data.with_name("pairs.jsonl")
    with GpuMemory() as memory:
        started = time.perf_counter()
        result = train(str(model), str(data), str(out), backend=backend,
                       data_output_dir=str(out.parent / f"data-{out.name}"), **common(algorithm), **extra)
    row = measured(out, started, result.checkpoint, memory, reload)
    if algorithm == "dpo":  # no memory estimate for dpo; its reference pass and last reward margin instead
        row["reference_s"] = read_metrics_key(out, "reference_seconds")
        row["final_margin"] = result.metrics.get("rewards/margins")
        return row
    return {**row, "estimate_mib": estimate_mib(algorithm, backend, model, data, out)}


def read_metrics_key(out: Path, key: str) -> float | None:
    from airflow_provider_training_hub.checkpoints import read_metrics

    found = read_metrics(out, key)
    return round(found[0][key], 2) if found else None


def upstream(model: Path, data: Path, out: Path, reload: bool) -> dict:
    import importlib.util

    from instructlab.training import TorchrunArgs, TrainingArgs, run_training

    from airflow_provider_training_hub.checkpoints import hf_checkpoints

    c = common("sft")
    with GpuMemory() as memory:
        started = time.perf_counter()
        run_training(
            TorchrunArgs(nproc_per_node=1, nnodes=1, node_rank=0, rdzv_id=1, rdzv_endpoint="127.0.0.1:29512"),
            TrainingArgs(model_path=str(model), data_path=str(data), ckpt_output_dir=str(out),
                         data_output_dir=str(out / "data"), num_epochs=c["num_epochs"],
                         effective_batch_size=BATCH, learning_rate=c["learning_rate"], max_seq_len=MAX_LEN,
                         max_batch_len=max(10000, MAX_LEN), save_samples=0, warmup_steps=0,
                         accelerate_full_state_at_epoch=False, checkpoint_at_epoch=True, random_seed=SEED,
                         adamw_betas=(0.9, 0.95), disable_flash_attn=importlib.util.find_spec("flash_attn") is None),
        )
    checkpoints = hf_checkpoints(out)
    return {**measured(out, started, str(checkpoints[-1]) if checkpoints else None, memory, reload),
            "estimate_mib": estimate_mib("sft", "instructlab-training", model, data, out)}


def packed_against_reference(model_dir: Path, data: Path, work: Path) -> dict:
    """The packed forward as the trainer runs it on this device (its plan: kernel and autocast)
    against transformers' own forward, one conversation at a time, under the same autocast."""
    import torch
    from transformers import AutoModelForCausalLM

    from airflow_provider_training_hub.algorithms.backends.packed import (
        PackedLabelLoss,
        device_plan,
        pack,
        register_packed_attention,
    )
    from airflow_provider_training_hub.algorithms.backends.pytorch_trainer import load_samples
    from airflow_provider_training_hub.data.prepare import PROCESSED_FILE, prepare_for_training

    device = torch.device("cuda" if cuda() else "cpu")
    plan = device_plan(device)
    prepare_for_training(str(data), str(model_dir), str(work), MAX_LEN)
    samples = load_samples(work / PROCESSED_FILE)[:32]
    autocast = plan.autocast(device)
    results = {}
    for name, attention in (("reference", "sdpa"), ("packed", register_packed_attention())):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention)
        model.to(device)
        if name == "reference":
            loss = torch.zeros((), device=device)
            for s in samples:
                with autocast or torch.autocast("cpu", enabled=False):
                    logits = model(input_ids=torch.tensor([s.input_ids], device=device)).logits[0, :-1]
                loss = loss + torch.nn.functional.cross_entropy(
                    logits.float(), torch.tensor(s.labels[1:], device=device), reduction="sum")
        else:
            loss = PackedLabelLoss(model, autocast)(pack([(s.input_ids, s.labels) for s in samples], device), 1.0)
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
        results[name] = (loss.item(), grads)
        del model
    (ref_loss, ref_grad), (loss, grad) = results["reference"], results["packed"]
    if cuda():
        torch.cuda.empty_cache()
    return {"plan": plan.describe(), "conversations": len(samples), "loss": loss, "reference_loss": ref_loss,
            "loss_rel_diff": abs(loss - ref_loss) / ref_loss,
            "grad_rel_diff": ((grad - ref_grad).norm() / ref_grad.norm()).item()}


def four_bit_refused(model: Path, data: Path, work: Path) -> dict:
    """``load_in_4bit`` where it cannot run: a ValueError, and no output directory."""
    from airflow_provider_training_hub import lora_sft

    found = {}
    for backend in ("pytorch", "instructlab-training"):
        out = work / f"qlora-{backend}"
        try:
            lora_sft(str(model), str(data), str(out), backend=backend, load_in_4bit=True)
            found[backend] = "not refused (bitsandbytes and CUDA present)"
        except ValueError as exc:
            found[backend] = f"ValueError: {exc}" + (" (but it wrote output)" if out.exists() else "")
    return found


def run_order(names: list[str], cycles: int) -> list[tuple[int, str, str]]:
    """(cycle, engine, model): the first cycle, then the large model's first pytorch run (MFU
    needs one), the other cycles, then the large model's pairs while the budget lasts."""
    first, *large = names
    order = [(cycle, engine, first) for cycle in range(cycles) for engine in CYCLE]
    if large:
        pairs = [(cycle, engine, large[0]) for cycle in range(cycles) for engine in LARGE]
        order = order[: len(CYCLE)] + pairs[:1] + order[len(CYCLE):] + pairs[1:]
    return order


def needs_cuda(engine: str) -> bool:
    return not engine.endswith("-pt")


def loss_gap(a: list[float], b: list[float]) -> float | None:
    """The largest relative difference of two loss curves, step by step."""
    steps = min(len(a), len(b))
    return max(abs(a[i] - b[i]) / abs(b[i]) for i in range(steps)) if steps else None


def summarise(report: dict) -> None:
    runs = [r for r in report["runs"] if "tokens_per_s" in r]
    peak = report.get("bf16_peak_tflops")
    for r in runs:
        if peak:
            r["mfu"] = round(6 * report["models"][r["model"]]["parameters"] * r["tokens_per_s"] / (peak * 1e12), 4)
    pairs = {}
    for model in report["models"]:
        for a, b in PAIRS:
            got = [(x, y) for x in runs for y in runs if (x["engine"], y["engine"]) == (a, b)
                   and x["model"] == y["model"] == model and x["cycle"] == y["cycle"]]
            if got:
                ratios = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in got]
                pairs[f"{a} vs {b} ({model})"] = {
                    "tokens_per_s_ratio": round(statistics.median(ratios), 4), "ratios": [round(q, 4) for q in ratios],
                    "loss_curve_max_rel_diff": round(max(loss_gap(x["losses"], y["losses"]) for x, y in got), 5),
                }
    report["pairs"] = pairs
    goals = {}
    for model in report["models"]:
        if p := pairs.get(f"sft-pt vs sft-il ({model})"):
            goals[f"sft-pt / sft-il tokens/s ({model}) >= 2"] = p["tokens_per_s_ratio"] >= 2
            goals[f"sft-pt loss curve within 1% of sft-il ({model})"] = p["loss_curve_max_rel_diff"] <= 0.01
        if p := pairs.get(f"sft-il vs upstream ({model})"):
            goals[f"sft-il within 1% of upstream's tokens/s ({model})"] = abs(p["tokens_per_s_ratio"] - 1) <= 0.01
    large = [r["mfu"] for r in runs if r["model"] == "large" and r["engine"] == "sft-pt" and "mfu" in r]
    if large:
        goals["sft-pt MFU >= 30% (large)"] = statistics.median(large) >= 0.30
    report["goals"] = goals


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True, help="where gpu_checks.json goes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/training-hub-gpu"), help="models, data and runs")
    parser.add_argument("--models", default="medium,large", help="the cycles' model, then the extra one's: "
                        + ", ".join(MODELS))
    parser.add_argument("--samples", type=int, default=1024, help="chats per run (a multiple of 128)")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--budget", type=float, default=480, help="seconds; no run starts that would end later")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    import torch
    import transformers

    from airflow_provider_training_hub.models import make_tiny_model

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"cuda": cuda(), "torch": torch.__version__, "transformers": transformers.__version__,
                    "models": {}, "checks": {}, "runs": [], "skipped": []}
    if report["cuda"]:
        report["device"] = torch.cuda.get_device_name(0)

    def save() -> None:
        summarise(report)
        (args.out / "gpu_checks.json").write_text(json.dumps(report, indent=2), encoding="utf-8")

    data = args.work / "chat.jsonl"
    make_data(data, args.samples)
    make_pairs(args.work / "pairs.jsonl", args.samples)
    names = args.models.split(",")
    models = {}
    for name in names:
        models[name] = make_tiny_model(args.work / "models" / name, data.read_text(encoding="utf-8").splitlines(),
                                       device="cuda" if report["cuda"] else "cpu", **MODELS[name])
        config = json.loads((models[name] / "config.json").read_text())
        with torch.device("meta"):
            shape = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(models[name]))
            parameters = sum(p.numel() for p in shape.parameters())
        report["models"][name] = {"parameters": parameters, **{k: config[k] for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size")}}
    report["bf16_peak_tflops"] = bf16_peak_tflops()
    for check, run in (("packed_vs_reference", lambda: packed_against_reference(models[names[0]], data,
                                                                                 args.work / "packed-check")),
                       ("load_in_4bit", lambda: four_bit_refused(models[names[0]], data, args.work))):
        try:
            report["checks"][check] = run()
        except Exception as exc:
            report["checks"][check] = {"failed": f"{type(exc).__name__}: {exc}",
                                       "traceback": traceback.format_exc()[-3000:]}
        print(json.dumps({check: report["checks"][check]}), flush=True)
    save()

    took: dict[tuple[str, str], float] = {}
    failed = False
    for cycle, engine, model in run_order(names, args.cycles):
        if needs_cuda(engine) and not report["cuda"]:
            report["skipped"].append({"engine": engine, "model": model, "cycle": cycle, "why": "needs CUDA"})
            continue
        expected = took.get((engine, model), 0 if model == names[0] else FIRST_LARGE_RUN_S)
        if time.monotonic() + expected > deadline:
            report["skipped"].append({"engine": engine, "model": model, "cycle": cycle, "why": "time budget"})
            continue
        out = args.work / "runs" / f"{engine}-{model}-{cycle}"
        started = time.monotonic()
        row = {"engine": engine, "model": model, "cycle": cycle}
        try:
            reload = cycle == 0
            row.update(upstream(models[model], data, out, reload) if engine == "upstream"
                       else ours(engine, models[model], data, out, reload))
        except Exception as exc:  # one broken run must not hide the others' figures
            failed = True
            log = out / "full_logs_global0.log"
            row.update(failed=f"{type(exc).__name__}: {exc}"[-3000:], traceback=traceback.format_exc()[-3000:],
                       rank_log_tail=log.read_text(errors="replace")[-3000:] if log.is_file() else None)
        took[(engine, model)] = time.monotonic() - started
        report["runs"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("traceback", "rank_log_tail")}), flush=True)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.parent / f"data-{out.name}", ignore_errors=True)
        save()
    save()
    print(json.dumps({k: report[k] for k in ("bf16_peak_tflops", "pairs", "goals")}, indent=2), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
