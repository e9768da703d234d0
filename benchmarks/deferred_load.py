"""Load held: N concurrent deferred ``SFTTrainOperator`` tasks through Airflow as deployed.

    .venv/bin/python benchmarks/deferred_load.py [--tasks 20] [--run-ms 60000]

Airflow runs as scripts/deployed-airflow.sh starts it (PostgreSQL, scheduler with the
LocalExecutor, dag-processor, triggerer, api-server) over benchmarks/dags/; each task is a 2-pod
Job on the kwok GPU nodes of the loopback control plane (TRAINING_HUB_KUBECONFIG, else
k8s-testenv/controlplane.sh is started). Sampled every second while the run lasts: task states,
the processes running a task (worker slots in use), the triggerer's memory. At the end: whether
every task succeeded, and per task the time from its start to its Job's creation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from deployed_airflow import DeployedAirflow  # noqa: E402
from kwok_nodes import ensure_gpu_nodes  # noqa: E402

# The Task SDK's title of a process running a task (a LocalExecutor worker waiting for one is
# "airflow worker -- LocalExecutor ...").
TASK_TITLE = re.compile(rb"airflow worker -- [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\0*$")


def task_processes() -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += bool(TASK_TITLE.match((entry / "cmdline").read_bytes()))
            except OSError:
                continue
    return count


def group_rss_mib(pgid: int) -> float:
    """Resident memory of every process in process group ``pgid``."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still stop what it started
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--run-ms", type=int, default=60000, help="how long each pod 'trains' (kwok)")
    args = parser.parse_args()

    kubeconfig = os.environ.get("TRAINING_HUB_KUBECONFIG")
    if not kubeconfig:
        started = subprocess.run(["bash", str(REPO / "k8s-testenv" / "controlplane.sh"), "start"],
                                 capture_output=True, text=True, check=True)
        kubeconfig = started.stdout.strip().splitlines()[-1]
    ensure_gpu_nodes(kubeconfig)
    from kubernetes import client, config

    api = config.new_client_from_config(kubeconfig)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    namespace = f"load-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": namespace}})

    dags = Path(tempfile.mkdtemp(prefix="training-hub-load-dags-"))
    shutil.copy(REPO / "benchmarks" / "dags" / "th_load_deferred.py", dags)
    state = Path(tempfile.mkdtemp(prefix="training-hub-load-airflow-"))
    state.chmod(0o755)
    os.environ["TRAINING_HUB_LOAD_TASKS"] = str(args.tasks)
    airflow = DeployedAirflow(state, dags)
    try:
        airflow.set_connection("kubernetes_default", "kubernetes", {"kube_config_path": kubeconfig})
        airflow.set_connection("training_hub_k8s", "training_hub", {
            "execution": "kubernetes", "namespace": namespace, "image": "registry.example/training-hub:test",
            "cpu": "1", "memory": "1Gi", "node_selector": {"gpu": "h100"}})
        triggerer = airflow.pid("triggerer")
        idle_rss = group_rss_mib(triggerer)
        run_id = airflow.trigger("th_load_deferred", {"run_ms": args.run_ms})
        started_at: dict[int, datetime] = {}
        timeline: list[dict[str, int]] = []  # every 15 s: tasks by state, processes running a task
        most_deferred, running_then, peak_rss = 0, None, idle_rss
        t0 = deadline = time.monotonic()
        deadline += 900
        while time.monotonic() < deadline:
            tis = airflow._ok(airflow.api.get(f"/dags/th_load_deferred/dagRuns/{run_id}/taskInstances",
                                              params={"limit": 100}))["task_instances"]
            for ti in tis:
                if ti["start_date"] and ti["map_index"] not in started_at:
                    started_at[ti["map_index"]] = parse_time(ti["start_date"])
            deferred = sum(ti["state"] == "deferred" for ti in tis)
            running = task_processes()
            if deferred > most_deferred:
                most_deferred, running_then = deferred, running
            if not timeline or time.monotonic() - t0 >= 15 * len(timeline):
                counts = {state: sum(ti["state"] == state for ti in tis) for state in {ti["state"] for ti in tis}}
                timeline.append({"s": round(time.monotonic() - t0), **counts, "task_processes": running})
            peak_rss = max(peak_rss, group_rss_mib(triggerer))
            if tis and all(ti["state"] in ("success", "failed") for ti in tis) and len(tis) == args.tasks:
                break
            time.sleep(1)
        states = {ti["map_index"]: ti["state"] for ti in tis}
        created = {int(job.metadata.annotations["training-hub/map-index"]): job.metadata.creation_timestamp
                   for job in batch.list_namespaced_job(namespace).items}
        delays = sorted((created[i] - started_at[i]).total_seconds() for i in created if i in started_at)
        if len(delays) < 2:
            print(f"task states {states}; Jobs of map indexes {sorted(created)}", file=sys.stderr)
            return 1
        summary = {
            "tasks": args.tasks,
            "succeeded": sum(state == "success" for state in states.values()),
            "most_deferred_at_once": most_deferred,
            "task_processes_then": running_then,
            "parallelism": int(airflow.env("AIRFLOW__CORE__PARALLELISM")),
            "wall_s": round(time.monotonic() - t0),
            "start_to_job_created_s": {"median": statistics.median(delays),
                                       "p95": statistics.quantiles(delays, n=20, method="inclusive")[18], "max": delays[-1]},
            "triggerer_rss_mib": {"idle": round(idle_rss), "peak": round(peak_rss)},
            "timeline": timeline,
        }
        print(json.dumps(summary, indent=2))
        return 0 if summary["succeeded"] == args.tasks else 1
    finally:
        airflow.stop()
        core.delete_namespace(namespace)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(dags, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
