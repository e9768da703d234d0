"""Kubernetes API faults during a training Job, against the loopback control plane of
test_kubernetes.py (kwok nodes; GPU REPLACED as described there).

The faults are real: toxiproxy (built by k8s-testenv/controlplane.sh) sits between Airflow and the
API server and resets, delays or cuts the connections; the API server itself answers 401, 403 and
404, and 429 from its own flow control (API Priority and Fairness); a task process and the triggerer of Airflow as deployed (scripts/deployed-airflow.sh) are
SIGKILLed. Airflow's `kubernetes_default` connection goes through the proxy where there is one;
the tests watch the cluster directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from airflow_runs import finish, run_dag, start_in_subprocess, states
from conftest import wait_for
from toxiproxy import Toxiproxy
from test_kubernetes import RESULT, _annotations, _objects, _running_pods

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("airflow_db")]

RETRY_LOG = "Retrying airflow_provider_training_hub."  # tenacity's warning before each retry


@pytest.fixture
def proxy(k8s_cluster, k8s_namespace, tmp_path):
    """Toxiproxy in front of the API server, and `kubernetes_default` pointing at it."""
    config = yaml.safe_load(Path(k8s_cluster).read_text())
    server = config["clusters"][0]["cluster"]["server"]
    toxiproxy = Toxiproxy(server.removeprefix("https://"), tmp_path)
    config["clusters"][0]["cluster"]["server"] = f"https://{toxiproxy.listen}"  # the certificate is for 127.0.0.1
    proxied = tmp_path / "kubeconfig-proxied"
    proxied.write_text(yaml.safe_dump(config))
    os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(proxied)}}
    )
    yield toxiproxy
    toxiproxy.stop()


@pytest.mark.parametrize("dag_id", ["th_k8s_train", "th_k8s_train_deferred"])
def test_resets_latency_and_timeouts_while_waiting_are_retried(kube, k8s_namespace, proxy, dag_id):
    runner = start_in_subprocess(dag_id, {
        "nnodes": 2, "pod_annotations": _annotations(**{"training-hub.test/run-ms": "25000"}),
    })
    try:
        wait_for(_running_pods(kube, k8s_namespace, 2), 120, "both pods to run")
        for kind, attributes, seconds in (
            ("reset_peer", {"timeout": 0}, 4),  # every connection reset at once
            ("latency", {"latency": 1500}, 3),  # slow answers
            ("timeout", {"timeout": 1000}, 4),  # no answer, connection closed after a second
        ):
            proxy.toxic(kind, **attributes)
            time.sleep(seconds)
            proxy.clear(kind)
        result, output = finish(runner)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert result["states"] == {"train": "success"}, output[-4000:]
    assert result["xcoms"]["train.checkpoint"].endswith("samples_96")
    assert RETRY_LOG in output


def test_an_api_outage_longer_than_the_retries_is_waited_out_by_the_trigger(kube, k8s_namespace, proxy):
    """The API server gone for 40 s, longer than each call's retries (about 15 s): the deferred
    task's trigger waits it out, and the Job, which trained on meanwhile, is neither abandoned
    nor deleted."""
    runner = start_in_subprocess("th_k8s_train_deferred", {
        "nnodes": 2, "pod_annotations": _annotations(**{"training-hub.test/run-ms": "50000"}),
    })
    try:
        wait_for(_running_pods(kube, k8s_namespace, 2), 120, "both pods to run")
        time.sleep(2)  # the trigger is watching
        proxy.enabled(False)  # every connection refused
        time.sleep(40)
        proxy.enabled(True)
        result, output = finish(runner)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert result["states"] == {"train": "success"}, output[-4000:]
    assert "The Kubernetes API cannot be reached" in output and "The Kubernetes API answers again after" in output
    assert result["xcoms"]["train.checkpoint"].endswith("samples_96")


class JobWatch:
    """Every Job event of a namespace, in order, from a watch of the API server (not the proxy)."""

    def __init__(self, kube, namespace: str) -> None:
        from kubernetes import watch

        self.events: list[tuple[str, str, bool]] = []  # (type, job name, being deleted)
        self.error: Exception | None = None
        self._stopped = False
        self._watch = watch.Watch()
        batch = kube[1]
        listed = batch.list_namespaced_job(namespace)
        assert not listed.items
        self._thread = threading.Thread(
            target=self._run, args=(batch, namespace, listed.metadata.resource_version), daemon=True
        )
        self._thread.start()

    def _run(self, batch, namespace: str, resource_version: str) -> None:
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        while not self._stopped:
            try:
                for event in self._watch.stream(batch.list_namespaced_job, namespace,
                                                resource_version=resource_version, timeout_seconds=600):
                    job = event["object"]
                    resource_version = job.metadata.resource_version
                    self.events.append((event["type"], job.metadata.name, job.metadata.deletion_timestamp is not None))
            except ApiException as exc:
                if exc.status == 410:  # events were lost: the test fails on it, a gap proves nothing
                    self.error = exc
                    return
                time.sleep(0.5)  # e.g. the API server's watch cache behind the list it answered
            except HTTPError:  # the connection ended: watch again from the last event seen
                time.sleep(0.5)

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()
        assert self.error is None, f"the watch of Jobs failed: {self.error}"

    def most_alive_at_once(self) -> int:
        """Jobs that existed and were not being deleted, at the worst moment."""
        alive: set[str] = set()
        most = 0
        for kind, name, deleting in self.events:
            if kind == "DELETED" or deleting:
                alive.discard(name)
            else:
                alive.add(name)
            most = max(most, len(alive))
        return most


def test_a_retry_not_durable_removes_the_earlier_tries_job_before_creating_its_own(kube, k8s_namespace, proxy):
    """``durable=False``, and a durable retry whose stored Job it may not adopt (another training,
    or a Job created in the moment before the store's write), start their own Job: the earlier
    one is deleted first, its pods gone, so that two runs never write one checkpoint directory."""
    watch = JobWatch(kube, k8s_namespace)
    runner = start_in_subprocess("th_k8s_train_retried_anew", {
        "nnodes": 2, "pod_annotations": _annotations(**{"training-hub.test/run-ms": "60000"}),
    })
    try:
        wait_for(_running_pods(kube, k8s_namespace, 2), 120, "both pods of try 1 to run")
        proxy.enabled(False)  # an API outage longer than the retries: try 1 fails, its Job runs on
        time.sleep(25)
        proxy.enabled(True)  # back before try 2 starts (retry_delay 20 s)
        result, output = finish(runner, timeout=400)
    finally:
        watch.stop()
        if runner.poll() is None:
            runner.kill()
    assert result["states"] == {"train": "success"}, output[-4000:]
    added = [name for kind, name, _ in watch.events if kind == "ADDED"]
    assert len(added) == 2, watch.events  # one Job per try
    first, second = added
    assert watch.most_alive_at_once() == 1, watch.events
    deleted_at = watch.events.index(("DELETED", first, True))
    assert watch.events.index(("ADDED", second, False)) > deleted_at, watch.events
    assert "of try 1 of this task is still there; deleting it" in output


class FlowControl:
    """The API server's own rate limit on the `throttled` user (k8s-testenv/controlplane.sh).

    API Priority and Fairness puts the user's requests in a priority level with no seats of its
    own and the Reject limit response: such a level runs one request at a time and answers every
    other one at once with 429 Too Many Requests and Retry-After. One request of the user is kept
    in flight (a create whose body never finishes arriving), so each request of the task is refused
    until ``lift()``.
    """

    NAME = "th-test-throttled"

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(kubeconfig)
        self.flow, self.rbac = client.FlowcontrolApiserverV1Api(api), client.RbacAuthorizationV1Api(api)
        try:
            self._limit(kubeconfig, namespace)
        except BaseException:
            self.remove()
            raise

    def _limit(self, kubeconfig: str, namespace: str) -> None:
        from kubernetes import client, config

        self.rbac.create_cluster_role_binding({
            "metadata": {"name": self.NAME},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "throttled"}],
        })
        self.flow.create_priority_level_configuration({"metadata": {"name": self.NAME}, "spec": {
            "type": "Limited",
            "limited": {"nominalConcurrencyShares": 0, "lendablePercent": 0, "borrowingLimitPercent": 0,
                        "limitResponse": {"type": "Reject"}},
        }})
        self.flow.create_flow_schema({"metadata": {"name": self.NAME}, "spec": {
            "matchingPrecedence": 100,
            "priorityLevelConfiguration": {"name": self.NAME},
            "rules": [{
                "subjects": [{"kind": "User", "user": {"name": "throttled"}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"],
                                   "clusterScope": True}],
            }],
        }})
        self.kubeconfig = str(Path(kubeconfig).with_name("kubeconfig-throttled"))
        throttled = client.CoreV1Api(config.new_client_from_config(self.kubeconfig))
        # The API server applies a new flow schema when its config controller next runs: on a loaded
        # machine (CI runs three test sessions at once) a create sent before that takes a seat of
        # another priority level, and the throttled user's requests go through for as long as it is
        # held (CI, twice, with the SmolLM2 DPO tests beside it). So it is sent again until they are refused.
        deadline = time.monotonic() + 120
        while not self._holds_the_seat(throttled, namespace):
            if time.monotonic() > deadline:
                raise AssertionError("the API server never refused the throttled user in 120 s")
        self.probes = self.rejected()

    def _holds_the_seat(self, throttled, namespace: str) -> bool:
        """Send the create that stays in flight; whether the throttled user is refused within 5 s
        (if not, the create is dropped: it holds some other priority level's seat)."""
        self._in_flight = self._unfinished_create(namespace)
        for _ in range(10):
            if self._refused(throttled):
                return True
            time.sleep(0.5)
        self._in_flight.close()
        return False

    def _unfinished_create(self, namespace: str):
        import ssl
        from urllib.parse import urlsplit

        config = yaml.safe_load(Path(self.kubeconfig).read_text())
        server = urlsplit(config["clusters"][0]["cluster"]["server"])
        token = config["users"][0]["user"]["token"]
        context = ssl.create_default_context(cafile=config["clusters"][0]["cluster"]["certificate-authority"])
        conn = context.wrap_socket(socket.create_connection((server.hostname, server.port)),
                                   server_hostname=server.hostname)
        conn.sendall(f"POST /api/v1/namespaces/{namespace}/configmaps HTTP/1.1\r\nHost: {server.netloc}\r\n"
                     f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000\r\n\r\n{".encode())
        return conn

    @staticmethod
    def _refused(core) -> bool:
        from kubernetes.client import ApiException

        try:
            core.list_namespace(limit=1)
        except ApiException as exc:
            assert exc.status == 429, exc
            assert exc.headers.get("Retry-After"), exc.headers
            return True
        return False

    def rejected(self) -> int:
        """Requests the API server has refused under this flow schema (its own metric)."""
        import ssl

        config = self.flow.api_client.configuration
        text = httpx.get(f"{config.host}/metrics", headers={"Authorization": config.auth_settings()["BearerToken"]["value"]},
                         verify=ssl.create_default_context(cafile=config.ssl_ca_cert), timeout=30).raise_for_status().text
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("apiserver_flowcontrol_rejected_requests_total{")
                   and f'flow_schema="{self.NAME}"' in line)

    def lift(self) -> None:
        self._in_flight.close()

    def remove(self) -> None:
        from kubernetes.client import ApiException

        if hasattr(self, "_in_flight"):
            self.lift()
        for delete in (self.flow.delete_flow_schema, self.flow.delete_priority_level_configuration,
                       self.rbac.delete_cluster_role_binding):
            try:
                delete(self.NAME)
            except ApiException as exc:
                if exc.status != 404:  # not made: the set-up failed before it
                    raise


def test_the_api_servers_own_429s_are_retried(kube, k8s_cluster, k8s_namespace):
    """Real 429s: the API server's flow control rejects the connection's user; the task's first
    call is refused, it waits as Retry-After says, and it goes on once the limit is lifted."""
    limit = FlowControl(k8s_cluster, k8s_namespace)
    try:
        os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
            {"conn_type": "kubernetes", "extra": {"kube_config_path": limit.kubeconfig}}
        )
        runner = start_in_subprocess("th_k8s_train", {"nnodes": 2, "pod_annotations": _annotations()})
        try:
            # urllib3 itself retries a refused read 3 times as Retry-After says; then the refusal
            # reaches the task's own retry, whose log the test reads: 5 refusals at least
            wait_for(lambda: runner.poll() is not None or limit.rejected() >= limit.probes + 5, 120,
                     "the task's requests to be refused")
            limit.lift()
            result, output = finish(runner)
        finally:
            if runner.poll() is None:
                runner.kill()
    finally:
        limit.remove()
    assert result["states"] == {"train": "success"}, output[-4000:]
    assert RETRY_LOG in output
    assert "(429)" in output and "Too Many Requests" in output, output[-4000:]
    assert _objects(kube, k8s_namespace)["jobs"] == [result["xcoms"]["train.job_name"]]


@pytest.mark.parametrize("fault, expected", [
    ("no-rights", '403 Forbidden: jobs.batch is forbidden: User "no-rights" cannot list resource "jobs"'),
    ("bad-token", "401 Unauthorized"),
    ("no-namespace", '404 Not Found: namespaces "no-such-namespace" not found'),
])
def test_permanent_api_errors_fail_the_task_at_once_without_retry(k8s_cluster, k8s_namespace, capfd, fault, expected):
    config = yaml.safe_load(Path(k8s_cluster).read_text())
    if fault == "no-rights":
        config = yaml.safe_load(Path(k8s_cluster).with_name("kubeconfig-no-rights").read_text())
    elif fault == "bad-token":
        config["users"][0]["user"]["token"] = "0" * 32
    kubeconfig = Path(k8s_cluster).with_name(f"kubeconfig-{k8s_namespace}-{fault}")
    kubeconfig.write_text(yaml.safe_dump(config))
    os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}
    )
    overrides = {"namespace": "no-such-namespace"} if fault == "no-namespace" else {}
    run = run_dag("th_k8s_train_retried", {"overrides": overrides, "pod_annotations": _annotations()})
    out = capfd.readouterr().out
    assert states(run) == {"train": "failed"}
    (ti,) = run.get_task_instances()
    assert ti.try_number == 1  # retries=1, yet no second try
    assert "The Kubernetes API refused Job th-th-k8s-train-retried-train-" in out
    assert expected in out
    assert RETRY_LOG not in out


# --- on Airflow as deployed: PostgreSQL, scheduler (LocalExecutor), dag-processor, triggerer, api-server ---


@pytest.fixture
def deployed(deployed_airflow, k8s_cluster, k8s_namespace):
    """The deployed Airflow's connections pointing at this test's namespace (straight, no proxy)."""
    deployed_airflow.set_connection("kubernetes_default", "kubernetes", {"kube_config_path": k8s_cluster})
    deployed_airflow.set_connection("training_hub_k8s", "training_hub", json.loads(
        os.environ["AIRFLOW_CONN_TRAINING_HUB_K8S"])["extra"])
    return deployed_airflow


def test_task_process_killed_mid_wait_its_retry_adopts_the_same_job(kube, k8s_namespace, deployed):
    """Airflow's durable execution (``ResumableJobMixin``): the try after a dead worker finds the
    Job in the task state store and waits for it; no second Job, no training lost."""
    from deployed_airflow import task_process

    watch = JobWatch(kube, k8s_namespace)
    try:
        run_id = deployed.trigger("th_k8s_train_retried", {
            "nnodes": 2, "pod_annotations": _annotations(**{"training-hub.test/run-ms": "45000"}),
        })
        wait_for(_running_pods(kube, k8s_namespace, 2), 180, "both pods of try 1 to run")
        (job_name,) = _objects(kube, k8s_namespace)["jobs"]
        ti = deployed.task("th_k8s_train_retried", run_id)
        os.kill(task_process(ti["id"]), signal.SIGKILL)  # the worker's task process, mid-wait
        ti = deployed.wait_for_task("th_k8s_train_retried", run_id, {"success", "failed"}, 400)
    finally:
        watch.stop()
    assert (ti["state"], ti["try_number"]) == ("success", 2)
    assert [(kind, name) for kind, name, _ in watch.events if kind == "ADDED"] == [("ADDED", job_name)], watch.events
    log = deployed.log("th_k8s_train_retried", run_id, 2)
    assert "Reconnecting to existing job" in log and job_name in log
    assert "still there; deleting it" not in log
    assert deployed.xcom("th_k8s_train_retried", run_id, "job_name") == job_name
    assert deployed.xcom("th_k8s_train_retried", run_id, "checkpoint") == RESULT["checkpoint"]


def test_triggerer_killed_and_restarted_mid_wait(kube, k8s_namespace, deployed):
    watch = JobWatch(kube, k8s_namespace)
    try:
        run_id = deployed.trigger("th_k8s_train_deferred", {
            "nnodes": 2, "pod_annotations": _annotations(**{"training-hub.test/run-ms": "40000"}),
        })
        deployed.wait_for_task("th_k8s_train_deferred", run_id, {"deferred"}, 180)
        wait_for(_running_pods(kube, k8s_namespace, 2), 120, "both pods to run")
        deployed.kill("triggerer")
        time.sleep(5)
        deployed.restart("triggerer")
        ti = deployed.wait_for_task("th_k8s_train_deferred", run_id, {"success", "failed"}, 300)
    finally:
        watch.stop()
    assert (ti["state"], ti["try_number"]) == ("success", 1)
    assert deployed.xcom("th_k8s_train_deferred", run_id, "checkpoint") == RESULT["checkpoint"]
    assert [name for kind, name, _ in watch.events if kind == "ADDED"] == [
        deployed.xcom("th_k8s_train_deferred", run_id, "job_name")]


def test_deferred_task_past_its_execution_timeout_fails_and_deletes_its_job(kube, k8s_namespace, deployed):
    run_id = deployed.trigger("th_k8s_train_deferred_timeout", {
        "nnodes": 2, "pod_annotations": _annotations(**{"training-hub.test/run-ms": "600000"}),
    })
    wait_for(_running_pods(kube, k8s_namespace, 2), 180, "both pods to run")
    # the deadline of a Job whose task is gone: the 30 s execution_timeout and a minute
    assert [j.spec.active_deadline_seconds for j in kube[1].list_namespaced_job(k8s_namespace).items] == [90]
    ti = deployed.wait_for_task("th_k8s_train_deferred_timeout", run_id, {"success", "failed"}, 180)
    assert ti["state"] == "failed"
    assert "TaskDeferralTimeout" in deployed.log("th_k8s_train_deferred_timeout", run_id, 1)
    wait_for(lambda: _objects(kube, k8s_namespace) == {"jobs": [], "services": [], "pods": []}, 60,
              "the Job, the Service and the pods to be gone")
