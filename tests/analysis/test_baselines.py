from __future__ import annotations

import numpy as np
import pytest

from tests.oracles import pca_fve


def test_pca_fve_on_a_low_rank_signal() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(20, 3)))[0].T  # 3 orthonormal directions in 20-d
    coef = rng.normal(size=(4000, 3)) * np.array([5.0, 3.0, 1.0])
    x = coef @ basis + 7.0
    train, heldout = x[:3000], x[3000:]
    assert pca_fve(train, heldout, 3) == pytest.approx(1.0, abs=1e-9)
    # two components leave the third direction's variance unexplained
    var = coef[3000:].var(axis=0)
    assert pca_fve(train, heldout, 2) == pytest.approx(1 - var[2] / var.sum(), abs=5e-3)
