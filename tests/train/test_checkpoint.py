"""Trainer checkpoints (resume, interrupted writes) and the SAELens-format export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.run_configs import with_arch_settings
from thresher.config import SAEConfig, TrainConfig
from thresher.stream.block import ActivationBlock
from thresher.stream.log import Cursor
from thresher.stream.stats import StreamStats, estimate_stream_stats
from thresher.train.checkpoint import (
    STATE_JSON,
    CheckpointError,
    checkpoint_dir,
    read_export,
    save_sae_checkpoint,
)
from thresher.train.trainer import Trainer

D_IN = 24
BATCH = 64

SAES = (
    SAEConfig(sae_id="00-topk-k4", arch="topk", d_sae=64, arch_keys={"k": 4}, lr=3e-3, seed=0),
    SAEConfig(sae_id="01-topk-k8", arch="topk", d_sae=64, arch_keys={"k": 8}, lr=1e-3, seed=1),
    SAEConfig(sae_id="02-relu", arch="relu", d_sae=48, arch_keys={"l1_coef": 0.5}, lr=3e-3,
              seed=2),
)
TRAIN = with_arch_settings(TrainConfig(batch_size=BATCH, rows=BATCH * 20, warmup_steps=2,
                                       decay_start=0.5, grad_clip=1.0), coef_warmup=0.2)


def block(rows: int, seed: int) -> ActivationBlock:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(40, D_IN))
    codes = rng.exponential(size=(rows, 40)) * (rng.random((rows, 40)) < 0.1)
    acts = (codes @ basis + 3.0).astype(np.float32)
    acts.flags.writeable = False  # as handed out by Ray's object store
    return ActivationBlock(acts=acts, example_id=np.arange(rows, dtype=np.int64),
                           position=np.zeros(rows, dtype=np.int32))


@pytest.fixture(scope="module")
def stats() -> StreamStats:
    return estimate_stream_stats(block(1024, seed=1000).float32())


@pytest.fixture(scope="module")
def batches() -> list[ActivationBlock]:
    return [block(BATCH, seed=i) for i in range(12)]


def states(trainer: Trainer) -> dict[str, dict[str, torch.Tensor]]:
    return {sae.sae_id: trainer.bank.get_sae_state(sae.sae_id) for sae in trainer.saes}


def assert_same_states(a: dict[str, dict[str, torch.Tensor]],
                       b: dict[str, dict[str, torch.Tensor]]) -> None:
    assert a.keys() == b.keys()
    for sae_id in a:
        assert a[sae_id].keys() == b[sae_id].keys()
        for key in a[sae_id]:
            assert torch.equal(a[sae_id][key], b[sae_id][key]), f"{sae_id} {key}"


def test_fresh_trainer_starts_at_zero(tmp_path: Path, stats: StreamStats) -> None:
    trainer = Trainer("t0", SAES, TRAIN, stats, tmp_path)
    assert (trainer.step, trainer.rows_seen, trainer.resumed_cursor) == (0, 0, Cursor())
    assert trainer.total_steps == 20 and not trainer.finished
    assert trainer.bank.sae_ids == [s.sae_id for s in SAES]


def test_resume_restores_state_and_continues_identically(
        tmp_path: Path, stats: StreamStats, batches: list[ActivationBlock]) -> None:
    first = Trainer("t0", SAES, TRAIN, stats, tmp_path, hook_name="layer.3")
    for batch in batches[:3]:
        metrics = first.train_step(batch)
    assert set(metrics) >= {"loss", "mse", "l0"} and metrics["loss"].shape == (len(SAES),)
    cursor = Cursor(group=1, offset=3 * BATCH)
    first.save_checkpoint(cursor)

    record = json.loads((checkpoint_dir(tmp_path, SAES[2].sae_id) / STATE_JSON).read_text())
    assert record["format_version"] == 1 and record["sae_id"] == SAES[2].sae_id
    assert (record["step"], record["rows_seen"]) == (3, 3 * BATCH)
    assert record["cursor"] == {"group": 1, "offset": 3 * BATCH}
    assert record["sae"] == SAES[2].to_dict()

    resumed = Trainer("t0", SAES, TRAIN, stats, tmp_path, hook_name="layer.3")
    assert (resumed.step, resumed.rows_seen, resumed.resumed_cursor) == (3, 3 * BATCH, cursor)
    assert_same_states(states(resumed), states(first))
    for batch in batches[3:6]:
        m_first, m_resumed = first.train_step(batch), resumed.train_step(batch)
        for key in m_first:
            np.testing.assert_array_equal(m_first[key], m_resumed[key])
    assert_same_states(states(resumed), states(first))
    assert resumed.step == first.step == 6


def test_stray_temp_files_do_not_break_the_previous_checkpoint(
        tmp_path: Path, stats: StreamStats, batches: list[ActivationBlock]) -> None:
    trainer = Trainer("t0", SAES, TRAIN, stats, tmp_path)
    for batch in batches[:2]:
        trainer.train_step(batch)
    trainer.save_checkpoint(Cursor(0, 2 * BATCH))
    saved = states(trainer)
    for batch in batches[2:4]:
        trainer.train_step(batch)
    # A save at step 4 killed mid-write: truncated temporary weights and json in every folder.
    for sae in SAES:
        folder = checkpoint_dir(tmp_path, sae.sae_id)
        weights = next(folder.glob("state-*.safetensors")).read_bytes()
        (folder / ".state-0000000004.safetensors.0123abcd.tmp").write_bytes(weights[:100])
        (folder / f".{STATE_JSON}.0123abcd.tmp").write_text('{"format_version": 1, "st')

    resumed = Trainer("t0", SAES, TRAIN, stats, tmp_path)
    assert (resumed.step, resumed.resumed_cursor) == (2, Cursor(0, 2 * BATCH))
    assert_same_states(states(resumed), saved)
    # The next save goes through and clears the leftovers.
    resumed.train_step(batches[2])
    resumed.save_checkpoint(Cursor(0, 3 * BATCH))
    for sae in SAES:
        assert not list(checkpoint_dir(tmp_path, sae.sae_id).glob("*.tmp"))
    assert Trainer("t0", SAES, TRAIN, stats, tmp_path).step == 3


def test_save_cut_off_between_saes_rolls_back_to_a_common_step(
        tmp_path: Path, stats: StreamStats, batches: list[ActivationBlock]) -> None:
    trainer = Trainer("t0", SAES, TRAIN, stats, tmp_path)
    for step, batch in enumerate(batches[:4], start=1):
        trainer.train_step(batch)
        if step % 2 == 0:
            trainer.save_checkpoint(Cursor(0, step * BATCH))
            saved = states(trainer)
    for batch in batches[4:6]:
        trainer.train_step(batch)
    # The step-6 save dies after its first SAE: that SAE is at step 6, the others at step 4.
    first = SAES[0]
    save_sae_checkpoint(tmp_path, first, trainer.bank.get_sae_state(first.sae_id),
                        step=6, rows_seen=6 * BATCH, cursor=Cursor(0, 6 * BATCH),
                        input_scale=stats.scale)
    # Only the two generations state.json names are kept on disk.
    assert len(list(checkpoint_dir(tmp_path, first.sae_id).glob("state-*"))) == 2

    resumed = Trainer("t0", SAES, TRAIN, stats, tmp_path)
    assert (resumed.step, resumed.rows_seen) == (4, 4 * BATCH)
    assert resumed.resumed_cursor == Cursor(0, 4 * BATCH)
    assert_same_states(states(resumed), saved)


def test_a_checkpoint_of_another_config_is_refused(tmp_path: Path, stats: StreamStats,
                                                   batches: list[ActivationBlock]) -> None:
    trainer = Trainer("t0", SAES, TRAIN, stats, tmp_path)
    trainer.train_step(batches[0])
    trainer.save_checkpoint(Cursor(0, BATCH))
    changed = (SAES[0], SAES[1], SAEConfig.from_dict({**SAES[2].to_dict(), "lr": 1e-2}))
    with pytest.raises(CheckpointError, match=r"02-relu.*differs in lr"):
        Trainer("t0", changed, TRAIN, stats, tmp_path)
    other_stream = StreamStats(d_in=stats.d_in, scale=stats.scale * 2, center=stats.center,
                               rows=stats.rows)
    with pytest.raises(CheckpointError, match="input scale"):
        Trainer("t0", SAES, TRAIN, other_stream, tmp_path)


def numpy_sae(weights: dict[str, np.ndarray], x: np.ndarray,
              k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A plain float64 SAE on raw activations: f = act((x - b_dec) W_enc + b_enc)."""
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    pre = (x.astype(np.float64) - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if k is None:
        f = np.maximum(pre, 0.0)
    else:
        top = np.argpartition(-pre, k - 1, axis=1)[:, :k]
        f = np.zeros_like(pre)
        np.put_along_axis(f, top, np.maximum(np.take_along_axis(pre, top, axis=1), 0.0), axis=1)
    return f, f @ w["W_dec"] + w["b_dec"]


def test_export_round_trip_on_raw_activations(tmp_path: Path, stats: StreamStats,
                                              batches: list[ActivationBlock]) -> None:
    trainer = Trainer("t0", SAES, TRAIN, stats, tmp_path, hook_name="blocks.1.hook_resid_post")
    for batch in batches[:5]:
        trainer.train_step(batch)
    folders = trainer.export()
    assert folders == [tmp_path / "saes" / s.sae_id for s in SAES]
    x = block(256, seed=500).float32()
    outputs = trainer.bank.encode_decode(torch.from_numpy(x.copy()))
    for sae, folder, (f, x_hat) in zip(SAES, folders, outputs, strict=True):
        cfg, weights = read_export(folder)
        assert cfg["architecture"] == {"topk": "topk", "relu": "standard"}[sae.arch]
        assert (cfg["d_in"], cfg["d_sae"]) == (D_IN, sae.d_sae)
        assert (cfg["dtype"], cfg["device"]) == ("float32", "cpu")
        assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
        assert cfg["hook_name"] == cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
        assert cfg.get("k") == sae.arch_keys.get("k")
        assert cfg["thresher"]["sae"] == sae.to_dict()
        assert cfg["thresher"]["input_scale"] == pytest.approx(stats.scale)
        assert cfg["thresher"]["step"] == 5
        assert {name: v.shape for name, v in weights.items()} == {
            "W_enc": (D_IN, sae.d_sae), "W_dec": (sae.d_sae, D_IN),
            "b_enc": (sae.d_sae,), "b_dec": (D_IN,)}
        assert all(v.dtype == np.float32 for v in weights.values())
        k = sae.arch_keys.get("k")
        f_np, x_hat_np = numpy_sae(weights, x, k)
        assert np.all((f_np > 0).sum(axis=1) <= (k or sae.d_sae))
        np.testing.assert_allclose(f_np, f.numpy(), rtol=1e-4, atol=1e-4)
        scale = float(np.abs(x).max())
        np.testing.assert_allclose(x_hat_np, x_hat.numpy(), rtol=1e-4, atol=1e-5 * scale)
    # the export is exactly what a reload sees: no stray temporary files
    assert not list((tmp_path / "saes").rglob("*.tmp"))


def test_train_step_refuses_to_run_past_the_end(tmp_path: Path, stats: StreamStats,
                                                batches: list[ActivationBlock]) -> None:
    short = TrainConfig(batch_size=BATCH, rows=BATCH * 2 - 1)
    trainer = Trainer("t0", SAES[:1], short, stats, tmp_path)
    assert trainer.total_steps == 2
    trainer.train_step(batches[0])
    trainer.train_step(batches[1].take(slice(0, BATCH - 1)))
    assert trainer.finished and trainer.rows_seen == 2 * BATCH - 1
    with pytest.raises(RuntimeError, match="already taken all 2 steps"):
        trainer.train_step(batches[2])
