"""Stands in for `torchrun main_ds.py ...` where a CUDA GPU is required and none exists here.

instructlab-training's real `run_training` builds the command and spawns it; only this GPU step
is replaced. It records the exact command line, then leaves what main_ds.py would leave: an HF
checkpoint per epoch (a copy of the input model), a full-state dir and the metrics JSONL. With
Tracking arguments go to instructlab's real metric loggers, as main_ds.py sends them. With
FAKE_TORCHRUN_FAIL set it prints an error and exits 1, as a crashed rank would. With
FAKE_TORCHRUN_STOP_IN_EPOCH=N (and --on_demand_checkpointing) it does what main_ds.py does on a stop
request in epoch N: saves an HF checkpoint and a mid-epoch full state (metadata with global_step,
written with torch.save as upstream does), then exits 0.
"""

import json
import os
import shutil
import sys
from pathlib import Path

argv = sys.argv[1:]
opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
out = Path(opts["output_dir"])
(out / "torchrun_argv.json").write_text(json.dumps(argv))
print(f"fake torchrun: training {opts['model_name_or_path']} on {opts['data_path']}", flush=True)
if os.environ.get("FAKE_TORCHRUN_FAIL"):
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
    sys.exit(1)
samples = sum(1 for _ in open(opts["data_path"], encoding="utf-8"))
tracking = {k: v for k, v in opts.items() if k.startswith(("mlflow_", "wandb_", "tensorboard_"))}
tracked = None
if tracking:  # main_ds.py's own setup_metric_logger call (its JSONL copy kept aside from ours)
    import logging

    from instructlab.training.logger import setup_metric_logger

    os.environ.update(RANK="0", LOCAL_RANK="0")
    setup_metric_logger(str(out / "upstream-metric-logger"), **tracking)
    tracked = logging.getLogger("instructlab.training.metrics")


def log_metrics(record, **extra):
    metrics.write(json.dumps({**record, **extra}) + "\n")
    if tracked:
        tracked.info(record, extra=extra if "hparams" in extra else {"step": record["step"]})


with open(out / "training_params_and_metrics_global0.jsonl", "a", encoding="utf-8") as metrics:
    log_metrics({"learning_rate": float(opts["learning_rate"])}, hparams=True)
    for epoch in range(int(opts["num_epochs"])):
        step = epoch + 1
        if os.environ.get("FAKE_TORCHRUN_STOP_IN_EPOCH") == str(epoch) and "--on_demand_checkpointing" in argv:
            import torch

            seen = samples * epoch + 1
            shutil.copytree(opts["model_name_or_path"], out / "hf_format" / f"samples_{seen}")
            (out / "full_state" / f"epoch_{epoch}").mkdir(parents=True, exist_ok=True)
            torch.save({"current_epoch": epoch, "samples_seen": seen, "global_step": step},
                       out / "full_state" / f"epoch_{epoch}" / "training_metadata.json")
            print("On-demand checkpoint saved (before optimizer step). Exiting training.", flush=True)
            sys.exit(0)
        log_metrics({"epoch": epoch, "step": step, "avg_loss": 3.0 / step, "samples_seen": samples * step})
        if "--checkpoint_at_epoch" in argv:
            shutil.copytree(opts["model_name_or_path"], out / "hf_format" / f"samples_{samples * step}", dirs_exist_ok=True)
        if "--accelerate_full_state_at_epoch" in argv:
            import torch

            (out / "full_state" / f"epoch_{epoch}").mkdir(parents=True, exist_ok=True)
            torch.save({"current_epoch": epoch, "samples_seen": samples * step},
                       out / "full_state" / f"epoch_{epoch}" / "training_metadata.json")
print("fake torchrun: done", flush=True)
