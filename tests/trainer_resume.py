"""Train, checkpoint, resume: the check every architecture's checkpoint passes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from thresher.config import SAEConfig, TrainConfig
from thresher.stream.block import ActivationBlock
from thresher.stream.log import Cursor
from thresher.stream.stats import StreamStats
from thresher.train.trainer import Trainer

ROWS = 64  # rows per step


def resumed_states(saes: Sequence[SAEConfig], train: TrainConfig, stats: StreamStats,
                   x: np.ndarray, run_dir: Path
                   ) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """A trainer's four steps, its checkpoint and a second trainer resumed from it; three more
    steps give both the same metrics (asserted). Per SAE: (its state in the first trainer, in
    the resumed one)."""

    def block(i: int) -> ActivationBlock:
        return ActivationBlock(acts=x[i * ROWS:(i + 1) * ROWS],
                               example_id=np.arange(ROWS, dtype=np.int64),
                               position=np.zeros(ROWS, dtype=np.int32))

    first = Trainer("t0", list(saes), train, stats, run_dir)
    for i in range(4):
        first.train_step(block(i))
    first.save_checkpoint(Cursor(0, 4 * ROWS))
    resumed = Trainer("t0", list(saes), train, stats, run_dir)
    assert resumed.step == 4
    for i in range(4, 7):
        a, b = first.train_step(block(i)), resumed.train_step(block(i))
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    return [(first.bank.get_sae_state(s.sae_id), resumed.bank.get_sae_state(s.sae_id))
            for s in saes]
