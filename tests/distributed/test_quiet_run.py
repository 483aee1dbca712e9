"""A healthy Ray run prints thresher's own lines only: no line at error level from Ray or its
actors, no library progress bars, nothing about killed actors."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cli_runs import THRESHER
from tests.run_configs import smoke_config


@pytest.mark.slow
def test_a_healthy_ray_run_prints_only_its_own_lines(tmp_path: Path) -> None:
    config = tmp_path / "smoke.yaml"
    config.write_text(yaml.safe_dump(smoke_config(tmp_path / "runs")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own
    done = subprocess.run([THRESHER, "run", str(config), "--no-report", "--no-progress"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    # Ray's glog lines carry their level as " E " / " W " after the timestamp; Python's say it.
    noisy = [line for line in lines
             if re.search(r"\[[\d-]+ [\d:,.]+ [EWF] \d+ |\b(ERROR|WARNING|CRITICAL)\b", line)
             or re.search(r"Loading weights|Progress bars|killed by ray\.kill|%\|", line)]
    assert not noisy, "\n".join(noisy)
    # What is left is Ray announcing its local instance, at most.
    assert all("Started a local Ray instance" in line for line in lines), lines
    assert "sae_id" in done.stdout and "report: not written" in done.stdout
