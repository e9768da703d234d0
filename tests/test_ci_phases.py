"""The phase table that .ci/run prints: phases recorded by scripts/testbed.sh's `timed`, in bash,
and laid out by scripts/phases.py."""

import subprocess
import sys
import time

from conftest import REPO


def test_timed_phases_are_tabled_in_start_order_with_their_failures(tmp_path):
    phases = tmp_path / "phases.tsv"
    began = time.time()
    script = """
        source scripts/testbed.sh
        timed "first, 1 s" sleep 1
        timed "second, fails" bash -c 'exit 3' && exit 99  # the status comes back
        [ $? -eq 3 ] || exit 98
        timed "quiet, a 'quoted' name" true
    """
    run = subprocess.run(["bash", "-c", script], cwd=REPO, env={"TRAINING_HUB_PHASES": str(phases), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr

    table = subprocess.run([sys.executable, str(REPO / "scripts" / "phases.py"), str(phases), str(began)],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert table[0].split() == ["start", "wall", "phase"]
    assert [row.split(None, 2)[2] for row in table[1:4]] == [
        "first, 1 s", "second, fails  (FAILED, exit 3)", "quiet, a 'quoted' name"]
    assert table[1].split()[:2] == ["0m00s", "0m01s"]
    assert table[2].split()[0] == "0m01s"  # began after the first one ended
    assert table[-1].split() == ["0m01s", "the", "whole", "run"]
