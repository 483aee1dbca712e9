"""`thresher plan` says what the run will do: a training budget below one batch is an error
with the fix, a budget that is not whole batches is shown rounded, and a `stored` source shows
the store it replays instead of text-input settings it never uses."""

from __future__ import annotations

from pathlib import Path

import pytest

import thresher
from tests.run_configs import smoke_config
from tests.stored_data import HOOK, stored_config, write_shards
from thresher.config import ConfigError, load_config, make_plan


def test_rows_below_one_batch_is_an_error_with_the_fix(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path, train={"rows": 100, "batch_size": 512})
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    message = str(err.value)
    assert "train.rows" in message and "below one batch" in message
    assert "at least 512" in message and "\n" not in message


def test_rows_not_whole_batches_are_shown_rounded_up(tmp_path: Path) -> None:
    text = make_plan(load_config(smoke_config(
        tmp_path, train={"rows": 1000, "batch_size": 256}))).describe()
    assert "1024 rows each (train.rows 1000 rounded up to 4 whole batches)" in text
    exact = make_plan(load_config(smoke_config(
        tmp_path, train={"rows": 1024, "batch_size": 256}))).describe()
    assert "1024 rows each, batch 256" in exact and "rounded" not in exact


def test_a_stored_plan_shows_the_store_not_text_inputs(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", d=48, shards=3, rows=100)
    text = thresher.plan(stored_config(tmp_path, shards)).describe()
    stream_line = next(line for line in text.splitlines() if line.startswith("stream s0"))
    assert str(shards) in stream_line and "300 rows of width 48 in 3 block(s)" in stream_line
    assert f"{HOOK} (48)" in stream_line
    for unused in ("python_docstrings", "context", "max_tokens", "batch 64"):
        assert unused not in stream_line


def test_a_synthetic_plan_shows_its_generator_not_a_model(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    cfg["source"] = {"backbone": {"kind": "synthetic", "n_features": 512, "d_in": 64,
                                  "n_parents": 8, "rows": 65536, "seed": 3},
                     "hook": "synthetic"}
    line = thresher.plan(cfg).describe().splitlines()[1]
    assert line.startswith("stream s0: synthetic: 65536 rows of 64 dims from 512 known features")
    assert "hierarchy 8 parents x 2 children" in line and "seed 3" in line
    assert "minilm" not in line and "inputs" not in line


def test_an_unknown_train_key_is_told_the_valid_ones(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    cfg["train"]["tokens"] = cfg["train"].pop("rows")
    with pytest.raises(ConfigError, match=r"unknown key `train\.tokens`.* Valid keys here: "
                                          r"batch_size, rows, "):
        load_config(cfg)
