"""Stream statistics shared by every SAE of a hook: the input scale and decoder-bias estimate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from thresher.stream.block import ActivationBlock


@dataclass(frozen=True)
class StreamStats:
    """One input scale and one decoder-bias estimate per stream (a fair comparison of SAEs).

    SAEs train on `x * scale`, chosen so that E||x * scale|| = sqrt(d_in) (Anthropic, April
    2024); `center` is the geometric median of the first rows, in raw units, used to initialise
    every SAE's decoder bias.
    """

    d_in: int
    scale: float
    center: np.ndarray
    rows: int  # rows the estimate used

    def to_dict(self) -> dict[str, Any]:
        return {"d_in": self.d_in, "scale": self.scale, "center": self.center.tolist(),
                "rows": self.rows}


def geometric_median(x: np.ndarray, iters: int = 50, tol: float = 1e-6) -> np.ndarray:
    """Weiszfeld's algorithm in float64; starts at the mean."""
    x = np.asarray(x, dtype=np.float64)
    median = x.mean(axis=0)
    for _ in range(iters):
        dist = np.linalg.norm(x - median, axis=1)
        weights = 1.0 / np.maximum(dist, 1e-12)
        new = (weights[:, None] * x).sum(axis=0) / weights.sum()
        if np.linalg.norm(new - median) <= tol * max(1.0, np.linalg.norm(median)):
            return new
        median = new
    return median


def estimate_hook_stats(block: ActivationBlock) -> dict[str, StreamStats]:
    """One StreamStats per hook of the block ("" for a block of one unnamed hook)."""
    if not block.hook_layout:
        return {"": estimate_stream_stats(block.float32())}
    return {hook: estimate_stream_stats(block.select(hook).float32())
            for hook, _ in block.hook_layout}


def estimate_stream_stats(acts: np.ndarray) -> StreamStats:
    """The input scale (E||x|| = sqrt(d_in) after scaling) and decoder-bias estimate (geometric
    median) from a stream's first rows. Rows with NaN or Inf are left out, as training skips
    them: one would make both estimates, and every weight with them, NaN."""
    acts = np.asarray(acts, dtype=np.float64)
    if len(acts) == 0:
        raise ValueError("the stream produced no rows: check the inputs and the hook")
    acts = acts[np.isfinite(acts).all(axis=1)]
    if len(acts) == 0:
        raise ValueError("every row of the stream's normalisation rows holds NaN or Inf: check "
                         "the backbone's dtype (bf16 overflows) and the inputs")
    mean_norm = float(np.linalg.norm(acts, axis=1).mean())
    scale = math.sqrt(acts.shape[1]) / mean_norm if mean_norm > 0 else 1.0
    center = geometric_median(acts).astype(np.float32)
    return StreamStats(d_in=int(acts.shape[1]), scale=scale, center=center, rows=len(acts))
