"""Config loading, validation messages, sweep expansion and the plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from thresher.cli import main
from thresher.config import (
    ConfigError,
    expand_sweep,
    load_config,
    make_plan,
    pack_trainers,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_default_config_plans_six_saes_on_one_stream() -> None:
    plan = make_plan(load_config(None))
    (stream,) = plan.streams
    assert len(stream.saes) == 6
    assert len(stream.trainers) == 2
    ids = [s.sae_id for s in stream.saes]
    assert len(set(ids)) == 6
    assert "harvest: 1 pass" in plan.describe()


def test_unknown_key_names_key_file_line_and_choices(tmp_path: Path) -> None:
    path = write(tmp_path, "run:\n  name: x\nstream:\n  chunk_row: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "`stream.chunk_row`" in msg
    assert f"{path}:4" in msg
    assert "did you mean `chunk_rows`" in msg
    assert "capacity_chunks" in msg  # the valid keys are listed


def test_bad_type_names_key_and_expected_type(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  batch_size: lots\n")
    with pytest.raises(ConfigError,
                       match=r"`train.batch_size` \(.*cfg.yaml:2\) must be an integer"):
        load_config(path)
    path = write(tmp_path, "source:\n  backbone: {kind: hf_txt}\n")
    with pytest.raises(ConfigError, match=r"did you mean 'hf_text'.*Valid choices"):
        load_config(path)


def test_missing_input_file_names_path(tmp_path: Path) -> None:
    path = write(tmp_path, "source:\n  inputs: {kind: text_files, paths: [nope/*.txt]}\n")
    with pytest.raises(ConfigError, match=r"no file matches 'nope/\*.txt'") as err:
        load_config(path)
    assert "source.inputs.paths.0" in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/no/such/config.yaml")


def test_sweep_grid_expands_and_validates(tmp_path: Path) -> None:
    path = write(tmp_path, "sweep:\n  - {arch: topk, k: [8, 16], lr: [1e-3, 3e-4, 1e-4]}\n"
                           "  - {arch: relu, l1_coef: 2}\n")
    saes = expand_sweep(load_config(path))
    assert len(saes) == 7
    assert {s.lr for s in saes[:6]} == {1e-3, 3e-4, 1e-4}  # 1e-3 is a float, not a string
    assert saes[6].arch == "relu" and saes[6].arch_keys == {"l1_coef": 2.0}
    bad = write(tmp_path, "sweep:\n  - {arch: topk, kk: [8]}\n")
    with pytest.raises(ConfigError, match=r"unknown key `sweep.0.kk`.*did you mean `k`"):
        load_config(bad)
    bad = write(tmp_path, "sweep:\n  - {arch: [topk, sparse]}\n")
    with pytest.raises(ConfigError, match=r"`sweep.0.arch.1`.*Valid choices"):
        load_config(bad)


def test_capacity_must_hold_two_groups(tmp_path: Path) -> None:
    path = write(tmp_path, "stream: {capacity_chunks: 4, mix_chunks: 4}\n")
    with pytest.raises(ConfigError, match=r"at least 2 x stream\.mix_chunks"):
        load_config(path)


def test_packing_balances_cost() -> None:
    cfg = load_config({"sweep": [{"d_sae": [4096, 1024, 1024, 1024, 1024]}],
                       "resources": {"trainers": 2}})
    packed = pack_trainers(expand_sweep(cfg), 2)
    loads = sorted(sum(s.d_sae for s in group) for group in packed)
    assert loads == [4096, 4096]


def test_cli_plan_prints_plan_and_errors_exit_2(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan"]) == 0
    assert "00-topk-k16-lr0.002" in capsys.readouterr().out
    path = write(tmp_path, "sweeps: []\n")
    assert main(["plan", str(path)]) == 2
    assert "unknown key `sweeps`" in capsys.readouterr().err


def test_an_empty_config_file_is_refused_not_read_as_defaults(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "# every key left out\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"config file {str(path)!r} is empty" in err[0]
    assert "omit the file to run the built-in default" in err[0]


@pytest.mark.parametrize(("text", "sae"), [
    ("train: {d_sae: 32, k: 64}\n", "00-topk has k 64, not below its d_sae 32"),
    ("train: {d_sae: 32}\nsweep:\n  - {arch: [relu, batchtopk], k: [4, 32]}\n",
     "03-batchtopk-k32 has k 32, not below its d_sae 32"),
])
def test_k_at_or_above_d_sae_is_refused_at_plan_time(tmp_path: Path, text: str,
                                                     sae: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"SAE {sae}".replace(" has", f" in {path} has") in str(err.value)
    assert "lower k or raise d_sae" in str(err.value)


def test_k_of_an_architecture_that_does_not_read_it_is_not_checked() -> None:
    saes = expand_sweep(load_config({"train": {"d_sae": 32},
                                     "sweep": [{"arch": "relu", "k": [64]}]}))
    assert [s.arch_keys for s in saes] == [{"l1_coef": 5.0}]
