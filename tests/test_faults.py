"""Faults on the Ray path: a trainer actor killed mid-run restarts from its checkpoint."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

import thresher

from .conftest import smoke_config


def named_actor(ray: Any, prefix: str, timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in ray.util.list_named_actors():
            if name.startswith(prefix):
                return ray.get_actor(name)
        time.sleep(0.2)
    raise TimeoutError(f"no actor named {prefix}*")


def test_killed_trainer_resumes_and_ends_with_the_same_weights(ray_session: Any,
                                                               tmp_path: Path) -> None:
    ray = ray_session
    overrides: dict[str, Any] = {
        "run": {"name": "fault", "out": str(tmp_path / "ray"), "seed": 0},
        "train": {"tokens": 8192, "checkpoint_every": 4, "batch_size": 256},
        "sweep": [{"arch": "topk", "k": 8}],
        "resources": {"trainers": 1},
    }
    cfg = smoke_config(tmp_path, **overrides)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["run_dir"] = thresher.run(cfg, progress=False)
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    stream = named_actor(ray, "thresher-stream-fault-")
    trainer = named_actor(ray, "thresher-trainer-fault-")
    deadline = time.monotonic() + 300
    while ray.get(stream.progress.remote())["steps"]["t0"] < 10:  # past two checkpoints
        assert time.monotonic() < deadline, "the trainer never got going"
        time.sleep(0.1)
    ray.kill(trainer, no_restart=False)  # as a lost worker would: Ray restarts the actor
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")

    record = json.loads((outcome["run_dir"] / "run.json").read_text())
    info = record["trainers"]["t0"]
    assert info["resumed_from_step"] >= 8 and info["resumed_from_step"] % 4 == 0
    assert info["resumed_from_step"] + info["batches"] == 32  # replayed, nothing skipped

    # Replay is exact: the same weights as an uninterrupted run of the same config.
    clean_cfg = dict(cfg, run={"name": "fault", "out": str(tmp_path / "clean"), "seed": 0})
    clean = thresher.run(clean_cfg, inline=True, progress=False)
    (sae_dir,) = (outcome["run_dir"] / "saes").iterdir()
    a = load_file(sae_dir / "sae_weights.safetensors")
    b = load_file(clean / "saes" / sae_dir.name / "sae_weights.safetensors")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
