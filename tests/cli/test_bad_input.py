"""Bad input fails early with a message that names the problem and the fix (or is skipped and
counted where skipping is the right thing), on the path a user takes: `thresher run`."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import load_file

import thresher
from tests.stored_data import stored_config, write_shards
from tests.stream_data import make_log, reader_for
from tests.tiny_models import TINY_BERT
from thresher.cli import main as cli_main
from thresher.config import ConfigError, expand_sweep, load_config
from thresher.stream.budget import MIB, StoreBudget, store_budget
from thresher.stream.stats import estimate_stream_stats
from thresher.train.checkpoint import CheckpointError, checkpoint_dir
from thresher.train.loop import CheckpointWriteError, TrainLoop
from thresher.train.trainer import Trainer

# --------------------------------------------------------------------------------------------
# Config, model, input files
# --------------------------------------------------------------------------------------------


def test_config_typo_stops_thresher_run_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text(f"run: {{name: typo, out: {tmp_path}}}\ntrain:\n  checkpoint_evry: 8\n")
    assert cli_main(["run", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"`train.checkpoint_evry` ({config}:3)" in err
    assert "did you mean `checkpoint_every`" in err
    assert not (tmp_path / "typo").exists()  # no run directory was made


def text_config(out: Path, name: str, **source: Any) -> dict[str, Any]:
    return {
        "run": {"name": name, "out": str(out)},
        "source": {"backbone": {"kind": "hf_text", "model": "",
                                "config": {**TINY_BERT, "max_position_embeddings": 64}},
                   "hook": "layer.0",
                   "inputs": {"kind": "python_docstrings", "context": 32, "max_tokens": 4000},
                   "batch_size": 16, **source},
        "stream": {"chunk_rows": 256, "capacity_chunks": 4, "mix_chunks": 2,
                   "holdout_rows": 256, "norm_rows": 256},
        "train": {"batch_size": 64, "rows": 1024, "d_sae": 64, "k": 4},
        "resources": {"harvester_threads": 1, "trainer_threads": 1},
    }


@pytest.mark.slow
def test_model_that_cannot_be_loaded_offline_fails_the_ray_run_with_the_fix(
        ray_session: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = text_config(tmp_path, "offline",
                      backbone={"kind": "hf_text", "model": "no-such-org/no-such-model"})
    config = tmp_path / "offline.yaml"
    config.write_text(json.dumps(cfg))
    assert cli_main(["run", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    # The message thresher wrote, not Ray's wrapping of it.
    assert err.startswith("thresher: config error: ") and "Traceback" not in err
    assert "'no-such-org/no-such-model'" in err and "not a local folder" in err
    assert "`config`" in err  # the fix: a local folder, or a config for random weights


@pytest.mark.slow
def test_error_inside_a_harvester_actor_reaches_the_user_as_is(ray_session: Any,
                                                               tmp_path: Path) -> None:
    # The backbone takes 64 tokens: the harvester actors refuse in their constructor.
    cfg = text_config(tmp_path, "context", inputs={"kind": "python_docstrings", "context": 128,
                                                  "max_tokens": 4000})
    with pytest.raises(ConfigError) as err:
        thresher.run(cfg, progress=False)
    assert not isinstance(err.value, ray_session.exceptions.RayError)
    assert str(err.value) == ("source.inputs.context is 128 but the backbone takes at most 64 "
                              "tokens; lower context")  # nothing of Ray Data's wrapping


@pytest.mark.slow
def test_unreadable_input_file_names_the_file(ray_session: Any, tmp_path: Path) -> None:
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("def f():\n    return 1\n" * 50)
    (texts / "b.txt").write_bytes(b"\xff\xfe not text \x80\x81" * 20)
    cfg = text_config(tmp_path, "unreadable",
                      inputs={"kind": "text_files", "paths": [str(texts / "*.txt")],
                              "context": 32})
    with pytest.raises(ConfigError, match=r"'.*b\.txt' is not UTF-8 text"):
        thresher.run(cfg, progress=False)
    # Images and EEG recordings that cannot be decoded are skipped and counted instead:
    # tests/modalities/image/test_vision.py and tests/modalities/eeg/test_eeg.py.


# --------------------------------------------------------------------------------------------
# Checkpoints of another width
# --------------------------------------------------------------------------------------------


def unit_norm_shards(folder: Path, d: int) -> Path:
    """Rows scaled to norm sqrt(d): the stream's input scale is 1 whatever the width."""
    write_shards(folder, d=d, shards=12)
    for shard in folder.glob("*.npy"):
        acts = np.load(shard)
        np.save(shard, (acts / np.linalg.norm(acts, axis=1, keepdims=True) * np.sqrt(d))
                .astype(np.float32))
    return folder


def test_checkpoint_of_another_width_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    wide = unit_norm_shards(tmp_path / "d64", 64)
    thresher.run(stored_config(out, wide, train={"rows": 8 * 256}), inline=True,
                 progress=False)
    # Continuing the run on a stored source of another width, same input scale.
    narrow = unit_norm_shards(tmp_path / "d32", 32)
    with pytest.raises(ValueError, match=r"00-topk-k8.*W_enc has shape \(64, 256\), "
                                         r"expected \(32, 256\)"):
        thresher.run(stored_config(out, narrow), inline=True, progress=False, resume=True)
    # Another width and another scale: refused as a checkpoint of another stream.
    other = write_shards(tmp_path / "other", d=32, shards=12)
    with pytest.raises(CheckpointError, match=r"00-topk-k8.*input scale.*belongs to another "
                                              r"stream; delete .*checkpoint or use another "
                                              r"run name"):
        thresher.run(stored_config(out, other), inline=True, progress=False, resume=True)


# --------------------------------------------------------------------------------------------
# NaN and Inf rows
# --------------------------------------------------------------------------------------------


def poison(shards: Path, where: list[tuple[int, int]]) -> None:
    for i, (shard, row) in enumerate(where):
        acts = np.load(shards / f"{shard:04d}.npy")
        acts[row, i % acts.shape[1]] = np.nan if i % 2 == 0 else np.inf
        np.save(shards / f"{shard:04d}.npy", acts)


def assert_all_finite(run_dir: Path) -> None:
    for sae_dir in (run_dir / "saes").iterdir():
        tensors = {**load_file(sae_dir / "sae_weights.safetensors")}
        for state in (sae_dir / "checkpoint").glob("state-*.safetensors"):
            tensors.update({f"{state.name}:{k}": v for k, v in load_file(state).items()})
        for name, value in tensors.items():
            assert np.isfinite(value).all(), f"{sae_dir.name} {name}"


@pytest.mark.parametrize("inline", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["inline", "ray"])
def test_nonfinite_rows_are_dropped_alone_and_never_reach_the_weights(
        inline: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture, request: Any) -> None:
    if not inline:
        request.getfixturevalue("ray_session")
    shards = write_shards(tmp_path / "shards", shards=40)
    # Shards 0-1 are the held-out rows and 2-3 the normalisation rows; these are training rows.
    poison(shards, [(10, 100), (20, 3), (21, 400)])
    with caplog.at_level(logging.WARNING, logger="thresher.outcome"):
        run_dir = thresher.run(stored_config(tmp_path / "runs", shards), inline=inline,
                               progress=False)
    record = json.loads((run_dir / "run.json").read_text())
    # Rows trained = rows finite: no batch is skipped, the three rows alone are gone.
    assert record["trainers"]["t0"]["skipped_nonfinite_batches"] == 0
    assert record["trainers"]["t0"]["batches"] == 64
    harvest = record["streams"]["s0"]["harvest"]
    assert harvest["nonfinite_rows"] == 3
    # A shard's rows are examples numbered from 0 over the shards (512 rows each).
    assert harvest["nonfinite_examples"] == [10 * 512 + 100, 20 * 512 + 3, 21 * 512 + 400]
    assert "stream s0: dropped 3 rows holding NaN or Inf before training, from examples " \
           "5220, 10243, 11152" in caplog.text
    assert_all_finite(run_dir)
    summary = pq.read_table(run_dir / "stats" / "summary.parquet").to_pylist()
    assert all(np.isfinite(row["fve"]) for row in summary)


def test_nonfinite_rows_among_the_normalisation_rows_never_reach_the_weights(
        tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", shards=40)
    poison(shards, [(2, 7), (10, 100)])
    run_dir = thresher.run(stored_config(tmp_path / "runs", shards), inline=True,
                           progress=False)
    assert_all_finite(run_dir)


# --------------------------------------------------------------------------------------------
# A disk that fills up during a checkpoint
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A real filesystem of `size` bytes (tmpfs; needs root, as in CI's container)."""
    folder.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                             str(folder)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(128, 64)).astype(np.float32) for _ in range(8)]
    cfg = load_config({"train": {"batch_size": 64, "rows": 64 * 16, "warmup_steps": 1,
                                 "d_sae": 256, "k": 8},
                       "sweep": [{"arch": "topk", "k": [8, 16]}]})
    saes, stats = expand_sweep(cfg), estimate_stream_stats(chunks[0])
    with small_disk(tmp_path / "disk", "3m") as disk:
        trainer = Trainer("t0", saes, cfg.train, stats, disk)
        loop = TrainLoop(trainer, reader_for(make_log(chunks), 64), lambda cursor: None,
                         checkpoint_every=4)
        while trainer.step < 4:  # the first checkpoint, at step 4, fits
            with loop.reader.next_batch() as batch:
                trainer.train_step(batch)
        loop.checkpoint()
        saved = {s.sae_id: trainer.bank.get_sae_state(s.sae_id) for s in saes}
        ballast = disk / "ballast"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        ballast.write_bytes(b"\0" * (free - 64 * 1024))  # the disk fills up meanwhile
        for _ in range(4):
            with loop.reader.next_batch() as batch:
                trainer.train_step(batch)
        with pytest.raises(CheckpointWriteError) as err:
            loop.checkpoint()
        assert err.value.errno == errno.ENOSPC
        message = str(err.value)
        assert "no room on the disk for the checkpoint at step 8" in message
        assert "previous checkpoint (step 4) is intact" in message
        assert f"thresher run --resume {disk}" in message
        for sae in saes:  # no half-written file left behind
            assert not list(checkpoint_dir(disk, sae.sae_id).glob("*.tmp"))

        ballast.unlink()  # room again: the run resumes from the previous checkpoint
        resumed = Trainer("t0", saes, cfg.train, stats, disk)
        assert resumed.step == 4
        for sae in saes:
            state = resumed.bank.get_sae_state(sae.sae_id)
            for key, value in saved[sae.sae_id].items():
                assert torch.equal(state[key], value), f"{sae.sae_id} {key}"


# --------------------------------------------------------------------------------------------
# Chunks larger than the object store
# --------------------------------------------------------------------------------------------


def test_store_budget_sizes_the_harvest_and_refuses_a_log_that_cannot_fit() -> None:
    cfg = load_config({})
    budget = store_budget(cfg, 800 * MIB, streams=2)
    assert budget.share_bytes == 400 * MIB and budget.harvest_bytes == 100 * MIB
    budget.check_log("s0", chunk_rows=8192, capacity_chunks=16, row_bytes=1548)  # 194 MiB fits
    explicit = load_config({"resources": {"harvest_object_store_mb": 64}})
    assert store_budget(explicit, 800 * MIB, streams=1).harvest_bytes == 64 * MIB
    with pytest.raises(ConfigError, match=r"at most 4 chunks of this size fit.*"
                                          r"fewer streams at once"):
        StoreBudget(800 * MIB, 2, 100 * MIB).check_log("s0", 16384, 16, 4108)


@pytest.mark.slow
def test_chunks_larger_than_the_object_store_are_refused_before_any_training(
        ray_session: Any, tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", d=256, shards=8)
    cfg = stored_config(tmp_path / "runs", shards,
                        stream={"chunk_rows": 2**18, "capacity_chunks": 4})
    with pytest.raises(ConfigError) as err:
        thresher.run(cfg, progress=False)
    message = str(err.value)
    assert "stream s0: its chunks do not fit in the object store" in message
    assert "stream.capacity_chunks (4) chunks of stream.chunk_rows (262144) rows" in message
    assert "the object store of the pump's node has 768 MiB" in message  # the session's
    assert "Lower stream.chunk_rows or stream.capacity_chunks" in message
    assert not (tmp_path / "runs" / "stored" / "saes").exists()  # nothing was trained


@pytest.mark.slow
def test_an_error_inside_an_actor_is_told_as_raised_and_where(ray_session: Any) -> None:
    """The one line an internal error gets (the CLI's message, run.json's reason) is the error
    the actor raised, not Ray's wrapper of it (its pid, actor id and colour codes)."""
    from thresher.rundir import one_line

    @ray_session.remote(num_cpus=0)
    class Worker:
        def run(self) -> None:
            raise RuntimeError("the bug\nits second line")

    with pytest.raises(RuntimeError) as err:
        ray_session.get(Worker.remote().run.remote())
    assert isinstance(err.value, ray_session.exceptions.RayTaskError)
    assert one_line(err.value) == "RuntimeError: the bug (in Worker.run)"
