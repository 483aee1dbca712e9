"""The one declaration of each architecture (thresher/config/archs/<arch>.py) and of the shared
sweep keys (thresher/config/saes.py) drives validation, `train`, the plan, the summary columns
and the training code; an SAE carries only its architecture's sweep keys
(tests/config/test_config_package.py checks that loading a config imports no torch)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.analysis.evaluate import identity_columns
from thresher.analysis.parquet import SUMMARY_SCHEMA, table_from_rows
from thresher.config import (
    ARCH_SPECS,
    ARCHITECTURES,
    SHARED_KEYS,
    SWEEP_KEY,
    SWEEP_KEYS,
    ConfigError,
    SAEConfig,
    TrainConfig,
    expand_sweep,
    load_config,
    make_plan,
)
from thresher.config.saes import TARGET_KEYS
from thresher.uri_io import write_table_atomic

# A grid over three architectures naming every sweep key once, each away from its default.
EVERY_KEY = ("sweep:\n  - {arch: [jumprelu, relu, topk], d_sae: 64, k: 7, l1_coef: 0.25, "
             "l0_coef: 0.125, mono_coef: 0.5, lr: 0.002, seed: 3, stream: s0, hook: layer.3}\n")
OWN = {"jumprelu": "l0_coef", "relu": "l1_coef", "topk": "k"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_every_sweep_key_is_a_summary_column_null_where_its_arch_does_not_read_it(
        tmp_path: Path) -> None:
    """Through the real summary writer: each SAE's own keys land in their columns with their
    values; the keys of other architectures are null."""
    assert set(SWEEP_KEYS) >= set(SWEEP_KEY) and len(SWEEP_KEYS) == len(set(SWEEP_KEYS))
    cfg = load_config(write(tmp_path, EVERY_KEY))
    saes = expand_sweep(cfg)
    rows = []
    for sae in saes:
        identity = identity_columns(cfg, sae.stream_id, "t0", sae, d_in=384)
        rows.append({**identity,
                     **{name: None for name in SUMMARY_SCHEMA.names if name not in identity}})
    path = write_table_atomic(tmp_path / "summary.parquet", table_from_rows(rows, SUMMARY_SCHEMA))
    back = pq.read_table(path).to_pylist()
    shared = {"d_sae": 64, "mono_coef": 0.5, "lr": 0.002, "seed": 3, "stream_id": "s0",
              "hook": "layer.3"}
    values = {"k": 7, "l1_coef": 0.25, "l0_coef": 0.125}
    assert set(shared) | set(values) | {"arch"} == {TARGET_KEYS.get(k, k) for k in SWEEP_KEYS}
    assert [row["arch"] for row in back] == ["jumprelu", "relu", "topk"]
    for row in back:
        assert {k: row[k] for k in shared} == shared
        own = OWN[row["arch"]]
        assert {k: row[k] for k in values} == {k: v if k == own else None
                                               for k, v in values.items()}, row["arch"]
    schema = pq.read_schema(path)
    for key, declared in SWEEP_KEY.items():
        assert schema.field(key).type == getattr(pa, declared.column_type)()


def test_an_sae_carries_only_its_architectures_keys_yet_its_id_names_the_grid() -> None:
    cfg = load_config({"sweep": [{"arch": ["topk", "relu"], "k": [4, 8]}]})
    ids = [(sae.sae_id, sae.arch_keys) for sae in expand_sweep(cfg)]
    assert ids == [("00-topk-k4", {"k": 4}), ("01-topk-k8", {"k": 8}),
                   ("02-relu-k4", {"l1_coef": cfg.train.l1_coef}),
                   ("03-relu-k8", {"l1_coef": cfg.train.l1_coef})]
    relu = expand_sweep(cfg)[2]
    assert relu.to_dict() == {"sae_id": "02-relu-k4", "arch": "relu", "d_sae": 1536,
                              "l1_coef": 5.0, "mono_coef": 0.0, "lr": 1e-3, "seed": 0,
                              "stream_id": "s0", "hook": "layer.3"}
    assert SAEConfig.from_dict(relu.to_dict()) == relu
    with pytest.raises(ValueError, match=r"arch 'relu' reads the sweep keys \['l1_coef'\], "
                                         r"got \['k'\]"):
        SAEConfig(sae_id="x", arch="relu", arch_keys={"k": 4})
    with pytest.raises(ValueError, match="unknown arch 'sparse'"):
        SAEConfig(sae_id="x", arch="sparse")


@pytest.mark.parametrize(("text", "message"), [
    ("train: {l1_coeff: 2.0}\n", r"unknown key `train.l1_coeff` \(.*cfg.yaml:1\); did you mean "
                                 r"`l1_coef`"),
    ("train:\n  batch_size: 8\n  jumprelu: {band: 0.1}\n",
     r"unknown key `train.jumprelu.band` \(.*cfg.yaml:3\); did you mean `bandwidth`"),
    ("sweep:\n  - {arch: relu, l1coef: 2.0}\n", r"unknown key `sweep.0.l1coef` \(.*cfg.yaml:2\);"
                                                r" did you mean `l1_coef`"),
    ("train: {arch: relus}\n", r"`train.arch` \(.*cfg.yaml:1\) is 'relus'; did you mean 'relu'"
                               r"\? Valid choices: 'batchtopk' \| "),
])
def test_a_wrong_key_or_arch_is_told_the_close_one_with_file_and_line(
        tmp_path: Path, text: str, message: str) -> None:
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


def test_train_is_built_from_the_declarations() -> None:
    """train.<arch> per architecture and train.<key> per sweep key, from the specs alone."""
    train = TrainConfig()
    hints = typing.get_type_hints(TrainConfig)
    for spec in ARCH_SPECS:
        assert type(train.arch_settings(spec.name)) is spec.settings
        assert hints[spec.name] is spec.settings
        for key in spec.sweep_keys:
            assert getattr(train, key.name) == key.default and hints[key.name] is key.type
    for key in SHARED_KEYS:
        assert getattr(train, key.name) == key.default
    assert tuple(sorted(spec.name for spec in ARCH_SPECS)) == ARCHITECTURES
    assert {f.name for f in dataclasses.fields(SAEConfig)} >= {k.name for k in SHARED_KEYS}


def test_plan_shows_the_hyperparameters_each_architecture_reads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "sweep:\n  - {arch: relu, l1_coef: 2}\n"
                                      "  - {arch: jumprelu, l0_coef: 0.25, mono_coef: 0.5}\n"
                                      "  - {arch: topk, k: 8}\n"))
    lines = [line for line in make_plan(cfg).describe().splitlines() if " d_sae=" in line]
    relu, jumprelu, topk = sorted(lines, key=lambda line: line.split()[0])
    assert "l1_coef=2" in relu and " k=" not in relu and "l0_coef" not in relu
    assert "l0_coef=0.25 mono_coef=0.5" in jumprelu and "l1_coef" not in jumprelu
    assert " k=8 " in topk and "mono_coef" not in topk and "l1_coef" not in topk
