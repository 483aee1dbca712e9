"""k-sparse probing where the held-out rows carry labels (SAEBench's sparse probing, on our rows).

Per example (an image, a window: its rows mean-pooled, as SAEBench pools over tokens), for the
SAE latents and, as the baseline, for the raw activations:

1. the labelled examples (at most `max_examples`, in order of appearance) are split by a seeded
   permutation into train (80%) and test (20%);
2. each label with examples on both sides becomes a binary task, that label against the rest
   (with two labels: one task); each side is balanced by subsampling the larger class;
3. on the train side, the k dimensions with the largest |mean(positive) − mean(negative)| are
   kept (k = 1, 5), standardised with the train side's mean and std, and a logistic probe is
   fitted: L2-regularised, min C·Σ log(1 + exp(−y (w·x + b))) + ½‖w‖², C = 1 (scikit-learn's
   LogisticRegression defaults, which SAEBench uses), by L-BFGS in float64;
4. the score is the probe's accuracy on the test side, averaged over the tasks.

`probe_raw_acc` is the same probe on every raw dimension (SAEBench's dense-model baseline).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

PROBE_KS = (1, 5)
PROBE_METRIC_NAMES = ("probe_sae_k1_acc", "probe_sae_k5_acc", "probe_raw_k1_acc",
                      "probe_raw_k5_acc", "probe_raw_acc", "probe_tasks")
TRAIN_SHARE = 0.8
MIN_PER_CLASS = 2  # per side of the split, after balancing


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0,
                 max_iter: int = 200) -> tuple[np.ndarray, float]:
    """(w, b) minimising c·Σ log(1 + exp(−s (x·w + b))) + ½‖w‖² with s = 2y − 1, y in {0, 1}."""
    xt = torch.as_tensor(x, dtype=torch.float64)
    s = torch.as_tensor(2.0 * np.asarray(y, dtype=np.float64) - 1.0)
    params = torch.zeros(xt.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        w, b = params[:-1], params[-1]
        loss = c * torch.nn.functional.softplus(-s * (xt @ w + b)).sum() + 0.5 * w.dot(w)
        loss.backward()
        return loss

    opt.step(closure)
    out = params.detach().numpy()
    return out[:-1].copy(), float(out[-1])


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)  # a constant column stays 0, carrying nothing
    return (train - mean) / std, (test - mean) / std


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, k: int | None) -> float:
    """Test accuracy of the logistic probe on the k mean-difference dimensions (None: all)."""
    if k is not None and k < train_x.shape[1]:
        diff = train_x[train_y == 1].mean(0) - train_x[train_y == 0].mean(0)
        keep = np.argsort(-np.abs(diff), kind="stable")[:k]
        train_x, test_x = train_x[:, keep], test_x[:, keep]
    train_x, test_x = _standardise(train_x, test_x)
    w, b = fit_logistic(train_x, train_y)
    return float(((test_x @ w + b > 0) == (test_y == 1)).mean())


def _balanced(idx: np.ndarray, positive: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pos, neg = idx[positive[idx]], idx[~positive[idx]]
    n = min(len(pos), len(neg))
    return np.sort(np.concatenate([rng.permutation(pos)[:n], rng.permutation(neg)[:n]]))


def binary_tasks(labels: np.ndarray, seed: int = 0
                 ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(train index, train y, test index, test y) per binary task over examples' labels."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    cut = round(TRAIN_SHARE * len(labels))
    train, test = np.sort(order[:cut]), np.sort(order[cut:])
    values = np.unique(labels)
    tasks = []
    for value in values[:1] if len(values) == 2 else values:
        positive = labels == value
        tr, te = _balanced(train, positive, rng), _balanced(test, positive, rng)
        if len(tr) >= 2 * MIN_PER_CLASS and len(te) >= 2 * MIN_PER_CLASS:
            tasks.append((tr, positive[tr].astype(np.int64), te, positive[te].astype(np.int64)))
    return tasks


class PooledExamples:
    """Per labelled example, the sum of its rows' vectors of several kinds (raw, each SAE)."""

    def __init__(self, max_examples: int = 2000) -> None:
        self.max_examples = max_examples
        self.slot: dict[int, int] = {}
        self.labels: list[int] = []
        self.counts = np.zeros(max_examples, dtype=np.int64)
        self.sums: dict[str, torch.Tensor] = {}

    def update(self, example_id: np.ndarray, label: np.ndarray | None,
               vectors: dict[str, torch.Tensor]) -> None:
        if label is None:
            return
        slots = np.full(len(example_id), -1, dtype=np.int64)
        for i, (eid, lab) in enumerate(zip(example_id.tolist(), label.tolist(), strict=True)):
            if lab < 0:
                continue
            s = self.slot.get(eid)
            if s is None and len(self.slot) < self.max_examples:
                s = self.slot[eid] = len(self.labels)
                self.labels.append(int(lab))
            if s is not None:
                slots[i] = s
        keep = np.nonzero(slots >= 0)[0]
        if not len(keep):
            return
        np.add.at(self.counts, slots[keep], 1)
        index = torch.from_numpy(slots[keep])
        rows = torch.from_numpy(keep)
        for name, v in vectors.items():
            if name not in self.sums:
                self.sums[name] = torch.zeros(self.max_examples, v.shape[1], dtype=torch.float64)
            self.sums[name].index_add_(0, index, v.detach().cpu().double()[rows])

    def pooled(self, name: str) -> np.ndarray:
        n = len(self.labels)
        return (self.sums[name][:n].numpy() / np.maximum(self.counts[:n], 1)[:, None])

    def metrics(self, sae_ids: list[str], raw: str = "__raw") -> dict[str, dict[str, Any]]:
        """Per SAE the probe columns; {} where fewer than one task can be formed."""
        labels = np.asarray(self.labels, dtype=np.int64)
        tasks = binary_tasks(labels) if len(labels) else []
        if not tasks or raw not in self.sums:
            return {}

        def mean_acc(x: np.ndarray, k: int | None) -> float:
            return float(np.mean([probe_accuracy(x[tr], ytr, x[te], yte, k)
                                  for tr, ytr, te, yte in tasks]))

        x_raw = self.pooled(raw)
        base: dict[str, Any] = {f"probe_raw_k{k}_acc": mean_acc(x_raw, k) for k in PROBE_KS}
        base["probe_raw_acc"] = mean_acc(x_raw, None)
        base["probe_tasks"] = float(len(tasks))
        out = {}
        for sid in sae_ids:
            x = self.pooled(sid)
            out[sid] = {**base, **{f"probe_sae_k{k}_acc": mean_acc(x, k) for k in PROBE_KS}}
        return out
