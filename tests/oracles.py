"""Reference computations the tests (and benchmarks/default_quality.py) check the package
against, written from the definitions and kept out of the package: the O(N²) MonoScore and a
PCA baseline."""

from __future__ import annotations

import numpy as np
import torch

# MonoLoss treats a latent whose pair weight is at most this as having no score.
PAIR_WEIGHT_EPS = 1e-8


def mono_pairwise_scores(f: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor | None]:
    """MonoScore (Pach et al.) of each latent from the O(N²) pair definition, differentiable in
    `f`: f [N, K] activations, x [N, d] embeddings (not yet unit; a zero row is similar to no
    row). Per latent Σ_{n<m} ã_n ã_m cos(x_n, x_m) / Σ_{n<m} ã_n ã_m with ã the min-max scaled
    activations; None where a latent never varies or has no pair weight."""
    norm = x.norm(dim=1, keepdim=True)
    e = torch.where(norm > 0, x / norm, torch.zeros_like(x))
    sims = e @ e.T
    upper = torch.triu(torch.ones_like(sims, dtype=torch.bool), diagonal=1)
    scores: list[torch.Tensor | None] = []
    for m in range(f.shape[1]):
        a = f[:, m]
        span = a.max() - a.min()
        if span <= 0:
            scores.append(None)
            continue
        scaled = (a - a.min()) / span
        weight = torch.outer(scaled, scaled)[upper]
        scores.append((weight * sims[upper]).sum() / weight.sum()
                      if weight.sum() > PAIR_WEIGHT_EPS else None)
    return scores


def mono_pairwise(acts: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`mono_pairwise_scores` in float64 as an array, NaN where a latent has no score."""
    scores = mono_pairwise_scores(torch.as_tensor(np.asarray(acts, dtype=np.float64)),
                                  torch.as_tensor(np.asarray(x, dtype=np.float64)))
    return np.array([np.nan if s is None else float(s) for s in scores])


def mono_pairwise_loss(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MonoLoss: 1 - mean MonoScore over the latents with a score (0, with a gradient, if
    none has one)."""
    scores = [s for s in mono_pairwise_scores(f, x) if s is not None]
    return 1 - torch.stack(scores).mean() if scores else f.sum() * 0


def pca_fve(train: np.ndarray, heldout: np.ndarray, n_components: int) -> float:
    """Fraction of variance of `heldout` explained by the top principal components of `train`.

    Same definition as the SAE summary: 1 - sum ||x - x_hat||^2 / sum ||x - mean(heldout)||^2,
    where x_hat is x projected on the components (centred on the training mean).
    """
    train = np.asarray(train, dtype=np.float64)
    heldout = np.asarray(heldout, dtype=np.float64)
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:n_components]
    centred = heldout - mean
    x_hat = mean + centred @ basis.T @ basis
    residual = ((heldout - x_hat) ** 2).sum()
    total = ((heldout - heldout.mean(axis=0)) ** 2).sum()
    return float(1.0 - residual / total)
