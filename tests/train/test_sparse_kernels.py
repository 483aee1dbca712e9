"""Sparse TopK encode/decode against the dense reference; linear-time MonoScore against the
O(N^2) definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.oracles import mono_pairwise
from thresher.train.mono import batch_mono_score, mono_loss, unit_rows
from thresher.train.sparse import dense_decode, sparse_decode, sparse_encode_gather

F64 = torch.float64


def topk_case(n: int = 3, rows: int = 37, d_in: int = 11, d_sae: int = 50, k: int = 6,
              seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(rows, d_in, generator=g, dtype=F64),
        "W_enc": torch.randn(n, d_in, d_sae, generator=g, dtype=F64),
        "b_enc": torch.randn(n, d_sae, generator=g, dtype=F64),
        "W_dec": torch.randn(n, d_sae, d_in, generator=g, dtype=F64),
        "b_dec": torch.randn(n, d_in, generator=g, dtype=F64),
        "k": torch.tensor(k),
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_path_equals_dense_in_output_and_gradients(seed: int) -> None:
    case = topk_case(seed=seed)
    x, k = case["x"], int(case["k"])
    target = torch.randn(3, len(x), x.shape[1], dtype=F64,
                         generator=torch.Generator().manual_seed(5))
    results = []
    for use_sparse in (True, False):
        p = {name: case[name].clone().requires_grad_(True)
             for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
        pre = torch.baddbmm(p["b_enc"].unsqueeze(1), x.unsqueeze(0) - p["b_dec"].unsqueeze(1),
                            p["W_enc"])
        _, indices = pre.detach().topk(k, dim=-1)
        mask = (torch.arange(k) < torch.tensor([2, 4, 6])[:, None]).to(F64).unsqueeze(1)
        if use_sparse:
            values = sparse_encode_gather(pre.detach(), x, p["W_enc"], p["b_enc"], p["b_dec"],
                                          indices)
            values = values.relu() * mask
            out = sparse_decode(values, indices, p["W_dec"])
        else:
            values = pre.gather(-1, indices).relu() * mask
            out = dense_decode(values, indices, p["W_dec"])
        loss = ((out + p["b_dec"].unsqueeze(1) - target) ** 2).sum() + (values ** 3).sum()
        grads = torch.autograd.grad(loss, list(p.values()))
        results.append((out.detach(), grads))
    (out_s, grads_s), (out_d, grads_d) = results
    torch.testing.assert_close(out_s, out_d, rtol=1e-12, atol=1e-12)
    for name, g_s, g_d in zip(("W_enc", "b_enc", "W_dec", "b_dec"), grads_s, grads_d,
                              strict=True):
        torch.testing.assert_close(g_s, g_d, rtol=1e-10, atol=1e-10, msg=name)


def test_sparse_decode_gradcheck() -> None:
    g = torch.Generator().manual_seed(1)
    values = torch.randn(2, 5, 3, dtype=F64, generator=g, requires_grad=True)
    # distinct latents within each row, as TopK selects them
    indices = torch.stack([torch.stack([torch.randperm(7, generator=g)[:3] for _ in range(5)])
                           for _ in range(2)])
    w_dec = torch.randn(2, 7, 4, dtype=F64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, w: sparse_decode(v, indices, w), (values, w_dec))


def test_sparse_encode_gather_gradcheck_with_repeated_indices() -> None:
    """The encoder side takes TopK and AuxK selections together, which may repeat a latent."""
    case = topk_case(n=2, rows=5, d_in=4, d_sae=6, k=3, seed=2)
    indices = torch.tensor([[[0, 3, 3], [1, 2, 5], [4, 4, 4], [0, 1, 2], [5, 0, 5]],
                            [[2, 2, 1], [3, 4, 5], [0, 0, 1], [5, 5, 5], [1, 3, 0]]])
    x = case["x"]

    def gathered(w_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
        pre = torch.baddbmm(b_enc.unsqueeze(1), x.unsqueeze(0) - b_dec.unsqueeze(1), w_enc)
        return sparse_encode_gather(pre, x, w_enc, b_enc, b_dec, indices)

    inputs = tuple(case[name].clone().requires_grad_(True) for name in ("W_enc", "b_enc", "b_dec"))
    assert torch.autograd.gradcheck(gathered, inputs)


# --------------------------------------------------------------------------------------------
# MonoScore
# --------------------------------------------------------------------------------------------


def test_linear_time_monoscore_equals_the_pair_definition() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 9)) + 0.3
    acts = rng.exponential(size=(60, 14)) * (rng.random((60, 14)) < 0.3)
    acts[:, 0] = 0.0  # never fires: no score
    acts[:, 1] = 0.0
    acts[7, 1] = 2.0  # fires once: no pairs, no score
    expected = mono_pairwise(acts, x)
    score, has_score = batch_mono_score(torch.from_numpy(acts).float(),
                                        unit_rows(torch.from_numpy(x).float()))
    np.testing.assert_array_equal(has_score.numpy(), ~np.isnan(expected))
    np.testing.assert_allclose(score.numpy()[~np.isnan(expected)],
                               expected[~np.isnan(expected)], rtol=0, atol=1e-5)
    # stacked over a leading bank dimension, and the loss is 1 - the mean over scored latents
    stacked = torch.from_numpy(np.stack([acts, acts[:, ::-1].copy()]))
    losses = mono_loss(stacked, unit_rows(torch.from_numpy(x)))
    assert float(losses[0]) == pytest.approx(1 - np.nanmean(expected), abs=1e-10)
    assert float(losses[1]) == pytest.approx(1 - np.nanmean(expected), abs=1e-10)
