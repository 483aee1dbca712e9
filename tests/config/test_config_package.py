"""The config package's contracts: it reads no stage, round-trips through plain data, checks
the architectures' settings with file:line, and hands each role its threads and device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.paths import ROOT
from tests.run_configs import smoke_config
from tests.stored_data import stored_config, write_shards
from thresher.config import ConfigError, load_config, make_plan, torch_threads
from thresher.devices import torch_device


def test_loading_a_config_imports_no_stage_and_no_torch() -> None:
    code = ("import sys, thresher.config as c; c.load_config(None); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(("
            "'thresher.harvest', 'thresher.train', 'thresher.stream', 'thresher.analysis', "
            "'thresher.distributed'))))")
    # Importing the `thresher` package itself pulls in the API; import the config alone.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"


def test_to_dict_loads_back_to_the_same_config(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {d_sae: 512}\n")
    cfg = load_config(path)
    plain = cfg.to_dict()
    assert "source_file" not in plain
    again = load_config(plain, source_file=cfg.source_file)
    assert again == cfg and again.source_file == cfg.source_file


def test_an_architecture_setting_out_of_range_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  d_sae: 512\n  batchtopk: {threshold_ema: 1.5}\n")
    with pytest.raises(ConfigError, match=r"`train.batchtopk.threshold_ema` \(.*cfg.yaml:3\) "
                                          r"must be in \(0, 1\], got 1.5"):
        load_config(path)
    path.write_text("train:\n  matryoshka: {fractions: [0.5, 1.5]}\n")
    with pytest.raises(ConfigError, match=r"`train.matryoshka.fractions` \(.*cfg.yaml:2\)"):
        load_config(path)


def test_a_harvester_counts_its_own_sources_cpus(tmp_path: Path) -> None:
    resources = {"cpus_per_harvester": 1, "harvester_threads": None}
    cfg = load_config(smoke_config(tmp_path, resources=resources))
    (source,) = cfg.sources
    assert torch_threads(cfg, "harvester", source) == 1
    own = load_config(smoke_config(tmp_path, resources=resources, source={
        **cfg.to_dict()["source"], "cpus_per_harvester": 3}))
    assert torch_threads(own, "harvester", own.sources[0]) == 3
    assert torch_threads(own, "harvester") == 1  # without the source: the resources value


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_backbone_device_is_obeyed() -> None:
    assert torch_device(1.0, "cpu", role="harvester") == "cpu"
    assert torch_device(0.0, "auto", role="harvester") == "cpu"
    with pytest.raises(ConfigError, match=r"backbone\.device is cuda but torch sees no CUDA "
                                          r"device here; set backbone\.device to auto or cpu"):
        torch_device(0.0, "cuda", role="harvester")


def test_a_stored_plan_needs_its_stores_header(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", d=16, shards=1, rows=64)
    cfg = load_config(stored_config(tmp_path, shards))
    with pytest.raises(ConfigError, match=r"plan the config with thresher.plan\(config\)"):
        make_plan(cfg)
