"""MonoScore with all-zero input rows: a zero row has no direction, so it is similar to nothing
(cosine 0 with every row) while its pairs still weigh in the denominator, as in the pairwise
definition. Both linear-time forms (the streaming statistic and the training batch score) must
equal the O(N²) definition, which the unit-norm identity alone does not."""

from __future__ import annotations

import numpy as np
import torch

from tests.oracles import mono_pairwise
from thresher.analysis.feature_statistics import FeatureStatistics
from thresher.analysis.monoscore import MonoScoreAccumulator, unit_rows
from thresher.train.mono import batch_mono_score
from thresher.train.mono import unit_rows as train_unit_rows


def _case(n: int = 40, d: int = 16, k: int = 5, zeros: tuple[int, ...] = (7,),
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(size=(n, d)))  # positive embeddings: cosines well away from 0
    x[list(zeros)] = 0.0
    acts = np.maximum(rng.normal(0.3, 1.0, size=(n, k)), 0.0)
    acts[list(zeros)] = rng.uniform(0.5, 2.0, size=(len(zeros), k))  # zero rows still fire
    return x, acts


def _streaming(x: np.ndarray, acts: np.ndarray, batch: int) -> np.ndarray:
    acc = MonoScoreAccumulator(x.shape[1], acts.shape[1])
    for start in range(0, len(x), batch):
        xs, fs = x[start:start + batch], acts[start:start + batch]
        rows, feats = np.nonzero(fs)
        acc.update(unit_rows(torch.from_numpy(xs)), torch.from_numpy(rows),
                   torch.from_numpy(feats), torch.from_numpy(fs[rows, feats]))
    return acc.scores(len(x), acts.sum(0), (acts**2).sum(0), acts.min(0), acts.max(0))


def test_one_zero_row_of_forty_matches_the_pairwise_definition() -> None:
    x, acts = _case()
    reference = mono_pairwise(acts, x)
    assert np.isfinite(reference).all()
    np.testing.assert_allclose(_streaming(x, acts, batch=40), reference, rtol=1e-12)
    np.testing.assert_allclose(_streaming(x, acts, batch=9), reference, rtol=1e-12)
    score, has = batch_mono_score(torch.from_numpy(acts),
                                  train_unit_rows(torch.from_numpy(x)))
    assert bool(has.all())
    np.testing.assert_allclose(score.numpy(), reference, rtol=1e-12)


def test_several_zero_rows_and_the_stats_path() -> None:
    x, acts = _case(n=33, zeros=(0, 5, 6, 32), seed=3)
    reference = mono_pairwise(acts, x)
    stats = FeatureStatistics(d_in=x.shape[1], d_sae=acts.shape[1])
    for start in range(0, len(x), 8):
        sl = slice(start, start + 8)
        stats.update(torch.from_numpy(x[sl]), torch.from_numpy(acts[sl]),
                     torch.from_numpy(x[sl]))
    np.testing.assert_allclose(stats.features()["mono_score"], reference, rtol=1e-10)


def test_the_fix_changes_what_the_unit_identity_gave() -> None:
    """The identity without the zero-row correction (½(‖Σ ã e‖² − Σ ã²) in the numerator) is
    off by Σ_zero ã²/2 over the pair weight: the case this test guards against."""
    x, acts = _case()
    e = unit_rows(torch.from_numpy(x)).numpy()
    scaled = (acts - acts.min(0)) / (acts.max(0) - acts.min(0))
    u, v = scaled.sum(0), (scaled**2).sum(0)
    uncorrected = ((e.T @ scaled) ** 2).sum(0) - v
    uncorrected = uncorrected / (u**2 - v)
    reference = mono_pairwise(acts, x)
    assert np.all(np.abs(uncorrected - reference) > 1e-3)
