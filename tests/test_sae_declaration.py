"""The one declaration of sweep keys and architecture settings (thresher/config/saes.py) drives
validation, the plan, the summary columns and the training code; old keys are told their new
names (tests/test_config_package.py checks that loading a config imports no torch)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.analysis.evaluate import identity_columns
from thresher.analysis.parquet import SUMMARY_SCHEMA, table_from_rows
from thresher.config import (
    ARCH_SPECS,
    SWEEP_KEY,
    SWEEP_KEYS,
    ConfigError,
    TrainConfig,
    expand_sweep,
    load_config,
    make_plan,
)
from thresher.config.saes import TARGET_KEYS
from thresher.uri_io import write_table_atomic

# Text that names every sweep key once, each away from its default.
EVERY_KEY = ("sweep:\n  - {arch: jumprelu, d_sae: 64, k: 7, l1_coef: 0.25, l0_coef: 0.125, "
             "mono_coef: 0.5, lr: 0.002, seed: 3, stream: s0, hook: layer.3}\n")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_every_sweep_key_is_a_summary_column_written_and_read_back(tmp_path: Path) -> None:
    """Through the real summary writer: each sweep key lands in its column with its value."""
    assert set(SWEEP_KEYS) >= set(SWEEP_KEY) and len(SWEEP_KEYS) == len(set(SWEEP_KEYS))
    cfg = load_config(write(tmp_path, EVERY_KEY))
    (sae,) = expand_sweep(cfg)
    identity = identity_columns(cfg, sae.stream_id, "t0", sae, d_in=384)
    row = {**identity, **{name: None for name in SUMMARY_SCHEMA.names if name not in identity}}
    path = write_table_atomic(table_from_rows([row], SUMMARY_SCHEMA), tmp_path / "summary.parquet")
    back = pq.read_table(path)
    columns = {key: TARGET_KEYS.get(key, key) for key in SWEEP_KEYS}
    expected = {"arch": "jumprelu", "d_sae": 64, "k": 7, "l1_coef": 0.25, "l0_coef": 0.125,
                "mono_coef": 0.5, "lr": 0.002, "seed": 3, "stream": "s0", "hook": "layer.3"}
    assert set(expected) == set(SWEEP_KEYS)  # this test names every key the declaration has
    for key, column in columns.items():
        assert column in back.column_names, key
        assert back.column(column)[0].as_py() == expected[key], key
    for key, declared in SWEEP_KEY.items():
        assert back.schema.field(key).type == getattr(pa, declared.column_type)()


@pytest.mark.parametrize(("text", "message"), [
    ("train: {l1: 2.0}\n", r"`train.l1` \(.*cfg.yaml:1\) is now `train.l1_coef`"),
    ("train:\n  batch_size: 8\n  l0: 0.1\n", r"`train.l0` \(.*cfg.yaml:3\) is now `train.l0_coef`"),
    ("train: {sae_seed: 1}\n", r"`train.sae_seed` .* is now `train.seed`"),
    ("train: {jumprelu_bandwidth: 0.1}\n", r"`train.jumprelu_bandwidth` .* is now "
                                           r"`train.jumprelu.bandwidth`"),
    ("train: {aux_k: 4}\n", r"is now `train.topk.aux_k` and `train.batchtopk.aux_k` and "
                            r"`train.matryoshka.aux_k`"),
    ("train: {l1_warmup: 0.1}\n", r"is now `train.relu.coef_warmup` and "
                                  r"`train.jumprelu.coef_warmup`"),
    ("sweep:\n  - {arch: relu, l1: 2.0}\n", r"`sweep.0.l1` \(.*cfg.yaml:2\): sweep key `l1` is "
                                            r"now `l1_coef`"),
    ("sweep:\n  - {arch: jumprelu, l0: [1, 2]}\n", r"sweep key `l0` is now `l0_coef`"),
])
def test_an_old_key_names_its_new_one(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_architecture_settings_are_typed_frozen_sections_checked_with_file_and_line(
        tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "train:\n  jumprelu: {bandwidth: 0.2}\n"
                                      "  matryoshka: {fractions: [0.5], aux_k: 3}\n"))
    assert cfg.train.jumprelu.bandwidth == 0.2
    assert cfg.train.jumprelu.init_threshold == TrainConfig().jumprelu.init_threshold
    assert cfg.train.matryoshka.fractions == (0.5,) and cfg.train.matryoshka.aux_k == 3
    assert cfg.train.topk.aux_k == 0  # each architecture carries its own
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.jumprelu.bandwidth = 1.0  # type: ignore[misc]
    bad = write(tmp_path, "train:\n  batchtopk:\n    threshold_ema: 2\n")
    with pytest.raises(ConfigError, match=r"`train.batchtopk.threshold_ema` \(.*cfg.yaml:3\) "
                                          r"must be in \(0, 1\]"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"unknown key `train.relu.bandwidth`"):
        load_config(write(tmp_path, "train: {relu: {bandwidth: 0.1}}\n"))
    # the sweep keys' defaults pass the sweep's own checks
    with pytest.raises(ConfigError, match=r"`train.l1_coef` .* must be >= 0"):
        load_config(write(tmp_path, "train: {l1_coef: -1}\n"))


def test_train_holds_one_section_per_declared_architecture() -> None:
    train = TrainConfig()
    for spec in ARCH_SPECS:
        assert type(train.arch_settings(spec.name)) is spec.settings
    assert {f.name for f in dataclasses.fields(TrainConfig)} >= {s.name for s in ARCH_SPECS}
    changed = train.with_arch_settings(coef_warmup=0.5)
    assert changed.relu.coef_warmup == changed.jumprelu.coef_warmup == 0.5
    with pytest.raises(TypeError, match="no architecture has"):
        train.with_arch_settings(no_such_setting=1)


def test_plan_shows_the_hyperparameters_each_architecture_reads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "sweep:\n  - {arch: relu, l1_coef: 2}\n"
                                      "  - {arch: jumprelu, l0_coef: 0.25, mono_coef: 0.5}\n"
                                      "  - {arch: topk, k: 8}\n"))
    lines = [line for line in make_plan(cfg).describe().splitlines() if " d_sae=" in line]
    relu, jumprelu, topk = sorted(lines, key=lambda line: line.split()[0])
    assert "l1_coef=2" in relu and " k=" not in relu and "l0_coef" not in relu
    assert "l0_coef=0.25 mono_coef=0.5" in jumprelu and "l1_coef" not in jumprelu
    assert " k=8 " in topk and "mono_coef" not in topk and "l1_coef" not in topk
