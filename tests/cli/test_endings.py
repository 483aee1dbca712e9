"""Every ending of a run is recorded, and the command says in its last line what to do next.

`thresher run` in a subprocess, as a user starts it: Ctrl-C and SIGTERM mid-run end as
`interrupted` (exit 130 / 143) with the step a resume continues from; a store that turns out
corrupt mid-run ends as `failed` (exit 2) with the reason; a rerun is refused naming the
status, and `--resume` finishes the run.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.cli_runs import THRESHER, record
from tests.stored_data import long_config, stored_config
from thresher.modalities.stored.lmdb import StoreWriter
from thresher.stream.block import ActivationBlock


def start(config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([THRESHER, "run", str(config), "--inline", "--no-progress",
                             "--no-report", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen[str], saes: int = 2,
                        timeout: float = 120) -> None:
    """Until every SAE of the run (the config's two) has checkpointed once."""
    deadline = time.monotonic() + timeout
    while len(list(run_dir.glob("saes/*/checkpoint/state.json"))) < saes:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "reason"), [
    (signal.SIGINT, 130, "KeyboardInterrupt"),
    (signal.SIGTERM, 143, "Terminated: terminated (SIGTERM)"),
])
def test_an_interrupted_run_says_how_to_continue_and_resumes(
        sig: int, code: int, reason: str, tmp_path: Path) -> None:
    config = long_config(tmp_path)
    run_dir = tmp_path / "runs" / "long"
    proc = start(config)
    wait_for_checkpoint(run_dir, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    ended = record(run_dir)
    assert ended["status"] == "interrupted" and ended["reason"] == reason
    step = ended["checkpointed_step"]
    assert step >= 8 and step % 8 == 0
    assert last_line(err) == (f"thresher: interrupted at step {step}; continue with "
                              f"`thresher run --resume {run_dir}` (it keeps the run's stored "
                              "config)")

    again = subprocess.run([THRESHER, "run", str(config), "--inline", "--no-progress"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert f"already holds a run (status interrupted: {reason})" in last_line(again.stderr)
    assert "--resume to continue it from its checkpoints" in again.stderr

    resumed = subprocess.run([THRESHER, "run", "--resume", str(run_dir), "--inline",
                              "--no-progress", "--no-report"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    done = record(run_dir)
    assert done["status"] == "complete"
    assert done["trainers"]["t0"]["resumed_from_step"] == step


def test_a_run_that_fails_midway_is_recorded_as_failed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    writer = StoreWriter(store, backbone={"kind": "x"}, hook="h", source={})
    blocks = [rng.normal(size=(512, 16)).astype(np.float32) for _ in range(24)]
    for acts in blocks:
        writer.add(ActivationBlock(acts=acts, example_id=np.arange(512, dtype=np.int64),
                                   position=np.zeros(512, dtype=np.int32)))
    writer.close()
    # Flip bytes of block 16's rows: the store opens, and fails its checksum there, once
    # training has begun (the log holds 8 blocks of rows, the holdout 2).
    raw = bytearray((store / "data.mdb").read_bytes())
    at = bytes(raw).find(blocks[16].tobytes()[:64])
    assert at > 0
    raw[at:at + 8] = bytes(b ^ 0xFF for b in raw[at:at + 8])
    (store / "data.mdb").write_bytes(bytes(raw))
    cfg = stored_config(tmp_path / "runs", store, name="corrupt",
                        stream={"capacity_chunks": 4},
                        train={"rows": 40 * 256, "checkpoint_every": 4})
    cfg["source"]["hook"] = "h"
    config = tmp_path / "corrupt.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([THRESHER, "run", str(config), "--inline", "--no-progress",
                             "--no-report"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    run_dir = tmp_path / "runs" / "corrupt"
    ended = record(run_dir)
    assert ended["status"] == "failed"
    assert ended["reason"].startswith("StoreError: ") and "block 16" in ended["reason"]
    assert ended["checkpointed_step"] > 0
    line = last_line(result.stderr)
    assert line.startswith("thresher: config error: ") and "block 16" in line
    assert f"`thresher run --resume {run_dir}` continues it with its stored config" in line
    assert "Traceback" not in result.stderr
