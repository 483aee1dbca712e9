"""TrainLoop on the plain log: checkpoints commit cursors, non-finite batches are skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.stream_data import make_log, reader_for
from thresher.config import expand_sweep, load_config
from thresher.stream.block import ActivationBlock
from thresher.stream.stats import estimate_stream_stats
from thresher.train.loop import CURSOR_DONE, TrainLoop
from thresher.train.trainer import Trainer


def test_nonfinite_batches_are_skipped_and_never_reach_the_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(64, 16)) for _ in range(4)]
    chunks[1][5, 3] = np.nan
    chunks[2][7, 0] = np.inf
    log = make_log(chunks)
    stats = estimate_stream_stats(chunks[0])
    cfg = load_config({
        "train": {"batch_size": 32, "rows": 10_000, "checkpoint_every": 2, "warmup_steps": 1,
                  "d_sae": 32, "k": 4, "lr": 1e-2},
        "sweep": [{"arch": "topk"}, {"arch": "relu", "l1_coef": 1.0, "seed": 1}]})
    train = cfg.train
    saes = expand_sweep(cfg)
    trainer = Trainer("t0", saes, train, stats, tmp_path)
    commits = []
    loop = TrainLoop(trainer, reader_for(log, 32), commits.append, checkpoint_every=2)
    assert loop.advance() == "finished"
    # 8 batches of 32 rows; rows are mixed, so count the poisoned ones on a second reader
    check, poisoned = reader_for(log, 32), 0
    for _ in range(8):
        poisoned += not np.isfinite(check.next_batch().block.acts).all()
    assert poisoned >= 1
    assert loop.counters.skipped_batches == poisoned
    assert trainer.step == 8 - poisoned
    for sae_id in trainer.bank.sae_ids:
        for tensor in trainer.bank.sae_params(sae_id).values():
            assert torch.isfinite(tensor).all()
    # checkpoints commit increasing cursors; a finished trainer commits past everything
    assert commits == sorted(commits) and commits[-1] == CURSOR_DONE
    assert (tmp_path / "saes" / saes[0].sae_id / "checkpoint" / "state.json").is_file()


def test_batch_tensor_shares_float32_rows_and_counts_its_copies() -> None:
    from thresher.train.trainer import batch_tensor

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(8, 4)).astype(np.float32)
    block = ActivationBlock(acts, np.arange(8), np.zeros(8, dtype=np.int32))
    cpu = torch.device("cpu")
    x, copies = batch_tensor(block, cpu)
    assert copies == 0 and np.shares_memory(x.numpy(), acts)
    acts.flags.writeable = False  # as mapped from Ray's object store: torch may not share it
    x, copies = batch_tensor(block, cpu)
    assert copies == 1 and not np.shares_memory(x.numpy(), acts)
    np.testing.assert_array_equal(x.numpy(), acts)
    # bf16 rows (their bits as int16) widen to float32 on the device: one copy
    bits = torch.from_numpy(acts.copy()).bfloat16().view(torch.int16).numpy()
    x, copies = batch_tensor(ActivationBlock(bits, np.arange(8), np.zeros(8, dtype=np.int32),
                                             bf16_bits=True), cpu)
    assert copies == 1 and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), acts, rtol=2**-8)
