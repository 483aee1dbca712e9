"""Exported SAEs (saes/<id>/, raw units, input scale folded in) applied without the bank.

`FrozenSAE` is the SAE of docs/formats.md: f = act((x − b_dec) W_enc + b_enc), x̂ = f W_dec + b_dec,
act = pre · 1[pre > threshold] for the exports that carry a `threshold` (jumprelu; batchtopk and
matryoshka at inference), else ReLU(TopK_k(·)) where cfg.json has `k` (topk), else ReLU (relu).
`thresher analyze` and the splice use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thresher.config import SAEConfig
from thresher.train.checkpoint import read_export


@dataclass
class FrozenSAE:
    sae: SAEConfig
    W_enc: torch.Tensor  # [d_in, d_sae], raw units
    b_enc: torch.Tensor
    W_dec: torch.Tensor  # [d_sae, d_in]
    b_dec: torch.Tensor
    input_scale: float
    record: dict[str, Any]  # cfg.json's thresher record (trainer_id, step, rows_seen, ...)
    threshold: torch.Tensor | None = None  # [d_sae]: f = pre * 1[pre > threshold]
    k: int | None = None  # cfg.json's `k`: f = ReLU(TopK_k(pre))

    @classmethod
    def load(cls, folder: str | Path) -> FrozenSAE:
        cfg, weights = read_export(folder)
        record = cfg.get("thresher") or {}
        if "sae" not in record:
            raise ValueError(f"{folder}/cfg.json has no thresher.sae record; was it written "
                             "by thresher's export?")
        sae = SAEConfig(**record["sae"])
        tensors = {name: torch.from_numpy(weights[name]).float() for name in weights}
        return cls(sae=sae, **tensors, input_scale=float(record.get("input_scale", 1.0)),
                   record=record, k=cfg.get("k"))

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc
        if self.threshold is not None:
            return pre * (pre > self.threshold).to(pre.dtype)
        if self.k is not None:
            values, indices = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, indices, values.relu())
        return pre.relu()

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
