"""scripts/bootstrap.sh, which every test command runs first: CI starts three test runs side by
side, so a bootstrap may run while another run's tests are under way."""

import subprocess
import sysconfig
import threading
from pathlib import Path

from conftest import REPO


def test_a_bootstrap_beside_running_tests_never_uninstalls_the_package():
    """The package was synced apart from the lock: every bootstrap uninstalled it and installed it
    again, and a test run beside it found no provider meanwhile (CI, 2026-12-05)."""
    site = Path(sysconfig.get_paths()["purelib"])
    pattern = "airflow_provider_training_hub-*.dist-info"
    assert list(site.glob(pattern)), f"the package is not installed in {site}"
    looks, missing = [], []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.002):
            looks.append(1)
            if not list(site.glob(pattern)):
                missing.append(len(looks))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        bootstrap = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=REPO, capture_output=True, text=True,
                                   timeout=600)
    finally:
        done.set()
        watcher.join()
    assert bootstrap.returncode == 0, bootstrap.stderr[-2000:]
    assert len(looks) > 100 and not missing, f"missing at {len(missing)} of {len(looks)} looks"
