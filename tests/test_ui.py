"""The Airflow UI in a real browser: Debian's Chromium, driven by Playwright (which downloads
nothing: it launches /usr/bin/chromium), against Airflow as deployed (PostgreSQL, scheduler,
dag-processor, triggerer, api-server; ``deployed_airflow``).

What a UI user does: log in, trigger ``sft_demo`` from its form, see a bad value refused before
any run, read the checkpoint XCom of the finished run, find the ``training_hub`` connection
form's fields, and follow a tracked run's "MLflow run" link. Screenshots go to ``$TRAINING_HUB_UI_SCREENSHOTS`` (default: pytest's temporary
directory), never into the repository.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
from polling import wait_for

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"  # Debian's package (apt-get install chromium); .ci/run installs it
TUNED = {"model": "tiny", "num_epochs": "2"}
QUESTION = "What is the Training Hub mascot called?"


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    where = Path(os.environ.get("TRAINING_HUB_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture(scope="module")
def page(deployed_airflow, screenshots):
    """A logged-in page: the simple auth manager's own login form, with the test bed's password."""
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # root in CI
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(deployed_airflow.url)
        page.get_by_text("Sign into Airflow").wait_for()
        page.fill("input[name=username]", deployed_airflow.user)
        page.fill("input[name=password]", deployed_airflow.password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{deployed_airflow.url}/")
        page.get_by_role("link", name="Dags").first.wait_for()
        page.screenshot(path=screenshots / "1-logged-in.png")
        yield page
        browser.close()


def _trigger_form(page, url: str):
    page.goto(f"{url}/dags/sft_demo")
    page.get_by_role("button", name="Trigger").first.click()
    form = page.get_by_role("dialog")
    form.get_by_text("Run Parameters").wait_for()
    return form


def _runs(airflow) -> list[dict]:
    return airflow._ok(airflow.api.get("/dags/sft_demo/dagRuns"))["dag_runs"]


def test_a_ui_user_triggers_sft_demo_and_reads_its_checkpoint(deployed_airflow, page, screenshots):
    url = deployed_airflow.url
    wait_for(lambda: deployed_airflow.api.get("/dags/sft_demo").is_success, 120, "sft_demo to be parsed", interval=1)
    assert _runs(deployed_airflow) == []

    # The form shows the Params with the schema's help text.
    form = _trigger_form(page, url)
    form.get_by_text("Peak learning rate, reached after warmup").wait_for()
    lines = form.inner_text().splitlines()
    for label in ("Model", "Algorithm", "Backend", "Num Epochs", "Learning Rate", "Effective Batch Size",
                  "Max Seq Len", "Questions"):
        assert label in lines, label
    assert "has no default" not in form.inner_text()

    # A negative learning rate is refused by the API server, and no run exists.
    form.locator("[name=element_learning_rate]").fill("-0.001")
    form.get_by_role("button", name="Trigger").click()
    page.get_by_text("Invalid input for param learning_rate: -0.001 is less than or equal to the minimum of 0").wait_for()
    page.screenshot(path=screenshots / "2-negative-learning-rate-refused.png", full_page=True)
    assert _runs(deployed_airflow) == []

    # A valid trigger, with the epochs and a question changed.
    form = _trigger_form(page, url)
    form.locator("[name=element_learning_rate]").fill("")
    for name, value in TUNED.items():
        form.locator(f"[name=element_{name}]").fill(value)
    form.locator("[name=element_questions]").fill(f"{QUESTION}\nWhat file format does Training Hub read?")
    page.screenshot(path=screenshots / "3-trigger-form.png", full_page=True)
    form.get_by_role("button", name="Trigger").click()
    page.wait_for_url(f"{url}/dags/sft_demo/runs/**")
    (run,) = _runs(deployed_airflow)
    assert run["conf"]["num_epochs"] == 2 and run["conf"]["model"] == "tiny"
    assert run["conf"]["questions"][0] == QUESTION
    run_id = run["dag_run_id"]
    wait_for(lambda: deployed_airflow.api.get(f"/dags/sft_demo/dagRuns/{quote(run_id, safe='')}").json()["state"]
             in ("success", "failed"), 900, "sft_demo to finish", interval=5)
    tasks = {t["task_id"]: t["state"] for t in deployed_airflow._ok(deployed_airflow.api.get(
        f"/dags/sft_demo/dagRuns/{quote(run_id, safe='')}/taskInstances"))["task_instances"]}
    assert tasks["train_sft"] == "success" and tasks["report"] == "success", tasks

    # The checkpoint XCom, as the task's XCom tab shows it.
    checkpoint = deployed_airflow.xcom("sft_demo", run_id, "checkpoint", task_id="train_sft")
    assert checkpoint.endswith("/hf_format/samples_96"), checkpoint  # 48 samples x 2 epochs
    page.goto(f"{url}/dags/sft_demo/runs/{quote(run_id, safe='')}/tasks/train_sft/xcom")
    page.get_by_text("checkpoint", exact=True).first.wait_for()
    page.get_by_text(checkpoint).first.wait_for()
    page.screenshot(path=screenshots / "4-checkpoint-xcom.png", full_page=True)


def test_the_training_hub_connection_form_has_its_declared_fields(page, deployed_airflow, screenshots):
    page.goto(f"{deployed_airflow.url}/connections")
    page.get_by_role("button", name="Add Connection").click()
    form = page.get_by_role("dialog")
    kind = form.get_by_role("combobox")
    kind.click()
    kind.fill("Training")
    page.get_by_role("option", name="Training Hub").click()
    form.get_by_text("Extra Fields", exact=True).click()
    form.get_by_text("local: a subprocess on the worker; kubernetes: an Indexed Job.").wait_for()
    lines = form.inner_text().splitlines()
    for label in ("Execution", "Training image", "Namespace", "PVC claim", "PVC mount path", "GPU resource",
                  "Node selector", "Tracking secret", "Job link"):
        assert label in lines, label
    page.screenshot(path=screenshots / "5-training-hub-connection-form.png", full_page=True)


def test_a_tracked_training_task_shows_its_mlflow_run_link(deployed_airflow, page, mlflow_server, tiny_model,
                                                           sample_data, screenshots):
    """The operator's "MLflow run" extra link, in the task's Details, leads to the run's page."""
    run_id = deployed_airflow.trigger("th_tracked_train", {
        "model_path": str(tiny_model), "data_path": str(sample_data), "mlflow_tracking_uri": mlflow_server})
    deployed_airflow.wait_for_task("th_tracked_train", run_id, {"success", "failed"}, 900)
    assert deployed_airflow.task("th_tracked_train", run_id)["state"] == "success"
    url = deployed_airflow.xcom("th_tracked_train", run_id, "mlflow_run_url")
    assert url.startswith(f"{mlflow_server}/#/experiments/")
    page.goto(f"{deployed_airflow.url}/dags/th_tracked_train/runs/{quote(run_id, safe='')}/tasks/train/details")
    link = page.get_by_role("link", name="MLflow run")
    link.wait_for()
    assert link.get_attribute("href") == url
    page.screenshot(path=screenshots / "6-mlflow-run-link.png", full_page=True)
