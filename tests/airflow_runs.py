"""Run a DAG of the test DAG folder with ``dag.test()`` and read what it left in the metadata DB.

Imported by the tests, and run as a script (``python airflow_runs.py DAG_ID CONF_JSON``) where a
test must signal the process that runs the task; the script prints ``RESULT {json}`` at the end.
It uses the AIRFLOW_HOME and DAG folder that conftest put in the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_dag(dag_id: str, conf: dict[str, Any] | None = None):
    """``dag.test()``; the finished DagRun."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag(dag_id)
    return dag.test(run_conf=conf or {})


def xcoms(dag_run) -> dict[tuple[str, str], Any]:
    """(task_id, key) -> value of every XCom of the run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id)).all()
        return {(r.task_id, r.key): XComModel.deserialize_value(r) for r in rows}


def states(dag_run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def start_in_subprocess(dag_id: str, conf: dict[str, Any]) -> subprocess.Popen:
    """Run ``dag_id`` in a process of its own (this script), for a test that signals that process."""
    return subprocess.Popen([sys.executable, __file__, dag_id, json.dumps(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(runner: subprocess.Popen, timeout: float = 300) -> tuple[dict[str, Any], str]:
    """The ``RESULT`` of a run of ``start_in_subprocess`` and its whole output; killed if it
    outlives ``timeout``."""
    try:
        output, _ = runner.communicate(timeout=timeout)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    result = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert result, output[-4000:]
    return json.loads(result[-1][len("RESULT "):]), output


if __name__ == "__main__":
    run = run_dag(sys.argv[1], json.loads(sys.argv[2]))
    got = {f"{task}.{key}": value for (task, key), value in xcoms(run).items()}
    print("RESULT " + json.dumps({"states": states(run), "xcoms": got}), flush=True)
