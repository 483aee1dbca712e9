"""EEG test data shared by several test modules: EDF files, and a small harvest of spkit's
sample recording by the tiny PatchTST (its config, a YAML file of it, the rows it makes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.tiny_models import TINY_PATCHTST
from thresher.config import SourceConfig
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import decode_batch, prepare_inputs
from thresher.modalities.eeg.spec import EEGInputs, PatchTSTConfig
from thresher.stream.block import ActivationBlock


def write_edf(path: Path, signals: np.ndarray, labels: list[str], rate: int = 128) -> None:
    """An EDF+ file of `signals` [channels, time] in microvolts (±1000)."""
    import pyedflib

    writer = pyedflib.EdfWriter(str(path), len(labels), file_type=pyedflib.FILETYPE_EDFPLUS)
    headers = []
    for label in labels:
        headers.append({"label": label, "dimension": "uV", "sample_frequency": rate,
                        "physical_max": 1000.0, "physical_min": -1000.0,
                        "digital_max": 32767, "digital_min": -32768})
    writer.setSignalHeaders(headers)
    writer.writeSamples([s.astype(np.float64) for s in signals])
    writer.close()


def eeg_config(out: Path, **source: Any) -> dict[str, Any]:
    """A run of the tiny PatchTST, layer 1, on spkit's sample recording (a few seconds)."""
    return {
        "run": {"name": "eeg", "out": str(out), "seed": 0},
        "source": {"backbone": {"kind": "patchtst", "model": "", "config": TINY_PATCHTST},
                   "hook": "layer.1",
                   "inputs": {"kind": "spkit_eeg_sample", "context": 128, "stride": 32},
                   "batch_size": 8, **source},
        "stream": {"chunk_rows": 512, "capacity_chunks": 8, "mix_chunks": 2,
                   "holdout_rows": 1024, "norm_rows": 512},
        "train": {"batch_size": 128, "rows": 2048, "checkpoint_every": 8, "warmup_steps": 2,
                  "d_sae": 64, "k": 8},
        "resources": {"harvester_threads": 1, "trainer_threads": 1},
    }


def write_yaml(folder: Path, cfg: dict[str, Any]) -> str:
    """`cfg` as folder/cfg.yaml; returns its path."""
    import yaml

    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def harvested_rows(cfg: Any, base: Path) -> ActivationBlock:
    """Every row the config's source harvests, in order, by a Harvester in this process."""
    inputs = prepare_inputs(cfg.source, cfg.run.seed, base)
    harvester = Harvester(cfg.source, base_dir=base)
    return ActivationBlock.concat([harvester.harvest(decode_batch(inputs, b))
                                   for b in inputs.batches])


def eeg_source(hook: str = "layer.0", kind: str = "spkit_eeg_sample", paths: tuple = (),
               config: dict[str, Any] | None = None, model: str = "", **inputs: Any
               ) -> SourceConfig:
    """A PatchTST source over EEG recordings (spkit's sample unless `kind`/`paths` say)."""
    return SourceConfig(
        backbone=PatchTSTConfig(model=model, config=config),
        hook=hook,
        inputs=EEGInputs(kind=kind, paths=paths, **{"context": 128, **inputs}),  # type: ignore[arg-type]
        batch_size=4)
