"""EEG sources: PatchTST rows vs the model's own outputs; windows, .npy/EDF inputs, skipping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.eeg_data import eeg_source, write_edf
from tests.tiny_models import TINY_PATCHTST
from thresher.config import ConfigError, load_config
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import prepare_inputs
from thresher.modalities.eeg.recordings import cut_windows, spkit_eeg_sample


@pytest.mark.parametrize(("hook", "index"), [("embeddings", 0), ("layer.0", 1), ("layer.1", 2),
                                             ("layer.2", None)])
def test_patchtst_rows_equal_model_outputs(hook: str, index: int | None) -> None:
    """hidden_states[i] is layer i's INPUT; the last layer's output is last_hidden_state."""
    source = eeg_source(hook, config=TINY_PATCHTST, stride=64)
    inputs = prepare_inputs(source, 0, Path("."))
    harvester = Harvester(source)
    batch = inputs.batches[0]
    block = harvester.harvest(batch)
    out = harvester.backbone.model(past_values=torch.from_numpy(batch.values),
                                   output_hidden_states=True)
    ref = out.last_hidden_state if index is None else out.hidden_states[index]
    _, c, p, d = ref.shape
    assert (c, p) == (14, 8)
    np.testing.assert_allclose(block.acts, ref.reshape(-1, d).detach().numpy(), atol=1e-5)
    # example_id = window, position = channel * num_patches + patch
    assert block.example_id.tolist() == np.repeat(batch.example_id, c * p).tolist()
    assert block.position[: c * p].tolist() == list(range(c * p))
    channel, patch = divmod(int(block.position[37]), p)
    np.testing.assert_allclose(block.acts[37], ref[0, channel, patch].detach().numpy(), atol=1e-5)


def test_spkit_sample_windows_and_manifest() -> None:
    rec = spkit_eeg_sample()
    assert rec.signals.shape == (14, 2048) and rec.channels[:3] == ["AF3", "F7", "F3"]
    source = eeg_source(config=TINY_PATCHTST, stride=256, scaling="window")
    inputs = prepare_inputs(source, 0, Path("."))
    manifest = inputs.manifest.to_pylist()
    assert len(manifest) == (2048 - 128) // 256 + 1
    assert sorted(r["start"] for r in manifest) == list(range(0, 2048 - 127, 256))
    assert all(r["channels"] == rec.channels and r["num_patches"] == 8 for r in manifest)
    first = manifest[0]
    window = inputs.batches[0].values[0]  # example 0, [time, channels]
    raw = rec.signals[:, first["start"]:first["start"] + 128].T
    expected = (raw - raw.mean(0)) / raw.std(0)
    np.testing.assert_allclose(window, expected, rtol=1e-4, atol=1e-4)
    assert inputs.planned_rows == len(manifest) * 14 * 8


def test_cut_windows_stride_and_scaling_none() -> None:
    signals = np.arange(30, dtype=np.float32).reshape(2, 15)
    windows, starts = cut_windows(signals, context=5, stride=4, scaling="none")
    assert starts.tolist() == [0, 4, 8]
    assert windows.shape == (3, 5, 2)
    np.testing.assert_array_equal(windows[1][:, 1], signals[1, 4:9])


def test_edf_and_npy_inputs_skip_a_corrupt_file(tmp_path: Path) -> None:
    rec = spkit_eeg_sample()
    signals = np.clip(rec.signals[:, :1024] - rec.signals.mean(1, keepdims=True), -900, 900)
    write_edf(tmp_path / "a.edf", signals, rec.channels)
    write_edf(tmp_path / "b.edf", signals[:, ::-1].copy(), rec.channels)
    (tmp_path / "c.edf").write_bytes(b"0       garbage that is not an EDF header" * 10)
    source = eeg_source(kind="edf", paths=("*.edf",), config=TINY_PATCHTST,
                        channels=("O1", "O2", "AF3"))
    with pytest.raises(ConfigError, match="3 channels but the patchtst model takes"):
        prepare_inputs(source, 0, tmp_path)
    three = {**TINY_PATCHTST, "num_input_channels": 3}
    source = eeg_source(kind="edf", paths=("*.edf",), config=three,
                        channels=("O1", "O2", "AF3"))
    inputs = prepare_inputs(source, 0, tmp_path)
    assert len(inputs.unreadable) == 1 and inputs.unreadable[0].startswith(str(tmp_path / "c.edf"))
    manifest = inputs.manifest.to_pylist()
    assert {r["recording"] for r in manifest} == {"a", "b"}
    assert len(manifest) == 2 * (1024 // 128)
    assert manifest[0]["channels"] == ["O1", "O2", "AF3"]
    row = next(i for i, r in enumerate(manifest) if r["recording"] == "a" and r["start"] == 0)
    batch, slot = divmod(row, 4)
    got = inputs.batches[batch].values[slot]
    index = [rec.channels.index(c) for c in ("O1", "O2", "AF3")]
    np.testing.assert_allclose(got, signals[index, :128].T, atol=0.05)  # 16-bit EDF resolution

    np.save(tmp_path / "r1.npy", signals[:3])
    (tmp_path / "r2.npy").write_bytes(b"\x93NUMPY broken")
    npy = eeg_source(kind="eeg_npy", paths=("*.npy",), config=three)
    inputs = prepare_inputs(npy, 0, tmp_path)
    assert len(inputs.unreadable) == 1 and "r2.npy" in inputs.unreadable[0]
    assert inputs.manifest.num_rows == 8
    assert inputs.manifest.column("channels")[0].as_py() == ["ch0", "ch1", "ch2"]


def test_patchtst_local_checkpoint_and_errors(tmp_path: Path) -> None:
    from transformers import PatchTSTConfig, PatchTSTForPretraining

    torch.manual_seed(0)
    pretraining = PatchTSTForPretraining(PatchTSTConfig(**TINY_PATCHTST)).eval()
    pretraining.save_pretrained(tmp_path / "ckpt")
    source = eeg_source("layer.2", model=str(tmp_path / "ckpt"))
    inputs = prepare_inputs(source, 0, Path("."))
    batch = inputs.batches[0]
    block = Harvester(source).harvest(batch)
    base = pretraining.model  # pre-training masks random patches: harvesting never does
    base.do_mask_input, base.masking = False, torch.nn.Identity()
    ref = base(past_values=torch.from_numpy(batch.values)).last_hidden_state
    np.testing.assert_allclose(block.acts, ref.reshape(-1, 32).detach().numpy(), atol=1e-5)

    with pytest.raises(ConfigError, match=r"valid hooks: embeddings, layer\.0"):
        Harvester(eeg_source("layer.3", config=TINY_PATCHTST))
    with pytest.raises(ConfigError, match="context_length 128"):
        prepare_inputs(eeg_source(config=TINY_PATCHTST, context=256), 0, Path("."))
    with pytest.raises(ConfigError, match="reads eeg"):
        load_config({"source": {"backbone": {"kind": "patchtst", "model": "x"},
                                "inputs": {"kind": "image_folder", "paths": ["."]}}})
