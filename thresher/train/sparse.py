"""Sparse TopK encode-gather and decode for a bank of SAEs, forward and backward.

A TopK-family SAE touches only K latents per row, yet the dense formulation pays for all d_sae of
them three times: the decoder matmul, its two backward matmuls, and the encoder's two backward
matmuls (the gradient of the pre-activations is zero outside the selected entries). Two autograd
functions keep everything but the one dense encoder matmul sparse:

  sparse_encode_gather  values = pre[n, b, idx[n, b, j]] where pre = (x - b_dec[n]) W_enc[n]
                        + b_enc[n] was computed without autograd; the backward sends the values'
                        gradient into W_enc, b_enc and b_dec directly.
  sparse_decode         out[n, b] = sum_j values[n, b, j] W_dec[n, idx[n, b, j]] as one
                        embedding_bag over the bank's decoders flattened to [n * d_sae, d_in].

Shapes: the bank has n SAEs, B rows, K selected entries per row, d_in inputs, M = d_sae latents;
the selections form a sparse matrix S [n * B, n * M] with K entries per row (block diagonal).
Both backwards need the two products of S with dense matrices, and neither materialises the
[n * B, K, d_in] tensor of gathered rows (which costs more than the dense matmuls it replaces):

  weight gradients   S^T G: one embedding_bag over the selections grouped by latent (a stable
                     argsort of the indices), each latent's bag the weighted sum of its rows of G.
  value gradients    (G W^T) at S's entries only: torch.sparse.sampled_addmm (SDDMM) with S's
                     pattern as a CSR matrix, its columns sorted within each row.

Indices must be distinct within a row (TopK and topk-padded selections are). Entries whose value
is 0 (masked ranks, padding) add exact zeros, so padding never changes a sum. `dense_decode`
(scatter into [n, B, M], then batched matmuls; the TopK family's path with sparse_decode
off) is the reference these are tested against.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _flat_indices(indices: torch.Tensor, d_sae: int) -> torch.Tensor:
    """[n, B, K] latent indices -> [n * B, K] row indices into weights flattened [n * M, ...]."""
    n = indices.shape[0]
    offsets = torch.arange(n, device=indices.device, dtype=indices.dtype) * d_sae
    return (indices + offsets.view(n, 1, 1)).flatten(0, 1)


def _narrow_keys(flat: torch.Tensor, bound: int) -> torch.Tensor:
    """Ids below `bound` as int32 where they fit: torch's multithreaded stable sort of int64 on
    the CPU is tens of times slower than of int32."""
    return flat.to(torch.int32) if bound < 2**31 else flat


# Index bookkeeping (grouping the selections by latent, ordering each row's columns) is a few
# O(selections) passes. On the CPU it runs in numpy, single-threaded: torch's parallel sort and
# bincount stall for milliseconds at every barrier when the trainer shares its cores (with Ray,
# harvesters, other trainers), while numpy's radix sort of 16-bit keys takes well under a
# millisecond per 10^5 selections.
NUMPY_KEY_LIMIT = 1 << 32


def _group_by_latent(keys: torch.Tensor, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, offsets): a stable argsort of the latent ids keys [N], and where each latent's
    run starts in that order ([n_latents])."""
    if keys.device.type == "cpu" and n_latents <= NUMPY_KEY_LIMIT:
        ids = keys.numpy()
        # LSD radix sort in two stable 16-bit passes (one when the ids fit in 16 bits).
        order = np.argsort((ids & 0xFFFF).astype(np.uint16), kind="stable")
        if n_latents > 1 << 16:
            order = order[np.argsort((ids[order] >> 16).astype(np.uint16), kind="stable")]
        counts = np.bincount(ids, minlength=n_latents)
        return torch.from_numpy(order), torch.from_numpy(counts.cumsum() - counts)
    keys = _narrow_keys(keys, n_latents)
    order = torch.argsort(keys, stable=True)
    counts = torch.bincount(keys, minlength=n_latents)
    return order, counts.cumsum(0) - counts


def _sort_rows(flat: torch.Tensor, bound: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns, permutation): each row of flat [R, K] in increasing order (ids are distinct
    within a row); columns as int32 where `bound` (above every id and count) allows."""
    if flat.device.type == "cpu":
        ids = flat.numpy()
        permutation = np.argsort(ids, axis=-1)
        columns = np.take_along_axis(ids, permutation, axis=-1)
        if bound < 2**31:
            columns = columns.astype(np.int32)
        return torch.from_numpy(columns), torch.from_numpy(permutation)
    return _narrow_keys(flat, bound).sort(dim=-1)


def _sum_by_latent(flat: torch.Tensor, n_latents: int, table: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """S^T table: out[m] = sum over selections (r, j) with flat[r, j] = m of
    weights[r, j] * table[r]; flat [R, K], table [R, d], weights [R, K] -> [n_latents, d]."""
    # Stable, so each latent sums its rows in row order whatever bank the SAE sits in.
    order, offsets = _group_by_latent(flat.flatten(), n_latents)
    rows = torch.div(order, flat.shape[1], rounding_mode="floor")
    return F.embedding_bag(rows, table, offsets, mode="sum",
                           per_sample_weights=weights.flatten()[order].to(table.dtype))


def _sampled_products(flat: torch.Tensor, n_latents: int, left: torch.Tensor,
                      right: torch.Tensor) -> torch.Tensor:
    """out[r, j] = left[r] . right[flat[r, j]] for flat [R, K], left [R, d], right [n_latents, d],
    without forming left @ right^T (SDDMM)."""
    rows, k = flat.shape
    # CSR wants each row's columns in order.
    columns, permutation = _sort_rows(flat, max(n_latents, rows * k + 1))
    crow = torch.arange(0, rows * k + 1, k, device=flat.device, dtype=columns.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(crow, columns.flatten(),
                                          torch.zeros(rows * k, dtype=left.dtype,
                                                      device=left.device),
                                          size=(rows, n_latents), check_invariants=False)
        sampled = torch.sparse.sampled_addmm(pattern, left, right.t(), beta=0.0)
    values = sampled.values().view(rows, k)
    return torch.empty_like(values).scatter_(-1, permutation, values)


class _SparseEncodeGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, x: torch.Tensor, w_enc: torch.Tensor,
                b_enc: torch.Tensor, b_dec: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w_enc, b_dec, indices)
        return pre.gather(-1, indices)

    @staticmethod
    def backward(ctx: Any, grad_values: torch.Tensor) -> tuple[Any, ...]:
        x, w_enc, b_dec, indices = ctx.saved_tensors
        n, d_in, d_sae = w_enc.shape
        grad_values = grad_values.to(w_enc.dtype)
        # d pre / d b_enc = 1 at each selected entry.
        grad_b_enc = torch.zeros(n, d_sae, dtype=w_enc.dtype, device=w_enc.device)
        grad_b_enc.scatter_add_(1, indices.flatten(1), grad_values.flatten(1))
        grad_w_enc = grad_b_dec = None
        if ctx.needs_input_grad[2]:
            # W_enc[n, :, m] gains sum over its selections of g * (x_b - b_dec[n]).
            centred = (x.to(w_enc.dtype).unsqueeze(0) - b_dec.unsqueeze(1)).flatten(0, 1)
            transposed = _sum_by_latent(_flat_indices(indices, d_sae), n * d_sae, centred,
                                        grad_values.flatten(0, 1))
            grad_w_enc = transposed.view(n, d_sae, d_in).transpose(1, 2).contiguous()
        if ctx.needs_input_grad[4]:
            # pre depends on b_dec through -b_dec W_enc: summed over rows that is -W_enc g_b_enc.
            grad_b_dec = -torch.bmm(w_enc, grad_b_enc.unsqueeze(-1)).squeeze(-1)
        return None, None, grad_w_enc, grad_b_enc, grad_b_dec, None


def sparse_encode_gather(pre: torch.Tensor, x: torch.Tensor, w_enc: torch.Tensor,
                         b_enc: torch.Tensor, b_dec: torch.Tensor,
                         indices: torch.Tensor) -> torch.Tensor:
    """pre [n, B, M] (no autograd) gathered at indices [n, B, K], differentiable in the weights.

    x [B, d_in] is the shared input, w_enc [n, d_in, M], b_enc [n, M], b_dec [n, d_in]; pre must
    equal (x - b_dec[n]) @ w_enc[n] + b_enc[n]. Repeated indices in a row are allowed here.
    """
    return _SparseEncodeGather.apply(pre.detach(), x, w_enc, b_enc, b_dec, indices)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, indices: torch.Tensor,
                w_dec: torch.Tensor) -> torch.Tensor:
        n, d_sae, d_in = w_dec.shape
        flat = _flat_indices(indices, d_sae)
        weight = w_dec.reshape(n * d_sae, d_in)
        out = F.embedding_bag(flat, weight, per_sample_weights=values.flatten(0, 1)
                              .to(weight.dtype), mode="sum")
        ctx.save_for_backward(values, flat, weight)
        ctx.shape = (n, d_sae, d_in)
        return out.view(n, -1, d_in)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        values, flat, weight = ctx.saved_tensors
        n, d_sae, d_in = ctx.shape
        g = grad_out.reshape(-1, d_in).to(weight.dtype)
        grad_values = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_values = (_sampled_products(flat, n * d_sae, g, weight)
                           .view_as(values).to(values.dtype))
        if ctx.needs_input_grad[2]:
            grad_w = _sum_by_latent(flat, n * d_sae, g, values.flatten(0, 1)).view(n, d_sae, d_in)
        return grad_values, None, grad_w


def sparse_decode(values: torch.Tensor, indices: torch.Tensor,
                  w_dec: torch.Tensor) -> torch.Tensor:
    """sum_j values[n, b, j] * w_dec[n, indices[n, b, j]] -> [n, B, d_in] (no decoder bias);
    indices distinct within each row."""
    return _SparseDecode.apply(values, indices, w_dec)


def dense_decode(values: torch.Tensor, indices: torch.Tensor,
                 w_dec: torch.Tensor) -> torch.Tensor:
    """The dense reference of `sparse_decode`: scatter into [n, B, M], then a batched matmul."""
    d_sae = w_dec.shape[1]
    f = torch.zeros(*values.shape[:-1], d_sae, dtype=values.dtype, device=values.device)
    return torch.bmm(f.scatter(-1, indices, values), w_dec)
