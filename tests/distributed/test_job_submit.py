"""`ray job submit` against a real `ray start --head` on loopback with token auth.

The cluster is started in its own temp dir, so the session Ray of the other tests never sees
it, and stopped by killing its own processes only. The job's working directory is a temporary
copy, so run.out must be absolute; a relative one is refused with the fix (checked without a
cluster, as Ray marks a job's driver).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.run_configs import smoke_config
from thresher.config import load_config, make_plan
from thresher.rundir import SUBMITTED_JOB_ENV, RunDirError, create_run_dir

pytestmark = pytest.mark.slow  # long end-to-end runs: the full suite only

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def token_cluster() -> Iterator[dict[str, str]]:
    temp = Path(tempfile.mkdtemp(prefix="thr-ray-", dir="/tmp"))
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    # The token the cluster and the client share (~/.ray/auth_token); made if missing.
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=60)
    start = [str(BIN / "ray"), "start", "--head", f"--port={free_port()}", "--num-cpus=2",
             "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", f"--temp-dir={temp}", "--disable-usage-stats",
             # Ports of its own: the defaults (agent 52365, ...) are taken when the test
             # session's Ray already runs on this machine, and the job agent then never starts.
             f"--dashboard-agent-listen-port={free_port()}",
             f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--ray-client-server-port={free_port()}"]
    subprocess.run(start, env=env, check=True, capture_output=True, text=True, timeout=180)
    client = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}"}
    try:
        yield client
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def stop_cluster(temp: Path) -> None:
    """Kill this cluster's processes only: `ray stop` would kill every Ray on the machine (the
    test session's, and any other). Its daemons name its temp dir in their command lines;
    agents and workers are their descendants."""
    import psutil

    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    roots = [p for p in psutil.process_iter(["cmdline"])
             if p.pid not in mine and any(str(temp) in arg for arg in p.info["cmdline"] or [])]
    for root in roots:
        try:
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in family:
            if process.pid not in mine:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()


# The head's job agent registers a few seconds after `ray start` returns; until then the
# dashboard answers every submission with this (and the submission creates no job).
AGENT_NOT_READY = "No available agent to submit job"


def submit(client: dict[str, str], working_dir: Path, config: str,
           agent_wait_seconds: float = 120.0) -> subprocess.CompletedProcess:
    command = [str(BIN / "ray"), "job", "submit", "--working-dir", str(working_dir), "--",
               str(BIN / "thresher"), "run", config, "--no-progress"]
    deadline = time.monotonic() + agent_wait_seconds
    while True:
        result = subprocess.run(command, env=client, capture_output=True, text=True, timeout=900)
        not_ready = AGENT_NOT_READY in result.stdout + result.stderr
        if result.returncode == 0 or not not_ready or time.monotonic() > deadline:
            return result
        time.sleep(2.0)


def test_thresher_run_as_a_ray_job(token_cluster: dict[str, str], tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    out = tmp_path / "runs"
    cfg = smoke_config(out, sweep=[{"arch": "topk", "k": 8}], resources={"trainers": 1})
    (job_dir / "smoke.yaml").write_text(yaml.safe_dump(cfg))
    result = submit(token_cluster, job_dir, "smoke.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((out / "smoke" / "run.json").read_text())
    assert record["status"] == "complete" and record["executor"] == "ray"
    assert (out / "smoke" / "stats" / "summary.parquet").is_file()


def test_relative_run_out_is_refused_inside_a_submitted_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What Ray sets in the driver of a submitted job; the job's working directory is temporary.
    monkeypatch.setenv(SUBMITTED_JOB_ENV, "{}")
    cfg = smoke_config(tmp_path)
    cfg["run"]["out"] = "runs"
    with pytest.raises(RunDirError, match="working directory is temporary"):
        create_run_dir(make_plan(load_config(cfg)), "ray")
    cfg["run"]["out"] = str(tmp_path / "runs")  # absolute: fine
    assert create_run_dir(make_plan(load_config(cfg)), "ray").is_dir()
