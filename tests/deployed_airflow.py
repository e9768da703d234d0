"""Driving the Airflow of scripts/deployed-airflow.sh (PostgreSQL, scheduler with the
LocalExecutor, dag-processor, triggerer, api-server) through its REST API, as a user's client would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
from loopback import free_port
from polling import wait_for

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "deployed-airflow.sh"
FINISHED = {"success", "failed"}


class DeployedAirflow:
    def __init__(self, state: Path, dags_folder: Path) -> None:
        self.state = state
        # nothing of the test session's own Airflow (its home, config, env connections) leaks in
        mine = ("AIRFLOW_HOME", "AIRFLOW__", "AIRFLOW_CONN_")
        self.environ = {k: v for k, v in os.environ.items() if not k.startswith(mine)}
        self.environ.update(TRAINING_HUB_AIRFLOW_STATE=str(state), AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder))
        # Ports of its own: CI runs the real-node tests beside the other k8s tests, each session
        # with its own deployed Airflow.
        for port_variable in ("TRAINING_HUB_AIRFLOW_PORT", "TRAINING_HUB_POSTGRES_PORT"):
            self.environ.setdefault(port_variable, str(free_port()))
        started = subprocess.run(["bash", str(SCRIPT), "start"], env=self.environ, capture_output=True, text=True,
                                 timeout=600)
        assert started.returncode == 0, started.stderr[-4000:]
        self.url = f"http://127.0.0.1:{self.environ['TRAINING_HUB_AIRFLOW_PORT']}"
        self.user, self.password = next(iter(json.loads((state / "passwords.json").read_text()).items()))
        token = httpx.post(f"{self.url}/auth/token", json={"username": self.user, "password": self.password}, timeout=30)
        assert token.is_success, f"logging in to the API: {token.status_code} {token.text}"
        self.api = httpx.Client(base_url=f"{self.url}/api/v2", timeout=30,
                                headers={"Authorization": f"Bearer {token.json()['access_token']}"})

    def env(self, name: str) -> str:
        """A setting of the env file that the deployed processes run with."""
        for line in (self.state / "env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            if key == name:
                return value.strip('"')
        raise KeyError(name)

    def stop(self) -> None:
        self.api.close()
        subprocess.run(["bash", str(SCRIPT), "stop"], env=self.environ, check=False, timeout=120)

    def _ok(self, response: httpx.Response) -> Any:
        assert response.is_success, f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def set_connection(self, conn_id: str, conn_type: str, extra: dict[str, Any]) -> None:
        self.api.delete(f"/connections/{conn_id}")  # absent is fine
        self._ok(self.api.post("/connections", json={"connection_id": conn_id, "conn_type": conn_type,
                                                     "extra": json.dumps(extra)}))

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Unpause (once the dag-processor has parsed it) and trigger ``dag_id``; the run id."""
        wait_for(lambda: self.api.get(f"/dags/{dag_id}").is_success, 120, f"{dag_id} to be parsed", interval=1)
        self._ok(self.api.patch(f"/dags/{dag_id}", json={"is_paused": False}))
        return self._ok(self.api.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}))["dag_run_id"]

    def task(self, dag_id: str, run_id: str, task_id: str = "train") -> dict[str, Any]:
        return self._ok(self.api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"))

    def wait_for_task(self, dag_id: str, run_id: str, states: set[str], timeout: float, task_id: str = "train"):
        return wait_for(lambda: (ti := self.task(dag_id, run_id, task_id))["state"] in states and ti, timeout,
                        f"{dag_id}.{task_id} to be {'/'.join(sorted(states))}", interval=1)

    def mark(self, dag_id: str, run_id: str, state: str, task_id: str = "train") -> None:
        """Set a task instance's state as a user does in the UI (e.g. "Mark as failed")."""
        self._ok(self.api.patch(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", json={"new_state": state}))

    def xcom(self, dag_id: str, run_id: str, key: str, task_id: str = "train") -> Any:
        entry = self._ok(self.api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                                      params={"deserialize": True}))
        return entry["value"]

    def log(self, dag_id: str, run_id: str, try_number: int, task_id: str = "train") -> str:
        """The task log of one try, as the UI shows it (its events as text)."""
        got = self._ok(self.api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                                    params={"full_content": True}, headers={"Accept": "application/json"}))
        return json.dumps(got["content"])

    def pid(self, process: str) -> int:
        return int((self.state / "pids" / process).read_text())

    def kill(self, process: str) -> None:
        """SIGKILL an Airflow process and everything it started (its process group)."""
        os.killpg(self.pid(process), signal.SIGKILL)

    def restart(self, process: str) -> None:
        done = subprocess.run(["bash", str(SCRIPT), "restart", process], env=self.environ, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]


def task_process(ti_id: str) -> int:
    """The pid of the process that runs task instance ``ti_id`` (the Task SDK titles it so)."""
    title = f"airflow worker -- {ti_id}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().rstrip(b"\0") == title:
                    return int(entry.name)
            except OSError:
                continue
    raise AssertionError(f"no process runs task instance {ti_id}")
