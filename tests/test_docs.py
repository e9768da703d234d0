"""What a newcomer reads: the documentation site and the README.

- `mkdocs build --strict` passes: a warning fails it, and it checks every internal link and anchor;
- every page opens in Debian's Chromium from a local HTTP server, with no broken link, anchor or
  image, and asks for nothing from any other address;
- every operator, parameter and connection field appears in the built pages;
- the changelog's versions are the provider's;
- the README's first DAG runs with `airflow dags test`, exactly as the README shows it.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urldefrag, urljoin

import pytest
from conftest import REPO, airflow_json
from test_ui import CHROMIUM

pytestmark = pytest.mark.package
QUIET = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's notice about its successor


def _build(config: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site_dir)], capture_output=True, text=True, env=QUIET, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = _build(REPO / "mkdocs.yml", out)
    assert built.returncode == 0, built.stderr[-4000:]
    return out


def _text(site: Path, page: str) -> str:
    html = (site / page / "index.html").read_text(encoding="utf-8")
    return re.sub(r"<[^>]+>", " ", html)


def test_the_strict_build_fails_on_a_broken_anchor(tmp_path):
    """The check the site relies on: a link to an anchor that no heading makes fails the build."""
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path)
    page = tmp_path / "docs" / "limits.md"
    page.write_text(page.read_text() + "\nSee [the parameters](algorithms.md#no-such-heading).\n")
    built = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 1
    assert "'algorithms.md#no-such-heading', but the doc 'algorithms.md' does not contain an anchor" in built.stderr


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


def test_every_page_opens_in_chromium_with_no_broken_link_or_image(site, served):
    from playwright.sync_api import sync_playwright

    pages = sorted(str(p.parent.relative_to(site)) for p in site.rglob("index.html"))
    assert len(pages) >= 15, pages
    elsewhere: list[str] = []
    found: dict[str, tuple[set[str], list[str], list[str]]] = {}  # url -> (ids, links, broken images)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # root in CI
        tab = browser.new_page()
        tab.on("request", lambda r: None if r.url.startswith(served) or r.url.startswith("data:")
               else elsewhere.append(r.url))
        for page in pages:
            url = urljoin(served, "" if page == "." else page + "/")
            response = tab.goto(url, wait_until="load")
            assert response and response.status == 200, url
            found[url] = (
                set(tab.eval_on_selector_all("[id]", "els => els.map(e => e.id)")),
                tab.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"),
                tab.eval_on_selector_all("img", "els => els.filter(i => !i.complete || !i.naturalWidth).map(i => i.src)"),
            )
        broken = []
        for url, (_, links, images) in found.items():
            broken += [f"{url}: image {src}" for src in images]
            for link in links:
                if not link.startswith(served):
                    continue  # another site: not fetched (no network here); the strict build checks ours
                target, anchor = urldefrag(link)
                if target not in found:  # a file of the site that is not a page: the search index, say
                    status = tab.request.get(target).status
                    broken += [f"{url}: {link} ({status})"] if status != 200 else []
                elif anchor and anchor not in found[target][0]:
                    broken.append(f"{url}: {link} (no such anchor)")
        browser.close()
    assert broken == []
    assert elsewhere == []  # no web fonts, no scripts from a CDN: the site works offline


def test_every_operator_parameter_and_connection_field_is_documented(site):
    import inspect

    from airflow.models import BaseOperator

    from airflow_provider_training_hub import AlgorithmRegistry
    from airflow_provider_training_hub.connection import ConnectionSettings
    from airflow_provider_training_hub.get_provider_info import get_provider_info
    from airflow_provider_training_hub.operators import train, validate

    algorithms, connection = _text(site, "algorithms"), _text(site, "connection")
    operators, reference = _text(site, "operators"), _text(site, "reference")
    missing = [f"{name}: {field}" for name in AlgorithmRegistry.list_algorithms()
               for field in AlgorithmRegistry.get_algorithm(name).params_schema.model_fields
               if not re.search(rf"\b{field}\b", algorithms)]
    missing += [f"connection: {field}" for field in ConnectionSettings.model_fields if field not in connection]
    modules = [m for entry in get_provider_info()["operators"] for m in entry["python-modules"]]
    assert sorted(modules) == sorted([train.__name__, validate.__name__])
    classes = [c for module in (train, validate) for c in vars(module).values()
               if inspect.isclass(c) and issubclass(c, BaseOperator) and c.__module__ == module.__name__]
    assert len(classes) == 5, classes
    for operator in classes:
        missing += [f"operator: {operator.__name__}" for page in (operators, reference) if operator.__name__ not in page]
        # A training operator's other arguments are its algorithm's parameters: checked above.
        own = [p for p in inspect.signature(operator.__init__).parameters
               if p not in ("self", "kwargs", *getattr(operator, "param_names", ()))]
        missing += [f"{operator.__name__}: {p}" for p in own if not re.search(rf"\b{p}\b", reference)]
    assert missing == []


def test_the_changelog_lists_the_providers_versions():
    from airflow_provider_training_hub import __version__
    from airflow_provider_training_hub.get_provider_info import get_provider_info

    versions = re.findall(r"^## (\d+\.\d+\.\d+)", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert versions == get_provider_info()["versions"] and versions[0] == __version__


def _readme_first_dag() -> str:
    section = (REPO / "README.md").read_text().split("\n## A first DAG\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readmes_first_dag_runs_as_shown(tmp_path, airflow_db):
    """The README's code block, written to a DAG folder of its own and run with `airflow dags test`
    on the tiny model, offline, CPU. `dags/first_fine_tune.py` is the same file, for the docs site
    and the example DAGs."""
    code = _readme_first_dag()
    assert code == (REPO / "dags" / "first_fine_tune.py").read_text()
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "first_fine_tune.py").write_text(code)
    work = tmp_path / "work"  # the DAG writes under the temporary directory: this test's, not /tmp
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "TMPDIR": str(work)}
    work.mkdir()
    run = subprocess.run([str(Path(sys.executable).with_name("airflow")), "dags", "test", "first_fine_tune"],
                         capture_output=True, text=True, env=env, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    checkpoint = re.search(r"^checkpoint: (\S+)$", output, re.M)
    assert checkpoint, output[-4000:]
    # Where the README says a run without a connection writes; 12 samples, 3 epochs of 3 steps of
    # 4: the last checkpoint has seen 36 samples.
    path = Path(checkpoint.group(1))
    assert path.is_relative_to(airflow_db / "training_hub" / "checkpoints" / "first_fine_tune"), path
    assert path.parts[-3:] == ("train", "hf_format", "samples_36"), path
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    # One numbering of epochs, from 0, in all a user reads: the progress lines (one per step here:
    # TRAINING_HUB_PROGRESS_SECONDS=0), the full states' directories, the metrics.
    from airflow_provider_training_hub.checkpoints import read_metrics

    run_dir = path.parents[1]
    logged = {int(e) for e in re.findall(r"\[training-hub\] epoch (\d+) step \d+/9 loss", output)}
    saved = {int(p.name.removeprefix("epoch_")) for p in (run_dir / "full_state").glob("epoch_*")}
    assert logged == saved == {r["epoch"] for r in read_metrics(run_dir)} == {0, 1, 2}, output[-4000:]
    assert "3 steps/epoch x 3 epochs (epoch 0 to 2)" in output
    assert re.search(r"DagRun Finished: dag_id=first_fine_tune, .* state=success", output), output[-4000:]


def test_a_misspelt_operator_parameter_is_an_import_error_that_names_the_cure(tmp_path, airflow_db):
    """`airflow dags test` ends with Airflow's own "could not be found" after the parse error, and
    no provider can change that last line; the import error Airflow records is where the cause
    stays: `airflow dags list-import-errors` shows the did-you-mean."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "typo.py").write_text(
        "from airflow.sdk import dag\n"
        "from airflow_provider_training_hub.operators import SFTTrainOperator\n\n\n"
        "@dag(schedule=None)\n"
        "def typo():\n"
        "    SFTTrainOperator(task_id='train', model_path='/m', data_path='/d', learning_rte=1e-5)\n\n\n"
        "typo()\n")
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "dags", "reserialize"], capture_output=True, text=True, env=env, timeout=600)
    listed = subprocess.run([airflow, "dags", "list-import-errors", "-o", "json"], capture_output=True, text=True,
                            env=env, timeout=600)
    errors = {e["filepath"]: e["error"] for e in airflow_json(listed.stdout)}
    assert errors["typo.py"].rstrip().endswith(
        "ValueError: SFTTrainOperator: Unknown parameter 'learning_rte'. Did you mean 'learning_rate'?"), errors
