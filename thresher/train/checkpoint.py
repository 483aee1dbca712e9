"""Checkpoints (resume state) and the final SAELens-format export, per SAE.

Layout under the run directory (format_version 1):

  saes/<sae_id>/checkpoint/state.json                 the pointer: step, rows seen, stream
                                                      cursor, SAE config, and the weights files
  saes/<sae_id>/checkpoint/state-<step>.safetensors   parameters + Adam moments (adam_m.*,
                                                      adam_v.*) at that step
  saes/<sae_id>/sae_weights.safetensors               final export, SAELens names and shapes,
  saes/<sae_id>/cfg.json                              input scale folded in (raw activations)

Every file is written to a temporary name in its folder, synced, then renamed over the old one,
and the weights are written before the json that points at them, so a json always points at
complete weights. Weights files are named by step and never overwritten with another step's
state. state.json also keeps the previous checkpoint: a trainer saves its SAEs one after another,
and if it dies between two of them its SAEs' latest checkpoints differ by one step; every SAE
still holds the older one, so `find_restore_point` rolls them all back to the newest step they
share. Only safetensors and JSON are ever read back (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import save as save_torch_bytes

from thresher import uri_io
from thresher.config import SAEConfig
from thresher.errors import UserError
from thresher.stream.log import Cursor
from thresher.train.archs.registry import architecture_class

# The layout of a checkpoint's state.json and of thresher's record in an export's cfg.json.
CHECKPOINT_FORMAT_VERSION = 1
STATE_JSON = "state.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
SAE_CFG_FILENAME = "cfg.json"
# The SAELens cfg.json layout we follow: 6.x, with a `metadata` dict. SAELens reads a cfg.json
# whose metadata names a version below 6.0 (or none) through its legacy converter instead.
SAELENS_FORMAT_VERSION = "6.0.0"
# Relative tolerance on the stream's input scale when resuming: it is recomputed from the same
# rows, so anything beyond float noise means the checkpoint belongs to another stream.
SCALE_RTOL = 1e-4


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be resumed; the message says why and what to do."""


def sae_dir(run_dir: str | Path, sae_id: str) -> Path:
    return Path(run_dir) / "saes" / sae_id


def checkpoint_dir(run_dir: str | Path, sae_id: str) -> Path:
    return sae_dir(run_dir, sae_id) / "checkpoint"


TMP_SUFFIX = ".tmp"  # the ending of a temporary file an atomic write left behind


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    """One saved state of one SAE: where training stood and the file holding the tensors."""

    step: int
    rows_seen: int
    cursor: Cursor
    weights: str  # file name inside the checkpoint folder

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "rows_seen": self.rows_seen, "cursor": self.cursor.to_dict(),
                "weights": self.weights}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Generation:
        return cls(step=int(d["step"]), rows_seen=int(d["rows_seen"]),
                   cursor=Cursor(int(d["cursor"]["group"]), int(d["cursor"]["offset"])),
                   weights=str(d["weights"]))


@dataclass(frozen=True)
class CheckpointInfo:
    """The contents of one SAE's state.json."""

    sae_id: str
    sae: dict[str, Any]
    input_scale: float
    current: Generation
    previous: Generation | None

    def generations(self) -> list[Generation]:
        return [g for g in (self.current, self.previous) if g is not None]


def weights_filename(step: int) -> str:
    return f"state-{step:010d}.safetensors"


def save_sae_checkpoint(run_dir: str | Path, sae: SAEConfig, state: Mapping[str, torch.Tensor],
                        step: int, rows_seen: int, cursor: Cursor, input_scale: float) -> Path:
    """Write one SAE's checkpoint (tensors, then state.json); returns the json's path."""
    folder = checkpoint_dir(run_dir, sae.sae_id)
    name = weights_filename(step)
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    data = save_torch_bytes(tensors, metadata={"sae_id": sae.sae_id, "step": str(step)})
    uri_io.save(folder / name, data)

    old = read_checkpoint_info(run_dir, sae.sae_id)
    current = Generation(step, rows_seen, cursor, name)
    # The previous generation is the newest older one (a save repeated at the same step keeps
    # the one before; one left ahead of us by an earlier run is dropped).
    older = [g for g in (old.generations() if old else []) if g.step < step]
    previous = max(older, key=lambda g: g.step) if older else None
    record = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "sae_id": sae.sae_id,
        **current.to_dict(),  # step, rows_seen, cursor, weights
        "sae": sae.to_dict(),
        "input_scale": float(input_scale),
        "previous": previous.to_dict() if previous is not None else None,
    }
    path = uri_io.save_json(folder / STATE_JSON, record)

    # Only the two generations state.json names are kept; temporary files left by a write that
    # was cut off are removed too (one trainer writes an SAE's folder at a time).
    keep = {name} | ({previous.weights} if previous is not None else set())
    for entry in folder.iterdir():
        stale_weights = (entry.name.startswith("state-") and entry.suffix == ".safetensors"
                         and entry.name not in keep)
        if stale_weights or entry.name.endswith(TMP_SUFFIX):
            entry.unlink(missing_ok=True)
            if stale_weights:
                uri_io.unpublish(entry)
    return path


def read_checkpoint_info(run_dir: str | Path, sae_id: str) -> CheckpointInfo | None:
    """The SAE's state.json, or None if it has never been checkpointed."""
    path = checkpoint_dir(run_dir, sae_id) / STATE_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); delete the checkpoint "
                              "folder to start this SAE over") from err
    version = record.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}; this thresher reads "
                              f"version {CHECKPOINT_FORMAT_VERSION}")
    previous = record.get("previous")
    return CheckpointInfo(
        sae_id=str(record["sae_id"]),
        sae=dict(record["sae"]),
        input_scale=float(record["input_scale"]),
        current=Generation.from_dict(record),
        previous=Generation.from_dict(previous) if previous else None,
    )


def find_restore_point(run_dir: str | Path, saes: Sequence[SAEConfig],
                       input_scale: float) -> dict[str, Generation] | None:
    """The newest step every SAE has a checkpoint at, one Generation per SAE id.

    None when some SAE has no checkpoint at all (the trainer starts fresh). Raises
    CheckpointError when checkpoints exist but cannot be resumed together: another SAE config
    under the same id, another input scale, or no step in common.
    """
    folder_of = {sae.sae_id: checkpoint_dir(run_dir, sae.sae_id) for sae in saes}
    infos = {sae.sae_id: read_checkpoint_info(run_dir, sae.sae_id) for sae in saes}
    if any(info is None for info in infos.values()):
        return None
    available: dict[str, dict[int, Generation]] = {}
    for sae in saes:
        info = infos[sae.sae_id]
        assert info is not None
        if info.sae != sae.to_dict():
            changed = sorted(k for k in set(info.sae) | set(sae.to_dict())
                             if info.sae.get(k) != sae.to_dict().get(k))
            raise CheckpointError(
                f"the checkpoint of SAE {sae.sae_id!r} was trained with another config "
                f"(differs in {', '.join(changed)}); delete {folder_of[sae.sae_id]} or use "
                "another run name")
        if not np.isclose(info.input_scale, input_scale, rtol=SCALE_RTOL, atol=0.0):
            raise CheckpointError(
                f"the checkpoint of SAE {sae.sae_id!r} was trained with input scale "
                f"{info.input_scale!r} but this stream's scale is {input_scale!r}: it belongs "
                f"to another stream; delete {folder_of[sae.sae_id]} or use another run name")
        available[sae.sae_id] = {g.step: g for g in info.generations()
                                 if (folder_of[sae.sae_id] / g.weights).is_file()}
    common = set.intersection(*(set(steps) for steps in available.values()))
    if not common:
        steps = {sae_id: sorted(gens) for sae_id, gens in available.items()}
        raise CheckpointError(f"the SAEs' checkpoints share no step ({steps}); delete their "
                              "checkpoint folders to start over")
    step = max(common)
    chosen = {sae_id: gens[step] for sae_id, gens in available.items()}
    positions = {(g.rows_seen, g.cursor) for g in chosen.values()}
    if len(positions) != 1:
        raise CheckpointError(f"the SAEs' checkpoints at step {step} disagree on rows seen "
                              f"and stream cursor: {sorted(positions)}")
    return chosen


def load_generation(run_dir: str | Path, sae_id: str,
                    generation: Generation) -> dict[str, torch.Tensor]:
    """The tensors of one saved state, checked against the step the json names."""
    path = checkpoint_dir(run_dir, sae_id) / generation.weights
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("sae_id") != sae_id or meta.get("step") != str(generation.step):
            raise CheckpointError(f"{path} holds SAE {meta.get('sae_id')!r} at step "
                                  f"{meta.get('step')!r}, not {sae_id!r} at step "
                                  f"{generation.step}")
        return {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (not a dict)


# --------------------------------------------------------------------------------------------
# SAELens-format export
# --------------------------------------------------------------------------------------------


def saelens_cfg(sae: SAEConfig, d_in: int, hook_name: str,
                thresher_record: Mapping[str, Any]) -> dict[str, Any]:
    """cfg.json in SAELens's 6.x layout, with thresher's own record under `thresher`."""
    arch = architecture_class(sae.arch)
    cfg: dict[str, Any] = {
        "architecture": arch.saelens_architecture,
        "d_in": int(d_in),
        "d_sae": int(sae.d_sae),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # the input scale is folded into the weights
        "reshape_activations": "none",
    }
    cfg.update(arch.saelens_fields(sae))
    # Pre-6.0 SAELens configs kept hook_name at the top level; 6.x reads it from metadata.
    cfg["hook_name"] = hook_name
    cfg["metadata"] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": f"thresher {_thresher_version()}",
        "hook_name": hook_name,
    }
    cfg["thresher"] = dict(thresher_record)
    return cfg


def _thresher_version() -> str:
    from thresher.version import __version__

    return __version__


def fold_input_scale(params: Mapping[str, torch.Tensor],
                     input_scale: float) -> dict[str, np.ndarray]:
    """Training-space parameters -> float32 parameters that take raw activations.

    With x_s = c·x: (x_s - b_dec) W_enc = (x - b_dec/c) (c·W_enc), and x_hat / c =
    f (W_dec/c) + b_dec/c, so the SAE on raw x has the same latents and x_hat in raw units.
    The pre-activations are unchanged, so every other tensor (b_enc, a `threshold`, ...: they
    act on pre-activations, `Architecture.export_weights`) is kept as it is.
    """
    c = float(input_scale)
    p = {name: params[name].detach().cpu().to(torch.float64).numpy() for name in params}
    folded = {**p, "W_enc": p["W_enc"] * c, "W_dec": p["W_dec"] / c, "b_dec": p["b_dec"] / c}
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in folded.items()}


def export_sae(run_dir: str | Path, sae: SAEConfig, params: Mapping[str, torch.Tensor],
               input_scale: float, hook_name: str, thresher_record: Mapping[str, Any]) -> Path:
    """Write saes/<sae_id>/sae_weights.safetensors and cfg.json; returns the SAE's folder."""
    folder = sae_dir(run_dir, sae.sae_id)
    weights = fold_input_scale(params, input_scale)
    d_in = int(weights["W_enc"].shape[0])
    tensors = {name: torch.from_numpy(value) for name, value in weights.items()}
    uri_io.save(folder / SAE_WEIGHTS_FILENAME,
                       save_torch_bytes(tensors, metadata={"format": "pt"}))
    record = {"format_version": CHECKPOINT_FORMAT_VERSION, "input_scale": float(input_scale),
              "input_scale_folded": True, **thresher_record}
    uri_io.save_json(folder / SAE_CFG_FILENAME, saelens_cfg(sae, d_in, hook_name, record))
    return folder


def read_export(folder: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An exported SAE's cfg.json and weights (numpy, float32)."""
    folder = Path(folder)
    cfg = json.loads((folder / SAE_CFG_FILENAME).read_text())
    return cfg, load_numpy(str(folder / SAE_WEIGHTS_FILENAME))
