"""What a user waits for on real pods (k8s-testenv/real-node.sh), against the same run as local
processes.

    .venv/bin/python benchmarks/real_pods.py --pairs 3 --epochs 4

Each pair runs, interleaved: (A) a 2-node Indexed Job of the training image (nproc_per_node=1,
the `pytorch` backend, the tiny model, the sample data on the node's volume), created with the
provider's own builders, and (B) the same training as 2 local ranks (`training-hub sft
--nproc-per-node 2`). It reports, for A: Job created -> both pods Running, and Job created ->
rank 0's first step line (the kubelet's timestamp of that log line); for both: the step rate,
from rank 0's metrics file (steps after the first over the time between the first and the last
step's record), and the median of the pairwise ratios. Needs TRAINING_HUB_REAL_NODE (the JSON
line of `real-node.sh up`) or a node that is up at the default state directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' polling helper

from polling import wait_for  # noqa: E402

from airflow_provider_training_hub.checkpoints import METRICS_FILE  # noqa: E402
from airflow_provider_training_hub.connection import ConnectionSettings  # noqa: E402
from airflow_provider_training_hub.kubernetes import TrainingJob, build_job, build_service  # noqa: E402
from airflow_provider_training_hub.models import make_tiny_model  # noqa: E402

SAMPLE = REPO / "airflow_provider_training_hub" / "samples" / "sft_sample.jsonl"
MOUNT = "/mnt/training"


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def step_rate(metrics: Path) -> float:
    """Steps per second between the first and the last step's record of rank 0's metrics file."""
    steps = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in steps if "step" in r and not r.get("hparams")]
    times = [datetime.fromisoformat(r["timestamp"]).timestamp() for r in steps]
    return (len(steps) - 1) / (times[-1] - times[0])


def pod_run(node: dict, volume: Path, params: dict, name: str) -> dict:
    from kubernetes import client, config

    api = config.new_client_from_config(node["kubeconfig"])
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    settings = ConnectionSettings(image=node["training_image"], namespace=node["namespace"],
                                  pvc_claim=node["pvc_claim"], node_selector=node["node_selector"],
                                  cpu="500m", memory="6Gi", shm_size="512Mi")
    job = TrainingJob(name=name, algorithm="sft", backend="pytorch", nnodes=2, nproc_per_node=1,
                      params={**params, "ckpt_output_dir": f"{MOUNT}/bench/{name}"}, ttl_seconds_after_finished=30)
    core.create_namespaced_service(settings.namespace, build_service(job, settings))
    created = batch.create_namespaced_job(settings.namespace, build_job(job, settings)).metadata.creation_timestamp
    selector = f"batch.kubernetes.io/job-name={name}"

    def pods():
        return core.list_namespaced_pod(settings.namespace, label_selector=selector).items

    def both_running():
        started = [p.status.container_statuses[0].state.running.started_at for p in pods()
                   if p.status.container_statuses and p.status.container_statuses[0].state.running]
        return len(started) == 2 and max(started)

    running = wait_for(both_running, 600, "both pods to run", interval=0.2)
    rank0 = next(p.metadata.name for p in pods() if p.metadata.annotations[
        "batch.kubernetes.io/job-completion-index"] == "0")

    def first_step():
        log = core.read_namespaced_pod_log(rank0, settings.namespace, container="trainer", timestamps=True,
                                           _preload_content=False).data.decode()
        for line in log.splitlines():
            stamp, _, text = line.partition(" ")
            if text.startswith("[training-hub] epoch 1/") and " step 1/" in text:
                return _stamp(stamp)
        return None

    first = wait_for(first_step, 900, "rank 0's first step line", interval=0.5)
    wait_for(lambda: (s := batch.read_namespaced_job(name, settings.namespace).status).succeeded == 2 or s.failed,
             1800, "the Job to end", interval=1)
    assert batch.read_namespaced_job(name, settings.namespace).status.succeeded == 2, f"Job {name} failed"
    batch.delete_namespaced_job(name, settings.namespace, propagation_policy="Foreground")
    core.delete_namespaced_service(name, settings.namespace)
    return {"to_running_s": running.timestamp() - created.timestamp(), "to_first_step_s": first - created.timestamp(),
            "steps_per_s": step_rate(volume / "bench" / name / METRICS_FILE)}


def local_run(model: Path, params: dict, out: Path) -> dict:
    config = {**params, "model_path": str(model), "data_path": str(SAMPLE), "ckpt_output_dir": str(out)}
    env = {**os.environ, "BENCH_CONFIG": json.dumps(config), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(Path(sys.executable).with_name("training-hub")), "sft", "--backend", "pytorch",
                           "--config-env", "BENCH_CONFIG", "--nproc-per-node", "2"], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"steps_per_s": step_rate(out / METRICS_FILE)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    line = os.environ.get("TRAINING_HUB_REAL_NODE")
    if not line:
        raise SystemExit("set TRAINING_HUB_REAL_NODE to the JSON line of `bash k8s-testenv/real-node.sh up`")
    node = json.loads(line)
    volume = Path(node["host_path"])
    work = Path(tempfile.mkdtemp(prefix="bench-real-pods-"))
    model = make_tiny_model(work / "tiny", SAMPLE.read_text(encoding="utf-8").splitlines())
    for path, target in ((model, volume / "models" / "bench-tiny"), (SAMPLE, volume / "data" / "bench.jsonl")):
        (shutil.copytree(path, target, dirs_exist_ok=True) if path.is_dir() else
         (target.parent.mkdir(parents=True, exist_ok=True), shutil.copy(path, target)))
    (volume / "bench").mkdir(exist_ok=True)
    for path in [volume / "bench", volume / "data" / "bench.jsonl", volume / "models" / "bench-tiny",
                 *(volume / "models" / "bench-tiny").iterdir()]:
        os.chown(path, 1000, 1000)
    params = {"num_epochs": args.epochs, "learning_rate": 1e-3, "effective_batch_size": 8, "max_seq_len": 256,
              "accelerate_full_state_at_epoch": False, "checkpoint_at_epoch": False}
    pods, local = [], []
    for i in range(args.pairs):
        name = f"bench-{int(time.time())}-{i}"
        pods.append(pod_run(node, volume, {**params, "model_path": f"{MOUNT}/models/bench-tiny",
                                           "data_path": f"{MOUNT}/data/bench.jsonl"}, name))
        local.append(local_run(model, params, work / f"local-{i}"))
        print(f"pair {i + 1}: pods {pods[-1]}, local {local[-1]}", flush=True)
    ratios = [p["steps_per_s"] / q["steps_per_s"] for p, q in zip(pods, local)]
    print(json.dumps({
        "job_created_to_both_running_s": statistics.median(p["to_running_s"] for p in pods),
        "job_created_to_first_step_s": statistics.median(p["to_first_step_s"] for p in pods),
        "pods_steps_per_s": statistics.median(p["steps_per_s"] for p in pods),
        "local_steps_per_s": statistics.median(q["steps_per_s"] for q in local),
        "pods_over_local_median_ratio": statistics.median(ratios), "ratios": ratios,
    }, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
