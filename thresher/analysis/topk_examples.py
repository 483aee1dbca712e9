"""Which rows make a feature fire: top-N max-activating examples and quantile samples.

Both work on the sparse firing entries of a batch (feature, value, example id, position) and
keep a fixed-size table per feature, so memory is O(d_sae · N) whatever the number of rows.
Every choice has a total order (ties broken by example id, then position), so the tables do not
depend on how rows were batched.

- `TopExamples`: the N largest activations per feature, one entry per example (an example's
  largest activation, at its first position on a tie).
- `QuantileSampler`: a uniform sample of each feature's firing rows without replacement, chosen
  by the smallest values of a hash of (feature, example, position) — a bottom-k sample, exact and
  order-independent — from which samples at evenly spaced activation quantiles are read at the
  end (Bricken et al. show examples from across the activation range, not only the top).
"""

from __future__ import annotations

import numpy as np
import torch

EXAMPLE_KINDS = ("top", "quantile")


class TopExamples:
    def __init__(self, d_sae: int, n: int) -> None:
        self.d_sae, self.n = d_sae, n
        self.feature = np.zeros(0, dtype=np.int64)
        self.value = np.zeros(0, dtype=np.float64)
        self.example_id = np.zeros(0, dtype=np.int64)
        self.position = np.zeros(0, dtype=np.int32)

    @torch.no_grad()
    def update_dense(self, f: torch.Tensor, example_id: np.ndarray,
                     position: np.ndarray) -> None:
        """f [B, d_sae] (>= 0) with each row's example id and position.

        Reduces the batch to its N best examples per feature first (per-example maxima on the
        dense matrix, then a top-N over examples), so the exact merge only sorts N·d_sae entries.
        """
        if self.n <= 0 or not len(f):
            return
        uniq, inv = np.unique(example_id, return_inverse=True)
        index = torch.from_numpy(inv.reshape(-1)).long()[:, None].expand_as(f)
        seg_max = torch.zeros(len(uniq), f.shape[1], dtype=f.dtype).scatter_reduce(
            0, index, f, "amax", include_self=True)
        at_max = (f == seg_max.gather(0, index)) & (f > 0)
        big = torch.iinfo(torch.int64).max
        pos = torch.from_numpy(np.asarray(position, dtype=np.int64))[:, None].expand_as(f)
        first_pos = torch.full(seg_max.shape, big, dtype=torch.int64).scatter_reduce(
            0, index, torch.where(at_max, pos, big), "amin", include_self=True)
        # Every example at or above each feature's N-th best (ties included, so the exact merge
        # breaks them by example id).
        nth = seg_max.topk(min(self.n, len(uniq)), dim=0).values[-1]  # [d_sae]
        which, feats = torch.nonzero((seg_max >= nth[None, :]) & (seg_max > 0), as_tuple=True)
        self.update(feats.numpy(), seg_max[which, feats].numpy(), uniq[which.numpy()],
                    first_pos[which, feats].numpy())

    def update(self, feature: np.ndarray, value: np.ndarray, example_id: np.ndarray,
               position: np.ndarray) -> None:
        """Merge firing entries (any number per example) into the table."""
        if self.n <= 0 or not len(feature):
            return
        feat = np.concatenate([self.feature, feature.astype(np.int64)])
        val = np.concatenate([self.value, value.astype(np.float64)])
        eid = np.concatenate([self.example_id, example_id.astype(np.int64)])
        pos = np.concatenate([self.position, position.astype(np.int32)])
        # One entry per (feature, example): its largest value, first position on a tie.
        order = np.lexsort((pos, -val, eid, feat))
        feat, val, eid, pos = feat[order], val[order], eid[order], pos[order]
        first = np.ones(len(feat), dtype=bool)
        first[1:] = (feat[1:] != feat[:-1]) | (eid[1:] != eid[:-1])
        feat, val, eid, pos = feat[first], val[first], eid[first], pos[first]
        # Rank within each feature by value (desc), then example id.
        order = np.lexsort((eid, -val, feat))
        feat, val, eid, pos = feat[order], val[order], eid[order], pos[order]
        keep = _rank_in_group(feat) < self.n
        self.feature, self.value = feat[keep], val[keep]
        self.example_id, self.position = eid[keep], pos[keep]

    def entries(self) -> dict[str, np.ndarray]:
        rank = _rank_in_group(self.feature)
        return _columns(self.feature, "top", rank, np.full(len(rank), np.nan), self.value,
                        self.example_id, self.position)


class QuantileSampler:
    def __init__(self, d_sae: int, reservoir: int) -> None:
        self.d_sae, self.reservoir = d_sae, reservoir
        self.feature = np.zeros(0, dtype=np.int64)
        self.key = np.zeros(0, dtype=np.uint64)
        self.value = np.zeros(0, dtype=np.float64)
        self.example_id = np.zeros(0, dtype=np.int64)
        self.position = np.zeros(0, dtype=np.int32)

    @torch.no_grad()
    def update_entries(self, rows: np.ndarray, feature: np.ndarray, value: np.ndarray,
                       example_id: np.ndarray, position: np.ndarray, batch_rows: int) -> None:
        """Firing entries of a batch of `batch_rows` rows: (row, feature, value) and each
        row's example id and position. Keeps the batch's R smallest keys per feature (a dense
        top-k) before the exact merge."""
        if self.reservoir <= 0 or not len(feature):
            return
        eid, pos = example_id[rows], position[rows]
        key = row_hash(feature, eid, pos)
        if len(feature) > 4 * self.reservoir * self.d_sae:
            dense = torch.full((batch_rows, self.d_sae), torch.inf, dtype=torch.float64)
            dense[torch.from_numpy(rows), torch.from_numpy(feature)] = torch.from_numpy(
                key.astype(np.float64))
            k = min(self.reservoir, batch_rows)
            # uint64 -> float64 keeps the order; keys equal as floats are 2^-53 apart (rare).
            top_keys, top_rows = dense.topk(k, dim=0, largest=False)
            finite = torch.isfinite(top_keys)
            pick_rows = top_rows[finite].numpy()
            pick_feats = torch.arange(self.d_sae)[None, :].expand_as(top_rows)[finite].numpy()
            # Entries come row-major (torch.nonzero), so row * d_sae + feature is sorted.
            flat = rows.astype(np.int64) * self.d_sae + feature
            chosen = np.searchsorted(flat, pick_rows.astype(np.int64) * self.d_sae + pick_feats)
            feature, value, eid, pos, key = (feature[chosen], value[chosen], eid[chosen],
                                             pos[chosen], key[chosen])
        self._merge(feature.astype(np.int64), key, value, eid, pos)

    def update(self, feature: np.ndarray, value: np.ndarray, example_id: np.ndarray,
               position: np.ndarray) -> None:
        """Merge firing entries (feature, value, example id, position) into the sample."""
        if self.reservoir <= 0 or not len(feature):
            return
        self._merge(feature.astype(np.int64), row_hash(feature, example_id, position), value,
                    example_id, position)

    def _merge(self, feature: np.ndarray, key: np.ndarray, value: np.ndarray,
               example_id: np.ndarray, position: np.ndarray) -> None:
        feat = np.concatenate([self.feature, feature])
        keys = np.concatenate([self.key, key])
        val = np.concatenate([self.value, value.astype(np.float64)])
        eid = np.concatenate([self.example_id, example_id.astype(np.int64)])
        pos = np.concatenate([self.position, position.astype(np.int32)])
        order = np.lexsort((pos, eid, keys, feat))
        keep = order[_rank_in_group(feat[order]) < self.reservoir]
        self.feature, self.key, self.value = feat[keep], keys[keep], val[keep]
        self.example_id, self.position = eid[keep], pos[keep]

    def quantile_samples(self, count: int) -> dict[str, np.ndarray]:
        """Per feature, `count` entries of its sample at quantiles (i + 0.5) / count."""
        empty = np.zeros(0, dtype=np.int64)
        if count <= 0 or not len(self.feature):
            return _columns(empty, "quantile", empty, np.zeros(0), np.zeros(0), empty,
                            empty.astype(np.int32))
        # Each feature's sample sorted by activation; groups are contiguous in `order`.
        order = np.lexsort((self.position, self.example_id, self.value, self.feature))
        rank = _rank_in_group(self.feature[order])
        levels = (np.arange(count) + 0.5) / count
        out_idx, out_q, out_rank = [], [], []
        group_start = np.flatnonzero(rank == 0)
        group_size = np.diff(np.append(group_start, len(order)))
        for i, q in enumerate(levels):
            pick = group_start + np.floor(q * group_size).astype(np.int64)
            out_idx.append(pick)
            out_q.append(np.full(len(pick), q))
            out_rank.append(np.full(len(pick), i))
        # A feature with fewer sampled rows than `count` would repeat rows: keep each once.
        _, first = np.unique(np.concatenate(out_idx), return_index=True)
        picks = order[np.concatenate(out_idx)[first]]
        quantile, qrank = np.concatenate(out_q)[first], np.concatenate(out_rank)[first]
        # Sort by (feature, quantile) for a tidy file.
        tidy = np.lexsort((qrank, self.feature[picks]))
        picks, quantile, qrank = picks[tidy], quantile[tidy], qrank[tidy]
        return _columns(self.feature[picks], "quantile", qrank, quantile, self.value[picks],
                        self.example_id[picks], self.position[picks])


def row_hash(feature: np.ndarray, example_id: np.ndarray, position: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random uint64 per (feature, example, position) (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        h = (feature.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ example_id.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             ^ position.astype(np.uint64) * np.uint64(0x94D049BB133111EB))
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def _rank_in_group(sorted_groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of an already grouped array."""
    n = len(sorted_groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.ones(n, dtype=bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    start_idx = np.flatnonzero(starts)
    group_of = np.cumsum(starts) - 1
    return np.arange(n) - start_idx[group_of]


def _columns(feature: np.ndarray, kind: str, rank: np.ndarray, quantile: np.ndarray,
             value: np.ndarray, example_id: np.ndarray, position: np.ndarray
             ) -> dict[str, np.ndarray]:
    return {
        "feature": feature.astype(np.int32),
        "kind": np.array([kind] * len(feature), dtype=object),
        "rank": rank.astype(np.int32),
        "quantile": quantile.astype(np.float64),
        "activation": value.astype(np.float64),
        "example_id": example_id.astype(np.int64),
        "position": position.astype(np.int32),
    }
