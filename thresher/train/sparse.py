"""Sparse TopK encode-gather and decode for a bank of SAEs, forward and backward.

A TopK-family SAE touches only K latents per row, yet the dense formulation pays for all d_sae of
them three times: the decoder matmul, its two backward matmuls, and the encoder's two backward
matmuls (the gradient of the pre-activations is zero outside the selected entries). Two autograd
functions keep everything but the one dense encoder matmul sparse:

  sparse_encode_gather  values = pre[n, b, idx[n, b, j]] where pre = (x - b_dec[n]) W_enc[n]
                        + b_enc[n] was computed without autograd; the backward scatters the
                        values' gradient into W_enc, b_enc and b_dec directly.
  sparse_decode         out[n, b] = sum_j values[n, b, j] W_dec[n, idx[n, b, j]] as one
                        embedding_bag over the bank's decoders flattened to [n * d_sae, d_in];
                        the backward gathers and index-adds the K rows only.

Shapes: the bank has n SAEs, B rows, K selected entries per row, d_in inputs, M = d_sae latents.
Entries whose value is 0 (masked ranks, padding) add exact zeros, so padding never changes a sum.
The backward works in row chunks so its [rows, K, d_in] temporaries stay small whatever the bank.
The dense path in `thresher.train.sae` (scatter into [n, B, M], then batched matmuls) is the
reference these are tested against.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Upper bound on the elements of one chunk's [rows, K, d_in] temporary in the backward passes.
CHUNK_ELEMENTS = 1 << 21


def _flat_indices(indices: torch.Tensor, d_sae: int) -> torch.Tensor:
    """[n, B, K] latent indices -> [n * B, K] row indices into weights flattened [n * M, ...]."""
    n = indices.shape[0]
    offsets = torch.arange(n, device=indices.device, dtype=indices.dtype) * d_sae
    return (indices + offsets.view(n, 1, 1)).flatten(0, 1)


def _chunk_rows(per_row: int) -> int:
    """Rows per backward chunk when each row has `per_row` temporary elements."""
    return max(1, CHUNK_ELEMENTS // max(per_row, 1))


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
        k = indices.shape[-1]
        grad_values = grad_values.to(w_enc.dtype)
        # d pre / d b_enc = 1 at each selected entry.
        grad_b_enc = torch.zeros(n, d_sae, dtype=w_enc.dtype, device=w_enc.device)
        grad_b_enc.scatter_add_(1, indices.flatten(1), grad_values.flatten(1))
        grad_w_enc = grad_b_dec = None
        if ctx.needs_input_grad[2]:
            # W_enc[n, :, m] gains sum over its selections of g * (x_b - b_dec[n]); accumulated
            # transposed ([n * M, d_in] rows) so each selection adds one contiguous row.
            flat = _flat_indices(indices, d_sae)
            g = grad_values.flatten(0, 1)
            rows_of_sae = torch.arange(n, device=x.device).repeat_interleave(x.shape[0])
            rows_of_x = torch.arange(x.shape[0], device=x.device).repeat(n)
            acc = torch.zeros(n * d_sae, d_in, dtype=w_enc.dtype, device=w_enc.device)
            step = _chunk_rows(k * d_in)
            for start in range(0, len(flat), step):
                sl = slice(start, start + step)
                centred = x[rows_of_x[sl]].to(w_enc.dtype) - b_dec[rows_of_sae[sl]]
                acc.index_add_(0, flat[sl].flatten(),
                               (g[sl].unsqueeze(-1) * centred.unsqueeze(1)).flatten(0, 1))
            grad_w_enc = acc.view(n, d_sae, d_in).transpose(1, 2)
        if ctx.needs_input_grad[4]:
            # pre depends on b_dec through -b_dec W_enc: summed over rows that is -W_enc g_b_enc.
            grad_b_dec = -torch.bmm(w_enc, grad_b_enc.unsqueeze(-1)).squeeze(-1)
        return None, None, grad_w_enc, grad_b_enc, grad_b_dec, None


def sparse_encode_gather(pre: torch.Tensor, x: torch.Tensor, w_enc: torch.Tensor,
                         b_enc: torch.Tensor, b_dec: torch.Tensor,
                         indices: torch.Tensor) -> torch.Tensor:
    """pre [n, B, M] (no autograd) gathered at indices [n, B, K], differentiable in the weights.

    x [B, d_in] is the shared input, w_enc [n, d_in, M], b_enc [n, M], b_dec [n, d_in]; pre must
    equal (x - b_dec[n]) @ w_enc[n] + b_enc[n].
    """
    return _SparseEncodeGather.apply(pre.detach(), x, w_enc, b_enc, b_dec, indices)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, indices: torch.Tensor,
                w_dec: torch.Tensor) -> torch.Tensor:
        n, d_sae, d_in = w_dec.shape
        flat = _flat_indices(indices, d_sae)
        weight = w_dec.reshape(n * d_sae, d_in)
        weights = values.flatten(0, 1).to(weight.dtype)
        out = F.embedding_bag(flat, weight, per_sample_weights=weights, mode="sum")
        ctx.save_for_backward(values, flat, weight)
        ctx.shape = (n, d_sae, d_in)
        return out.view(n, -1, d_in)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        values, flat, weight = ctx.saved_tensors
        n, d_sae, d_in = ctx.shape
        k = flat.shape[-1]
        g = grad_out.reshape(-1, d_in).to(weight.dtype)
        v = values.flatten(0, 1).to(weight.dtype)
        need_values, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        grad_values = torch.empty_like(v) if need_values else None
        grad_w = torch.zeros_like(weight) if need_w else None
        step = _chunk_rows(k * d_in)
        for start in range(0, len(flat), step):
            sl = slice(start, start + step)
            if grad_values is not None:
                rows = weight[flat[sl]]  # [c, K, d_in]
                grad_values[sl] = torch.bmm(rows, g[sl].unsqueeze(-1)).squeeze(-1)
            if grad_w is not None:
                grad_w.index_add_(0, flat[sl].flatten(),
                                  (v[sl].unsqueeze(-1) * g[sl].unsqueeze(1)).flatten(0, 1))
        grad_values_out = (grad_values.view_as(values).to(values.dtype)
                           if grad_values is not None else None)
        grad_w_out = grad_w.view(n, d_sae, d_in) if grad_w is not None else None
        return grad_values_out, None, grad_w_out


def sparse_decode(values: torch.Tensor, indices: torch.Tensor,
                  w_dec: torch.Tensor) -> torch.Tensor:
    """sum_j values[n, b, j] * w_dec[n, indices[n, b, j]] -> [n, B, d_in] (no decoder bias)."""
    return _SparseDecode.apply(values, indices, w_dec)


def dense_decode(values: torch.Tensor, indices: torch.Tensor,
                 w_dec: torch.Tensor) -> torch.Tensor:
    """The dense reference of `sparse_decode`: scatter into [n, B, M], then a batched matmul."""
    d_sae = w_dec.shape[1]
    f = torch.zeros(*values.shape[:-1], d_sae, dtype=values.dtype, device=values.device)
    return torch.bmm(f.scatter(-1, indices, values), w_dec)
