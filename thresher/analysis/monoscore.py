"""MonoScore (Pach et al. 2025) in one streaming pass, with the SAE input as the embedding.

Definition, per feature k over N rows with activations a_n and unit embeddings e_n:

    ã_n = (a_n − min a) / (max a − min a)
    MS  = Σ_{n<m} ã_n ã_m (e_n · e_m) / Σ_{n<m} ã_n ã_m

With ‖e_n‖ = 1 (MonoLoss's linear-time identity):

    Σ_{n<m} ã_n ã_m e_n·e_m = ½(‖Σ_n ã_n e_n‖² − Σ_n ã_n²),  Σ_{n<m} ã_n ã_m = ½((Σ ã)² − Σ ã²)

Min-max scaling is affine, so the scaled sums follow from raw ones (S1 = Σa, S2 = Σa², A = Σ a e,
E = Σ e, N) and the extremes known only at the end, m = min a and r = max a − min a:

    Σ ã = (S1 − N m)/r,  Σ ã² = (S2 − 2 m S1 + N m²)/r²,  Σ ã e = (A − m E)/r

The sums are float64; A [d_sae, d_in] is updated sparsely (only firing entries contribute to
Σ a e, since a = 0 elsewhere). The embedding is the SAE's input x/‖x‖, as MonoLoss's SAE code
uses (the input scale does not change a cosine). Rows with x = 0 have no direction; they get
e = 0, which the identity treats as a row similar to nothing.
"""

from __future__ import annotations

import numpy as np
import torch

# MonoLoss treats a feature whose pair-weight denominator is at most this as undefined.
DENOMINATOR_EPS = 1e-8


class MonoScoreAccumulator:
    def __init__(self, d_in: int, d_sae: int) -> None:
        self.act_embed = torch.zeros(d_sae, d_in, dtype=torch.float64)  # A = Σ a e
        self.embed_sum = torch.zeros(d_in, dtype=torch.float64)  # E = Σ e

    @staticmethod
    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        norm = x.norm(dim=1, keepdim=True)
        return torch.where(norm > 0, x / norm.clamp_min(1e-300), torch.zeros_like(x))

    @torch.no_grad()
    def update(self, x: torch.Tensor, rows: torch.Tensor, feats: torch.Tensor,
               values: torch.Tensor) -> None:
        """x [B, d_in] the batch; (rows, feats, values) its firing entries."""
        e = self.unit(x.cpu())
        self.embed_sum += e.sum(0)
        if len(rows):
            f_t = torch.sparse_coo_tensor(torch.stack([feats, rows]), values.double(),
                                          (self.act_embed.shape[0], len(e)),
                                          check_invariants=False)
            self.act_embed += torch.sparse.mm(f_t, e)

    def scores(self, n: int, act_sum: np.ndarray, act_sq_sum: np.ndarray,
               act_min: np.ndarray, act_max: np.ndarray) -> np.ndarray:
        """MonoScore per feature; NaN where the denominator vanishes (a feature never varying)."""
        return mono_from_sums(n, act_sum, act_sq_sum, self.act_embed.numpy(),
                              self.embed_sum.numpy(), act_min, act_max)


def mono_from_sums(n: int, s1: np.ndarray, s2: np.ndarray, act_embed: np.ndarray,
                   embed_sum: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = hi - lo
    ok = np.isfinite(span) & (span > 0)
    m = np.where(ok, lo, 0.0)
    r = np.where(ok, span, 1.0)
    u = (s1 - n * m) / r  # Σ ã
    v = (s2 - 2 * m * s1 + n * m**2) / r**2  # Σ ã²
    w = (act_embed - m[:, None] * embed_sum[None, :]) / r[:, None]  # Σ ã e  [d_sae, d_in]
    num = 0.5 * ((w**2).sum(1) - v)
    den = 0.5 * (u**2 - v)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = num / den
    return np.where(ok & (den > DENOMINATOR_EPS), score, np.nan)


def mono_pairwise(acts: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The O(N²) definition, for tests: acts [N, K], x [N, d] the embeddings (not yet unit)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    e = np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), 0.0)
    sims = e @ e.T
    upper = np.triu(np.ones_like(sims, dtype=bool), k=1)
    out = np.full(acts.shape[1], np.nan)
    for k in range(acts.shape[1]):
        a = acts[:, k].astype(np.float64)
        span = a.max() - a.min()
        if span <= 0:
            continue
        scaled = (a - a.min()) / span
        rel = np.outer(scaled, scaled)[upper]
        den = rel.sum()
        if den > DENOMINATOR_EPS:
            out[k] = (rel * sims[upper]).sum() / den
    return out
