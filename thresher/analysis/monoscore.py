"""MonoScore (Pach et al. 2025) in one streaming pass, with the SAE input as the embedding.

Definition, per feature k over N rows with activations a_n and unit embeddings e_n:

    ã_n = (a_n − min a) / (max a − min a)
    MS  = Σ_{n<m} ã_n ã_m (e_n · e_m) / Σ_{n<m} ã_n ã_m

MonoLoss's linear-time identity, with ‖e_n‖² = 1 for every row but the zero rows (e = 0):

    Σ_{n<m} ã_n ã_m e_n·e_m = ½(‖Σ_n ã_n e_n‖² − Σ_{n: e_n≠0} ã_n²),
    Σ_{n<m} ã_n ã_m = ½((Σ ã)² − Σ ã²)

(the self-pair term ã_n² ‖e_n‖² vanishes for a zero row, so only the unit rows' ã² leave the
numerator; subtracting them all would count a zero row as anti-similar.)

Min-max scaling is affine, so the scaled sums follow from raw ones (S1 = Σa, S2 = Σa², A = Σ a e,
E = Σ e, N) and the extremes known only at the end, m = min a and r = max a − min a:

    Σ ã = (S1 − N m)/r,  Σ ã² = (S2 − 2 m S1 + N m²)/r²,  Σ ã e = (A − m E)/r

The sums are float64; A [d_sae, d_in] is updated sparsely (only firing entries contribute to
Σ a e, since a = 0 elsewhere). The embedding is the SAE's input x/‖x‖, as MonoLoss's SAE code
uses (the input scale does not change a cosine). Rows with x = 0 have no direction; they get
e = 0, a row similar to nothing (cosine 0 with every row, as the pairwise definition has it),
and the zero rows' own sums (count Z0, Σa = Z1, Σa² = Z2) take their ã² out of the unit rows'.
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
        # Over the rows with e = 0: count, Σ a, Σ a² (their ã² is not a self-similarity).
        self.zero_rows = 0
        self.zero_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.zero_sq_sum = torch.zeros(d_sae, dtype=torch.float64)

    @torch.no_grad()
    def update(self, e: torch.Tensor, rows: torch.Tensor, feats: torch.Tensor,
               values: torch.Tensor) -> None:
        """e [B, d_in] the batch's unit rows (`unit_rows`, float64); (rows, feats, values)
        its nonzero latents."""
        self.embed_sum += e.sum(0)
        zero = ~(e != 0).any(1)
        if bool(zero.any()):
            self.zero_rows += int(zero.sum())
            at = zero[rows]
            self.zero_sum.index_add_(0, feats[at], values[at].double())
            self.zero_sq_sum.index_add_(0, feats[at], values[at].double() ** 2)
        if len(rows):
            f_t = torch.sparse_coo_tensor(torch.stack([feats, rows]), values.double(),
                                          (self.act_embed.shape[0], len(e)),
                                          check_invariants=False)
            self.act_embed += torch.sparse.mm(f_t, e)

    def scores(self, n: int, act_sum: np.ndarray, act_sq_sum: np.ndarray,
               act_min: np.ndarray, act_max: np.ndarray) -> np.ndarray:
        """MonoScore per feature; NaN where the denominator vanishes (a feature never varying)."""
        return mono_from_sums(n, act_sum, act_sq_sum, self.act_embed.numpy(),
                              self.embed_sum.numpy(), act_min, act_max,
                              (self.zero_rows, self.zero_sum.numpy(), self.zero_sq_sum.numpy()))


def unit_rows(x: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """x/‖x‖ per row in float64; a zero row stays 0 (a row similar to nothing)."""
    x = x.double()
    norm = torch.linalg.vector_norm(x, dim=1) if norm is None else norm
    norm = norm.double().unsqueeze(1)
    return torch.where(norm > 0, x / norm.clamp_min(1e-300), torch.zeros_like(x))


def mono_from_sums(n: int, s1: np.ndarray, s2: np.ndarray, act_embed: np.ndarray,
                   embed_sum: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   zero: tuple[int, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """`zero`: (Z0, Z1, Z2), the count, Σa and Σa² of the rows with e = 0 (None: no such row)."""
    span = hi - lo
    ok = np.isfinite(span) & (span > 0)
    m = np.where(ok, lo, 0.0)
    r = np.where(ok, span, 1.0)
    u = (s1 - n * m) / r  # Σ ã
    v = (s2 - 2 * m * s1 + n * m**2) / r**2  # Σ ã²
    w = (act_embed - m[:, None] * embed_sum[None, :]) / r[:, None]  # Σ ã e  [d_sae, d_in]
    v_unit = v  # Σ ã² over the rows with ‖e‖ = 1
    if zero is not None and zero[0]:
        z0, z1, z2 = zero
        v_unit = v - (z2 - 2 * m * z1 + z0 * m**2) / r**2
    num = 0.5 * ((w**2).sum(1) - v_unit)
    den = 0.5 * (u**2 - v)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = num / den
    return np.where(ok & (den > DENOMINATOR_EPS), score, np.nan)

