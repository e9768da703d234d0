"""benchmarks/deferred_load.py's DAG: N mapped deferred SFT tasks, each a 2-pod Job on kwok nodes.

The pods' run time and result come from kwok annotations (k8s-testenv/kwok-stages.yaml), so the
load is Airflow's and the control plane's alone: no training runs.
"""

from __future__ import annotations

import json
import os

from airflow.sdk import DAG

from airflow_provider_training_hub.operators import SFTTrainOperator

TASKS = int(os.environ.get("TRAINING_HUB_LOAD_TASKS", "20"))
RESULT = {"ckpt_output_dir": "/mnt/training/checkpoints/load", "checkpoint": "/mnt/training/checkpoints/load/hf_format/samples_8",
          "checkpoints": [], "full_state": [], "metrics": {"steps": 1}}

with DAG("th_load_deferred", schedule=None, max_active_tasks=TASKS):
    SFTTrainOperator.partial(
        task_id="train",
        training_hub_conn_id="training_hub_k8s",
        backend="pytorch",
        model_path="/mnt/training/models/tiny",
        data_path="/mnt/training/data/train.jsonl",
        nnodes=2,
        deferrable=True,
        poll_interval=5,
        pod_annotations={"training-hub.test/run-ms": "{{ dag_run.conf.get('run_ms', 60000) }}",
                         "training-hub.test/result": json.dumps(RESULT)},
    ).expand(ckpt_output_dir=[f"/mnt/training/checkpoints/load/{i}" for i in range(TASKS)])
