"""MonoLoss: the batch MonoScore of each latent in linear time, and the loss built on it.

MonoScore (Pach et al. 2025) of latent m over the N rows of a batch, with activations min-max
scaled over the batch, ã_n = (a_n - min a) / (max a - min a), and unit embeddings e_n:

    MS_m = sum_{n<p} ã_n ã_p (e_n . e_p) / sum_{n<p} ã_n ã_p

Since ||e_n|| = 1, three running sums give it without the N^2 pair loop (MonoLoss,
Nasiri-Sarvi et al. 2026): u = sum ã, v = sum ã^2, W = E^T Ã, and

    MS_m = (||W[:, m]||^2 - v'_m) / (u_m^2 - v_m),   v' = sum ã^2 ||e_n||^2

A zero input row has e = 0 (similar to nothing, as in the pairwise definition): its ã^2 is in v
(its pairs still weigh in the denominator) but not in v' (it has no self-similarity to remove).

A latent whose pair weight (u^2 - v)/2 is at most DENOMINATOR_EPS (it fires on at most one row,
or never varies) has no score. The embedding is the SAE input x / ||x||, as in MonoLoss's SAE code
and in thresher.analysis.monoscore (the input scale does not change a cosine).
The loss is 1 - the mean score over the latents that have one.
"""

from __future__ import annotations

import torch

DENOMINATOR_EPS = 1e-8


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| per row; a zero row stays zero (it is similar to nothing)."""
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(torch.finfo(x.dtype).tiny), 0.0)


def batch_mono_score(acts: torch.Tensor,
                     embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(score [..., M], has_score [..., M]) for acts [..., N, M] and unit embeddings [N, d].

    Differentiable in acts (through the min-max scaling too). Scores are 0 where has_score is
    False.
    """
    lo = acts.amin(dim=-2, keepdim=True)
    span = acts.amax(dim=-2, keepdim=True) - lo
    varies = span > 0
    scaled = torch.where(varies, (acts - lo) / torch.where(varies, span, 1.0), 0.0)
    u = scaled.sum(-2)
    v = scaled.pow(2).sum(-2)
    embed = embed.to(scaled.dtype)
    w = torch.matmul(embed.transpose(-1, -2), scaled)  # [..., d, M]
    v_unit = (scaled.pow(2) * embed.pow(2).sum(-1, keepdim=True)).sum(-2)  # 0 for zero rows
    numerator = 0.5 * (w.pow(2).sum(-2) - v_unit)
    denominator = 0.5 * (u.pow(2) - v)
    has_score = denominator > DENOMINATOR_EPS
    score = torch.where(has_score, numerator / torch.where(has_score, denominator, 1.0), 0.0)
    return score, has_score


def mono_loss(acts: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """1 - mean batch MonoScore over the latents that have a score, per leading index [...]."""
    score, has_score = batch_mono_score(acts, embed)
    count = has_score.sum(-1).clamp(min=1).to(score.dtype)
    return 1.0 - score.sum(-1) / count
