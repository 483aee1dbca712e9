"""Faults on the Ray path: lost harvester and trainer actors, and a killed driver.

Each run replays .npy shards (no backbone), sized so that the harvest is still going when the
faults strike: the log holds 8 of the 17 chunks the run needs and the harvest's object-store
budget is 1 MiB. The reference is an uninterrupted inline run of the same config: replay after
a fault must give the same weights, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

import thresher
from tests.stored_data import stored_config, write_shards
from thresher.cli import main as cli_main
from thresher.distributed.pipeline import run_tag, wait_for_previous_driver

pytestmark = pytest.mark.slow  # long end-to-end runs: the full suite only

STEPS, CHECKPOINT_EVERY = 64, 8
HARVEST_WORKER = "ray::HarvestWorker"  # the harvester actors' process title


def fault_config(out: Path, shards: Path, name: str) -> dict[str, Any]:
    return stored_config(
        out, shards, name=name,
        train={"rows": STEPS * 256, "checkpoint_every": CHECKPOINT_EVERY, "d_sae": 2048},
        resources={"harvest_object_store_mb": 1})


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards") / "d256", d=256, shards=40)


@pytest.fixture(scope="module")
def clean_run(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    return thresher.run(fault_config(out, shards, "fault"), inline=True, progress=False)


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def named_actor(ray: Any, prefix: str) -> tuple[str, str]:
    """(name, namespace) of the live actor whose name starts with `prefix`, in any job."""
    def find() -> tuple[str, str] | None:
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["name"].startswith(prefix):
                return actor["name"], actor["namespace"]
        return None
    return wait_until(find, f"an actor named {prefix}*")


def processes_titled(title: str) -> set[int]:
    """Pids of processes whose command line contains `title` (Ray sets its actors' titles)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.encode() in cmdline:
                pids.add(int(entry.name))
    return pids


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    for sae_dir in sorted((run_dir / "saes").iterdir()):
        a = load_file(sae_dir / "sae_weights.safetensors")
        b = load_file(reference / "saes" / sae_dir.name / "sae_weights.safetensors")
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{sae_dir.name} {name}")


# --------------------------------------------------------------------------------------------
# A harvester and a trainer lost mid-run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_run(ray_session: Any, shards: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ray = ray_session
    cfg = fault_config(tmp_path_factory.mktemp("faulty"), shards, "fault")
    before = processes_titled(HARVEST_WORKER)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["run_dir"] = thresher.run(cfg, progress=False)
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    stream = ray.get_actor(named_actor(ray, "thresher-stream-fault-")[0])
    trainer = ray.get_actor(named_actor(ray, "thresher-trainer-fault-")[0])
    progress = wait_until(lambda: (p := ray.get(stream.progress.remote())).steps["t0"] >= 10
                          and p, "the trainer to pass two checkpoints")
    # The log bounds the harvest: it cannot be over yet.
    assert progress.rows < progress.wanted_rows + progress.holdout_rows
    (harvester,) = processes_titled(HARVEST_WORKER) - before
    os.kill(harvester, signal.SIGKILL)  # a harvester actor's process dies
    ray.kill(trainer, no_restart=False)  # as a lost worker would: Ray restarts the actor
    outcome["new_harvesters"] = wait_until(
        lambda: processes_titled(HARVEST_WORKER) - before - {harvester}, "a new harvester")
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    outcome["record"] = json.loads((outcome["run_dir"] / "run.json").read_text())
    return outcome


def test_killed_harvester_is_replaced_and_the_run_completes(faulty_run: dict[str, Any],
                                                            clean_run: Path) -> None:
    record = faulty_run["record"]
    assert faulty_run["new_harvesters"]  # Ray restarted the pool's actor
    assert record["status"] == "complete"
    harvest = record["harvest"]
    assert harvest["rows"] == json.loads((clean_run / "run.json").read_text())["harvest"]["rows"]


def test_killed_trainer_loses_at_most_one_checkpoint_interval(
        faulty_run: dict[str, Any]) -> None:
    info = faulty_run["record"]["trainers"]["t0"]
    resumed = info["resumed_from_step"]
    assert resumed >= 8 and resumed % CHECKPOINT_EVERY == 0
    assert resumed + info["batches"] == STEPS  # replayed from the checkpoint, nothing skipped
    # run.json says what the restart cost: the steps taken after the checkpoint, redone.
    assert info["restarts"] == 1
    (restart,) = info["restart_log"]
    assert restart["resumed_at"] == resumed and restart["last_step"] >= 10
    assert 0 <= info["steps_lost"] == restart["last_step"] - resumed <= CHECKPOINT_EVERY


def test_run_with_faults_ends_with_the_weights_of_a_clean_run(faulty_run: dict[str, Any],
                                                              clean_run: Path) -> None:
    assert_same_weights(faulty_run["run_dir"], clean_run)


# --------------------------------------------------------------------------------------------
# A killed driver, resumed with `thresher run --resume`
# --------------------------------------------------------------------------------------------


def test_killed_driver_resumes_from_checkpoints_and_stream_cursors(
        ray_session: Any, shards: Path, clean_run: Path, tmp_path: Path) -> None:
    ray = ray_session
    cfg = fault_config(tmp_path / "runs", shards, "driver")
    config = tmp_path / "driver.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "driver"

    def checkpointed() -> int:
        """The newest step every SAE has a checkpoint at (a save may stop between SAEs)."""
        states = [json.loads(p.read_text())["step"]
                  for p in run_dir.glob("saes/*/checkpoint/state.json")]
        return min(states) if len(states) == 2 else 0

    # The driver joins the session's cluster as its own job, as `ray job submit` would run it.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "thresher.cli", "run", str(config),
                               "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        wait_until(lambda: driver.poll() is not None or checkpointed() >= 16,
                   "the driver's trainer to pass two checkpoints")
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        name, namespace = named_actor(ray, "thresher-stream-driver-")
        stream = ray.get_actor(name, namespace=namespace)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    last_step = 0  # the newest step the dead driver's trainer reached, as its stream heard it
    try:
        while True:
            last_step = max(last_step, ray.get(stream.progress.remote()).steps["t0"])
            time.sleep(0.05)
    except ray.exceptions.RayActorError:
        pass  # Ray removed the dead driver's actors
    wait_for_previous_driver(run_tag(thresher.plan(cfg).config, run_dir))
    resume_step = checkpointed()

    assert cli_main(["run", "--resume", str(run_dir), "--no-progress"]) == 0
    record = json.loads((run_dir / "run.json").read_text())
    info = record["trainers"]["t0"]
    assert record["status"] == "complete"
    assert info["resumed_from_step"] == resume_step >= 16
    assert info["batches"] == STEPS - resume_step  # each step after the checkpoint, once
    assert last_step - resume_step <= CHECKPOINT_EVERY  # redone: within one interval
    assert_same_weights(run_dir, clean_run)


def test_resume_reads_relative_inputs_from_the_config_s_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    write_shards(project / "shards", d=32, shards=8)
    cfg = stored_config(tmp_path / "runs", Path("shards"), name="relative",
                        train={"rows": 8 * 256})
    (project / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(project)
    run_dir = thresher.run("cfg.yaml", inline=True, progress=False)
    monkeypatch.chdir(tmp_path)  # elsewhere: "shards" is not here
    assert thresher.resume(run_dir, inline=True, progress=False) == run_dir
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
