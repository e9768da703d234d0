"""Stands in for `torchrun main_ds.py ...` on this machine, which has no CUDA GPU.

It runs instructlab-training's real main_ds.py as torchrun would start it for one rank: its own
argument parser, metric loggers (JSONL, MLflow, W&B, TensorBoard), tokenizer setup, the real
``Model`` (with LoRA: peft and upstream's ``prepare_peft_model``, imported as the rank's
PYTHONPATH makes them import) and its real data loader.

GPU REPLACED, and only this: ``torch.cuda.set_device`` and ``Tensor.cuda`` (there is no device to
pick or copy to), the process group's backend (gloo for nccl), and everything from upstream's
``Accelerator`` on (accelerate shards with FSDP on GPUs only), with the CUDA training loop. At
that point the stand-in records what upstream built (``main_ds_setup.json``: the model class, its
LoRA configuration and trainable parameters, the data loader's samples and those held out for
validation, the FSDP options), then leaves what the
training loop would leave: through main_ds's own metric logger a record per epoch, an HF
checkpoint per epoch, a full-state dir. A LoRA run's checkpoints are upstream's own: the stand-in
wraps the model in torch's FSDP on the CPU, as accelerate would on GPUs, and upstream's
``save_hf_format_accelerate`` saves it (the merged model); other checkpoints are copies of the
input model (accelerate's FSDP save needs its GPU mode).

With FAKE_TORCHRUN_FAIL set it prints an error and exits 1, as a crashed rank would. With
FAKE_TORCHRUN_STOP_IN_EPOCH=N (and --on_demand_checkpointing) it does what main_ds.py does on a stop
request in epoch N: saves an HF checkpoint and a mid-epoch full state (metadata with global_step,
written with torch.save as upstream does), then exits 0.
"""

import asyncio
import inspect
import json
import logging
import os
import runpy
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from loopback import free_port  # tests/, put on the path by the fake_gpu fixture

argv = sys.argv[1:]
opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
out = Path(opts["output_dir"])
out.mkdir(parents=True, exist_ok=True)
(out / "torchrun_argv.json").write_text(json.dumps(argv))
script_at = next(i for i, a in enumerate(argv) if a.endswith("main_ds.py"))


reached = {}


class ReachedTheGpu(Exception):
    """Raised where upstream's Accelerator would take the model onto the GPU."""


def input_ids(loader) -> list[list[int]] | None:
    """A chat data loader's samples, in its dataset's order (a pretraining loader's are blocks)."""
    data = getattr(loader.dataset, "dataset", None) if loader else None
    return list(data["input_ids"]) if data is not None and "input_ids" in data.column_names else None


def reached_the_gpu(model, train_loader, **options):
    caller = inspect.currentframe().f_back.f_locals  # main_ds.main's
    reached.update(model=model, args=caller["args"])
    val_loader = caller.get("val_loader")
    lora = model.lora_config
    trainable = sum(p.numel() for p in model.model.parameters() if p.requires_grad)
    setup = {
        "model_class": type(model.model).__name__,
        "lora": None if lora is None else {"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,
                                           "target_modules": sorted(lora.target_modules)},
        "trainable_parameters": trainable,
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "samples": len(train_loader.dataset),
        # the samples in upstream's order, and those its validation_split held out
        "train_input_ids": input_ids(train_loader),
        "val_input_ids": input_ids(val_loader),
        "fsdp": {"sharding_strategy": options["fsdp_sharding_strategy"],
                 "cpu_offload_params": options["fsdp_cpu_offload_params"]},
    }
    (out / "main_ds_setup.json").write_text(json.dumps(setup))
    raise ReachedTheGpu


def gloo(*args, **kwargs):
    kwargs["backend"] = "gloo"
    return init_process_group(*args, **kwargs)


os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=str(free_port()))
torch.cuda.set_device = lambda device: None
torch.Tensor.cuda = lambda self, *args, **kwargs: self
init_process_group, dist.init_process_group = dist.init_process_group, gloo
import instructlab.training.accelerator  # noqa: E402

instructlab.training.accelerator.Accelerator = reached_the_gpu
print(f"fake torchrun: training {opts['model_name_or_path']} on {opts['data_path']}", flush=True)
sys.argv = argv[script_at:]
try:
    runpy.run_path(argv[script_at], run_name="__main__")
except ReachedTheGpu:
    pass
else:
    sys.exit("fake torchrun: main_ds.py ended without reaching its Accelerator")

if os.environ.get("FAKE_TORCHRUN_FAIL"):
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
    sys.exit(1)
samples = sum(1 for _ in open(opts["data_path"], encoding="utf-8"))
metrics = logging.getLogger("instructlab.training.metrics")


def flush_metrics():
    """Wait for upstream's asynchronous JSONL writer, which has no flush of its own."""
    for handler in metrics.handlers:
        writer = getattr(handler, "_struct_logger", None)
        if writer is not None:
            async def drained():
                await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not asyncio.current_task()))

            asyncio.run_coroutine_threadsafe(drained(), writer.loop).result(timeout=60)
        handler.flush()


def save_lora_checkpoint(samples_seen: int) -> None:
    """Upstream's own LoRA save, of the model wrapped in FSDP as its Accelerator would wrap it."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import FullyShardedDataParallel

    from instructlab.training.utils import save_hf_format_accelerate

    model = reached["model"]
    if "fsdp" not in reached:
        reached["fsdp"] = FullyShardedDataParallel(model.model, auto_wrap_policy=fsdp_auto_wrap_policy(model.model),
                                                   device_id=torch.device("cpu"))
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, is_main_process=True, get_state_dict=None)
    save_hf_format_accelerate(reached["args"], reached["fsdp"], model.tokenizer, accelerator, samples_seen,
                              is_lora=True)


for epoch in range(int(opts["num_epochs"])):
    step = epoch + 1
    if os.environ.get("FAKE_TORCHRUN_STOP_IN_EPOCH") == str(epoch) and "--on_demand_checkpointing" in argv:
        seen = samples * epoch + 1
        shutil.copytree(opts["model_name_or_path"], out / "hf_format" / f"samples_{seen}")
        (out / "full_state" / f"epoch_{epoch}").mkdir(parents=True, exist_ok=True)
        torch.save({"current_epoch": epoch, "samples_seen": seen, "global_step": step},
                   out / "full_state" / f"epoch_{epoch}" / "training_metadata.json")
        flush_metrics()
        print("On-demand checkpoint saved (before optimizer step). Exiting training.", flush=True)
        sys.exit(0)
    metrics.info({"epoch": epoch, "step": step, "avg_loss": 3.0 / step, "samples_seen": samples * step},
                 extra={"step": step})
    if "--checkpoint_at_epoch" in argv and reached["args"].lora_r:
        save_lora_checkpoint(samples * step)
    elif "--checkpoint_at_epoch" in argv:
        shutil.copytree(opts["model_name_or_path"], out / "hf_format" / f"samples_{samples * step}", dirs_exist_ok=True)
    if "--accelerate_full_state_at_epoch" in argv:
        (out / "full_state" / f"epoch_{epoch}").mkdir(parents=True, exist_ok=True)
        torch.save({"current_epoch": epoch, "samples_seen": samples * step},
                   out / "full_state" / f"epoch_{epoch}" / "training_metadata.json")
flush_metrics()
logging.shutdown()
dist.destroy_process_group()
print("fake torchrun: done", flush=True)
