"""Ground-truth metrics of an SAE on a synthetic source (thresher/modalities/synthetic/).

The definitions are those of SAELens's `sae_lens.synthetic.evals` (checked against it in
tests/modalities/synthetic/test_synthetic.py), with d the SAE's decoder rows and t the true
feature directions, and cos the absolute cosine (norms clamped at 1e-8, so a zero row matches
nothing):

- mcc: the mean of cos over the best one-to-one matching of decoder rows to true features
  (Hungarian, scipy's linear_sum_assignment), over min(d_sae, n_features) pairs;
- uniqueness: distinct true features that are some latent's best match (argmax cos), divided
  by d_sae;
- precision / recall / f1: each latent is a detector of its best-matching true feature
  (fires: latent ≠ 0; truth: true activation > 0), counted over the held-out rows; per latent
  TP/(TP+FP), TP/(TP+FN) and their harmonic mean, each 0 where undefined, then averaged over
  all latents (dead ones included).

The true activations are not shipped with the rows: they are regenerated from the source's
config for the rows' stream indices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from thresher.modalities.synthetic.model import SyntheticModel, true_fires

GT_METRIC_NAMES = ("gt_mcc", "gt_uniqueness", "gt_precision", "gt_recall", "gt_f1", "gt_l0")


def abs_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|cos| [len(a), len(b)] between rows, float64; a zero row has cosine 0 with everything."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-8)
    return np.abs(a @ b.T)


def mcc(decoder: np.ndarray, true: np.ndarray) -> float:
    cos = abs_cosines(decoder, true)
    rows, cols = linear_sum_assignment(-cos)
    return float(cos[rows, cols].mean())


def uniqueness(decoder: np.ndarray, true: np.ndarray) -> float:
    if len(decoder) == 0:
        return 0.0
    return len(np.unique(abs_cosines(decoder, true).argmax(1))) / len(decoder)


class DetectionCounts:
    """TP / FP / FN per latent against its best-matching true feature, over batches of rows."""

    def __init__(self, decoder: np.ndarray, true: np.ndarray) -> None:
        self.best = abs_cosines(decoder, true).argmax(1)
        n = len(self.best)
        self.tp = np.zeros(n, dtype=np.int64)
        self.fp = np.zeros(n, dtype=np.int64)
        self.fn = np.zeros(n, dtype=np.int64)

    def update(self, latents_fire: np.ndarray, truth: np.ndarray) -> None:
        """latents_fire, truth: bool [rows, d_sae] (truth: the best match of each latent)."""
        self.tp += (latents_fire & truth).sum(0)
        self.fp += (latents_fire & ~truth).sum(0)
        self.fn += (~latents_fire & truth).sum(0)

    def scores(self) -> tuple[float, float, float]:
        """(precision, recall, f1), each averaged over every latent."""
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(self.tp + self.fp > 0, self.tp / (self.tp + self.fp), 0.0)
            r = np.where(self.tp + self.fn > 0, self.tp / (self.tp + self.fn), 0.0)
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        return float(p.mean()), float(r.mean()), float(f1.mean())


class GroundTruthAccumulator:
    """The ground-truth metrics of several SAEs over the same held-out rows, batch by batch."""

    def __init__(self, model: SyntheticModel, decoders: dict[str, np.ndarray]) -> None:
        self.model = model
        self.decoders = decoders
        self.counts = {sid: DetectionCounts(w, model.dictionary) for sid, w in decoders.items()}
        self.true_l0_sum = 0
        self.rows = 0

    def update(self, example_id: np.ndarray, latents: dict[str, torch.Tensor]) -> None:
        """`latents`: each SAE's dense latents [rows, d_sae] for the rows `example_id`."""
        wanted = np.concatenate([c.best for c in self.counts.values()])
        truth_all, entries = true_fires(self.model, example_id, wanted)
        start = 0
        for sid, counts in self.counts.items():
            truth = truth_all[:, start:start + len(counts.best)]
            start += len(counts.best)
            counts.update((latents[sid] != 0).cpu().numpy(), truth)
        self.true_l0_sum += entries
        self.rows += len(example_id)

    def metrics(self) -> dict[str, dict[str, Any]]:
        out = {}
        true_l0 = self.true_l0_sum / max(self.rows, 1)
        for sid, w in self.decoders.items():
            precision, recall, f1 = self.counts[sid].scores()
            out[sid] = {"gt_mcc": mcc(w, self.model.dictionary),
                        "gt_uniqueness": uniqueness(w, self.model.dictionary),
                        "gt_precision": precision, "gt_recall": recall, "gt_f1": f1,
                        "gt_l0": true_l0}
        return out
