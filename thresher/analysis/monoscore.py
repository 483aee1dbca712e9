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

    @torch.no_grad()
    def update(self, e: torch.Tensor, rows: torch.Tensor, feats: torch.Tensor,
               values: torch.Tensor) -> None:
        """e [B, d_in] the batch's unit rows (`unit_rows`, float64); (rows, feats, values)
        its nonzero latents."""
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


def unit_rows(x: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """x/‖x‖ per row in float64; a zero row stays 0 (a row similar to nothing)."""
    x = x.double()
    norm = torch.linalg.vector_norm(x, dim=1) if norm is None else norm
    norm = norm.double().unsqueeze(1)
    return torch.where(norm > 0, x / norm.clamp_min(1e-300), torch.zeros_like(x))


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
    """The O(N²) definition, for tests: acts [N, K], x [N, d] the embeddings (not yet unit).

    Literally Σ_{n<m} ã_n ã_m cos(x_n, x_m) / Σ_{n<m} ã_n ã_m over the pairs n < m (no
    identity), as one quadratic form per feature with the strictly upper triangle of the
    cosine matrix."""
    acts = np.asarray(acts, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    e = np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), 0.0)
    upper_sims = np.triu(e @ e.T, k=1)  # s_nm for n < m, 0 elsewhere
    upper_ones = np.triu(np.ones((len(acts), len(acts))), k=1)
    lo, span = acts.min(0), acts.max(0) - acts.min(0)
    ok = span > 0
    scaled = (acts - lo) / np.where(ok, span, 1.0)  # ã [N, K]
    num = np.einsum("nk,nm,mk->k", scaled, upper_sims, scaled, optimize=True)
    den = np.einsum("nk,nm,mk->k", scaled, upper_ones, scaled, optimize=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = num / den
    return np.where(ok & (den > DENOMINATOR_EPS), score, np.nan)
