"""Exported SAEs (saes/<id>/, raw units, input scale folded in) applied without the bank.

`FrozenSAE` is the SAE of docs/formats.md: its latents come from its architecture's inference
rule (`Architecture.encode`, thresher/train/archs/<arch>.py) applied to the exported tensors,
the rule the bank evaluates with; x̂ = f W_dec + b_dec. `thresher analyze` and the splice use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thresher.config import SAEConfig
from thresher.train.archs.registry import architecture_class
from thresher.train.checkpoint import read_export


@dataclass
class FrozenSAE:
    sae: SAEConfig
    # The export's tensors by name (raw units): W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_dec
    # and what its architecture's inference rule reads beside them (b_enc, threshold, ...).
    weights: dict[str, torch.Tensor]
    input_scale: float
    record: dict[str, Any]  # cfg.json's thresher record (trainer_id, step, rows_seen, ...)

    @classmethod
    def load(cls, folder: str | Path) -> FrozenSAE:
        cfg, weights = read_export(folder)
        record = cfg.get("thresher") or {}
        if "sae" not in record:
            raise ValueError(f"{folder}/cfg.json has no thresher.sae record; was it written "
                             "by thresher's export?")
        return cls(sae=SAEConfig.from_dict(record["sae"]),
                   weights={name: torch.from_numpy(weights[name]).float() for name in weights},
                   input_scale=float(record.get("input_scale", 1.0)), record=record)

    @property
    def W_enc(self) -> torch.Tensor:
        return self.weights["W_enc"]

    @property
    def W_dec(self) -> torch.Tensor:
        return self.weights["W_dec"]

    @property
    def b_dec(self) -> torch.Tensor:
        return self.weights["b_dec"]

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        stacked = {name: value.unsqueeze(0) for name, value in self.weights.items()}
        rows = x.reshape(-1, self.d_in)
        f = architecture_class(self.sae.arch).encode(rows, stacked, [self.sae])[0]
        return f.reshape(*x.shape[:-1], f.shape[-1])

    @torch.no_grad()
    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return f, self.decode(f)

    def decoder_norm_training_units(self) -> torch.Tensor:
        """Decoder row norms where the SAE was trained (inputs x * input_scale)."""
        return self.W_dec.double().norm(dim=1) * self.input_scale


def load_run_saes(run_dir: str | Path) -> list[FrozenSAE]:
    folders = sorted(p for p in (Path(run_dir) / "saes").glob("*")
                     if (p / "sae_weights.safetensors").is_file())
    if not folders:
        raise FileNotFoundError(f"no exported SAEs under {run_dir}/saes: is this a finished "
                                "run directory (runs/<name>)?")
    return [FrozenSAE.load(p) for p in folders]
