"""Baselines an SAE should beat, computed on the same rows."""

from __future__ import annotations

import numpy as np


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
