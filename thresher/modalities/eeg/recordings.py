"""EEG inputs: recordings (.npy, EDF, spkit's sample), windows, input batches, the manifest.

A recording is channels x time. Windows of `inputs.context` samples are cut every
`inputs.stride` samples (optionally standardised per channel, `scaling: window`); one window is
one example. PatchTST turns a window into (channel, patch) tokens; each token is one row with
example_id = the window and position = channel * num_patches + patch. The inputs manifest names
each window's recording, its index in the recording, its first sample and the channel names.

A recording that cannot be read (a corrupt EDF, a malformed .npy) is skipped and counted.
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from thresher.config import ConfigError, SourceConfig, input_files
from thresher.modalities.contract import InputBatch, Inputs
from thresher.modalities.eeg.kind import window_shape
from thresher.modalities.eeg.spec import SPKIT

SPKIT_SAMPLE_RATE = 128  # Hz, as spkit's own loader says
EEG_MANIFEST_SCHEMA = pa.schema([
    ("example_id", pa.int64()),
    ("origin", pa.string()),  # the recording's file
    ("recording", pa.string()),
    ("window", pa.int64()),  # index of the window within its recording
    ("start", pa.int64()),  # first sample of the window
    ("length", pa.int64()),  # samples in the window
    ("channels", pa.list_(pa.string())),  # channel names; a row's channel indexes this list
    ("num_patches", pa.int32()),  # position = channel * num_patches + patch
])


@dataclass(frozen=True, eq=False)
class WindowBatch(InputBatch):
    """Windows of a recording, channels last; filler rows have example_id -1."""

    values: np.ndarray  # float32 [batch, context, channels]
    example_id: np.ndarray  # int64 [batch]


@dataclass
class Recording:
    name: str
    origin: str
    signals: np.ndarray  # float32 [channels, time]
    channels: list[str]


# --------------------------------------------------------------------------------------------
# Recordings
# --------------------------------------------------------------------------------------------


def spkit_eeg_sample() -> Recording:
    """The 14-channel, 16 s Emotiv recording shipped by spkit (PhyAAt), at 128 Hz.

    Read the way spkit's own `sp.data.eeg_sample_14ch()` reads it (a pickle of a numpy array and
    the channel names inside the installed package), without importing spkit, whose import
    pulls in matplotlib, seaborn and more. This is spkit's shipped file, never one we wrote.
    """
    SPKIT.check("source.inputs.kind spkit_eeg_sample")
    spec = importlib.util.find_spec(SPKIT.module)
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "files" / "EEG16SecData.pkl"
    with path.open("rb") as f:
        signals, names = pickle.load(f)  # spkit's own data file (plain arrays and a list)
    return Recording(name="spkit_eeg_sample_14ch", origin=str(path),
                     signals=np.asarray(signals, dtype=np.float32).T.copy(),
                     channels=[str(n) for n in names])


def read_npy(path: Path) -> Recording:
    signals = np.load(path, allow_pickle=False)
    if signals.ndim != 2:
        raise ValueError(f"{str(path)!r} holds shape {signals.shape}, not channels x time")
    channels = [f"ch{i}" for i in range(signals.shape[0])]
    return Recording(name=path.stem, origin=str(path), signals=signals.astype(np.float32),
                     channels=channels)


def read_edf(path: Path) -> Recording:
    import pyedflib

    with pyedflib.EdfReader(str(path)) as reader:
        labels = [str(x).strip() for x in reader.getSignalLabels()]
        rates = [float(reader.getSampleFrequency(i)) for i in range(reader.signals_in_file)]
        lengths = [int(n) for n in reader.getNSamples()]
        keep = [i for i in range(len(labels)) if rates[i] == rates[0]
                and lengths[i] == lengths[0]]
        signals = np.stack([reader.readSignal(i) for i in keep]).astype(np.float32)
    return Recording(name=path.stem, origin=str(path), signals=signals,
                     channels=[labels[i] for i in keep])


def _select_channels(rec: Recording, wanted: tuple[str, ...]) -> Recording:
    if not wanted:
        return rec
    index = {name: i for i, name in enumerate(rec.channels)}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise ConfigError(f"source.inputs.channels: {missing} are not channels of "
                          f"{rec.origin!r}; its channels: {', '.join(rec.channels)}")
    rows = [index[name] for name in wanted]
    return Recording(rec.name, rec.origin, rec.signals[rows], list(wanted))


def read_recordings(source: SourceConfig, base_dir: Path) -> tuple[list[Recording], list[str]]:
    """(readable recordings in path order, unreadable files)."""
    cfg = source.inputs
    if cfg.kind == "spkit_eeg_sample":
        return [_select_channels(spkit_eeg_sample(), cfg.channels)], []
    reader = read_edf if cfg.kind == "edf" else read_npy
    recordings: list[Recording] = []
    unreadable: list[str] = []
    for path in input_files(cfg.paths, base_dir):
        try:
            rec = reader(path)
        except (OSError, ValueError) as exc:  # pyedflib raises OSError for a bad header
            why = str(exc)  # pyedflib's message names the file already
            unreadable.append(why if str(path) in why else f"{path}: {why}")
            continue
        recordings.append(_select_channels(rec, cfg.channels))
    return recordings, unreadable


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------


def cut_windows(signals: np.ndarray, context: int, stride: int,
                scaling: str) -> tuple[np.ndarray, np.ndarray]:
    """(windows [n, context, channels] float32, start samples) of one recording."""
    n_channels, length = signals.shape
    starts = np.arange(0, length - context + 1, stride, dtype=np.int64)
    windows = np.stack([signals[:, s:s + context].T for s in starts]) if len(starts) else \
        np.zeros((0, context, n_channels), dtype=np.float32)
    if scaling == "window" and len(windows):
        mean = windows.mean(axis=1, keepdims=True)
        std = windows.std(axis=1, keepdims=True)
        windows = (windows - mean) / np.maximum(std, 1e-8)
    return windows.astype(np.float32), starts


def build_eeg_inputs(source: SourceConfig, seed: int, base_dir: Path
                     ) -> tuple[list[WindowBatch], pa.Table, tuple[str, ...]]:
    """Input batches of windows (seeded order), the manifest, and the unreadable files (each
    "path: why")."""
    cfg = source.inputs
    shape = window_shape(source.backbone)
    model = f"the {source.backbone.kind} model"
    if shape.context != cfg.context:
        raise ConfigError(f"source.inputs.context is {cfg.context} but {model} takes windows "
                          f"of context_length {shape.context}; set them equal")
    recordings, unreadable = read_recordings(source, base_dir)
    stride = cfg.stride or cfg.context
    windows, meta = [], []
    for rec in recordings:
        if rec.signals.shape[0] != shape.channels:
            raise ConfigError(
                f"{rec.origin!r} has {rec.signals.shape[0]} channels but {model} takes "
                f"num_input_channels={shape.channels}; pick channels with "
                "source.inputs.channels or change the model")
        w, starts = cut_windows(rec.signals, cfg.context, stride, cfg.scaling)
        windows.append(w)
        meta.extend((rec, i, int(s)) for i, s in enumerate(starts))
    if not meta:
        raise ConfigError(f"the EEG inputs ({cfg.kind}) gave no window of {cfg.context} samples"
                          f"{' (unreadable: ' + '; '.join(unreadable) + ')' if unreadable else ''}"
                          "; add recordings or lower source.inputs.context")
    values = np.concatenate(windows)
    order = np.random.default_rng(seed).permutation(len(meta))
    if cfg.max_examples is not None:
        order = order[: cfg.max_examples]
    bs = source.batch_size
    batches = []
    for start in range(0, len(order), bs):
        rows = order[start:start + bs]
        batch_values = np.zeros((bs, *values.shape[1:]), dtype=np.float32)
        batch_values[: len(rows)] = values[rows]
        example_id = np.full(bs, -1, dtype=np.int64)
        example_id[: len(rows)] = np.arange(start, start + len(rows))
        batches.append(WindowBatch(values=batch_values, example_id=example_id))
    chosen = [meta[i] for i in order]
    manifest = pa.table({
        "example_id": pa.array(np.arange(len(chosen), dtype=np.int64)),
        "origin": pa.array([rec.origin for rec, _, _ in chosen], type=pa.string()),
        "recording": pa.array([rec.name for rec, _, _ in chosen], type=pa.string()),
        "window": pa.array([w for _, w, _ in chosen], type=pa.int64()),
        "start": pa.array([s for _, _, s in chosen], type=pa.int64()),
        "length": pa.array([cfg.context] * len(chosen), type=pa.int64()),
        "channels": pa.array([rec.channels for rec, _, _ in chosen],
                             type=pa.list_(pa.string())),
        "num_patches": pa.array([shape.patches] * len(chosen), type=pa.int32()),
    }, schema=EEG_MANIFEST_SCHEMA)
    return batches, manifest, tuple(unreadable)


def prepare_eeg_inputs(source: SourceConfig, seed: int, base_dir: Path) -> Inputs:
    batches, manifest, unreadable = build_eeg_inputs(source, seed, base_dir)
    n = manifest.num_rows
    per_window = (len(manifest.column("channels")[0]) *
                  int(manifest.column("num_patches")[0].as_py())) if n else 0
    return Inputs(batches=list(batches), manifest=manifest, n_examples=n,
                  planned_rows=n * per_window, unreadable=unreadable)
