"""Which rows make a feature fire: top-N max-activating examples and quantile samples.

Both take the firing entries of a batch (feature, value, example id, position) and keep a
fixed-size table per feature ([d_sae, N] arrays), so memory is O(d_sae · N) whatever the number
of rows. Every choice has a total order (ties broken by example id, then position), so the
tables do not depend on how rows were batched.

- `TopExamples`: the N largest activations per feature, one entry per example (an example's
  largest activation, at its first position on a tie).
- `QuantileSampler`: a uniform sample of each feature's firing rows without replacement, chosen
  by the smallest values of a hash of (feature, example, position) — a bottom-k sample, exact and
  order-independent — from which samples at evenly spaced activation quantiles are read at the
  end (Bricken et al. show examples from across the activation range, not only the top).

Cost: once a feature's table is full, an entry below its N-th value (above its R-th key) cannot
enter it, so such entries are dropped before any sorting (exact, and most entries after the
first batches); only the features with surviving entries are re-sorted. A batch with very many
surviving entries (the first batches of a dense ReLU SAE) is first cut to its own best N per
feature on the dense matrix.
"""

from __future__ import annotations

import numpy as np
import torch

EXAMPLE_KINDS = ("top", "quantile")
# Above this many surviving entries per table slot, cut the batch down on the dense matrix first.
DENSE_CUT = 8


class _Table:
    """Per-feature rows [d_sae, cap] of (value, key, example id, position), `fill` used each."""

    def __init__(self, d_sae: int, cap: int) -> None:
        self.d_sae, self.cap = d_sae, cap
        self.value = np.zeros((d_sae, cap), dtype=np.float64)
        self.key = np.zeros((d_sae, cap), dtype=np.uint64)
        self.example_id = np.zeros((d_sae, cap), dtype=np.int64)
        self.position = np.zeros((d_sae, cap), dtype=np.int32)
        self.fill = np.zeros(d_sae, dtype=np.int64)

    def rows_of(self, feats: np.ndarray) -> tuple[np.ndarray, ...]:
        """(feature, value, key, example id, position) of the stored entries of `feats`."""
        used = np.arange(self.cap)[None, :] < self.fill[feats][:, None]
        return (np.repeat(feats, self.fill[feats]), self.value[feats][used],
                self.key[feats][used], self.example_id[feats][used],
                self.position[feats][used])

    def replace(self, feats: np.ndarray, feat: np.ndarray, value: np.ndarray, key: np.ndarray,
                example_id: np.ndarray, position: np.ndarray) -> None:
        """Rows `feats` become the entries given, already grouped by feature in rank order."""
        rank = _rank_in_group(feat)
        self.fill[feats] = np.bincount(feat, minlength=self.d_sae)[feats]
        self.value[feat, rank], self.key[feat, rank] = value, key
        self.example_id[feat, rank], self.position[feat, rank] = example_id, position

    def columns(self) -> tuple[np.ndarray, ...]:
        """(feature, rank, value, key, example id, position) of every stored entry."""
        used = np.arange(self.cap)[None, :] < self.fill[:, None]
        feat = np.repeat(np.arange(self.d_sae), self.fill)
        return (feat, _rank_in_group(feat), self.value[used], self.key[used],
                self.example_id[used], self.position[used])


class TopExamples:
    def __init__(self, d_sae: int, n: int) -> None:
        self.d_sae, self.n = d_sae, n
        self.table = _Table(d_sae, max(n, 0))

    def floor(self) -> np.ndarray:
        """Each feature's N-th largest value so far; -inf while its table is not full."""
        if self.n <= 0:
            return np.full(self.d_sae, np.inf)
        return np.where(self.table.fill >= self.n, self.table.value[:, -1], -np.inf)

    def update(self, feature: np.ndarray, value: np.ndarray, example_id: np.ndarray,
               position: np.ndarray) -> None:
        """Merge firing entries (value > 0; any number per example) into the table."""
        if self.n <= 0 or not len(feature):
            return
        feature = np.asarray(feature, dtype=np.int64)
        value = np.asarray(value, dtype=np.float64)
        # At or above the N-th value (ties may still win on example id); nothing below can enter.
        keep = value >= self.floor()[feature]
        if not keep.all():
            feature, value = feature[keep], value[keep]
            example_id, position = example_id[keep], position[keep]
        if not len(feature):
            return
        feats = np.unique(feature)
        old_feat, old_val, _, old_eid, old_pos = self.table.rows_of(feats)
        feat = np.concatenate([old_feat, feature])
        val = np.concatenate([old_val, value])
        eid = np.concatenate([old_eid, np.asarray(example_id, dtype=np.int64)])
        pos = np.concatenate([old_pos, np.asarray(position, dtype=np.int32)])
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
        self.table.replace(feats, feat[keep], val[keep], np.zeros(int(keep.sum()), np.uint64),
                           eid[keep], pos[keep])

    @torch.no_grad()
    def update_dense(self, f: torch.Tensor, example_id: np.ndarray,
                     position: np.ndarray) -> None:
        """f [B, d_sae] (>= 0) with each row's example id and position.

        Reduces the batch to its N best examples per feature first (per-example maxima on the
        dense matrix, then a top-N over examples), so the exact merge only sorts N·d_sae entries.
        """
        if self.n <= 0 or not len(f):
            return
        f = f.detach().cpu().double()
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

    def entries(self) -> dict[str, np.ndarray]:
        feat, rank, value, _, eid, pos = self.table.columns()
        return _columns(feat, "top", rank, np.full(len(rank), np.nan), value, eid, pos)


class QuantileSampler:
    def __init__(self, d_sae: int, reservoir: int) -> None:
        self.d_sae, self.reservoir = d_sae, reservoir
        self.table = _Table(d_sae, max(reservoir, 0))

    def ceiling(self) -> np.ndarray:
        """Each feature's R-th smallest key so far; the largest uint64 while not full."""
        top = np.iinfo(np.uint64).max
        if self.reservoir <= 0:
            return np.zeros(self.d_sae, dtype=np.uint64)
        return np.where(self.table.fill >= self.reservoir, self.table.key[:, -1],
                        np.uint64(top)).astype(np.uint64)

    def update_entries(self, rows: np.ndarray, feature: np.ndarray, value: np.ndarray,
                       example_id: np.ndarray, position: np.ndarray, batch_rows: int) -> None:
        """Firing entries of a batch of `batch_rows` rows: (row, feature, value), and each
        row's example id and position."""
        if self.reservoir <= 0 or not len(feature):
            return
        feature = np.asarray(feature, dtype=np.int64)
        eid, pos = example_id[rows], position[rows]
        key = row_hash(feature, eid, pos)
        keep = key <= self.ceiling()[feature]
        if not keep.all():
            rows, feature, value, eid, pos, key = (rows[keep], feature[keep], value[keep],
                                                   eid[keep], pos[keep], key[keep])
        if len(feature) > DENSE_CUT * self.reservoir * self.d_sae:
            rows, feature, value, eid, pos, key = self._cut(rows, feature, value, eid, pos, key,
                                                            batch_rows)
        self._merge(feature, key, value, eid, pos)

    def _cut(self, rows: np.ndarray, feature: np.ndarray, value: np.ndarray, eid: np.ndarray,
             pos: np.ndarray, key: np.ndarray, batch_rows: int) -> tuple[np.ndarray, ...]:
        """The batch's R smallest keys per feature (a dense top-k), entries kept row-major."""
        dense = torch.full((batch_rows, self.d_sae), torch.inf, dtype=torch.float64)
        dense[torch.from_numpy(rows), torch.from_numpy(feature)] = torch.from_numpy(
            key.astype(np.float64))
        k = min(self.reservoir, batch_rows)
        # uint64 -> float64 keeps the order; keys equal as floats are 2^-53 apart (rare).
        top_keys, top_rows = dense.topk(k, dim=0, largest=False)
        finite = torch.isfinite(top_keys)
        pick_rows = top_rows[finite].numpy()
        pick_feats = torch.arange(self.d_sae)[None, :].expand_as(top_rows)[finite].numpy()
        flat = rows.astype(np.int64) * self.d_sae + feature
        by_flat = np.argsort(flat, kind="stable")  # already sorted when entries are row-major
        chosen = by_flat[np.searchsorted(flat[by_flat],
                                         pick_rows.astype(np.int64) * self.d_sae + pick_feats)]
        return (rows[chosen], feature[chosen], value[chosen], eid[chosen], pos[chosen],
                key[chosen])

    def update(self, feature: np.ndarray, value: np.ndarray, example_id: np.ndarray,
               position: np.ndarray) -> None:
        """Merge firing entries (feature, value, example id, position) into the sample."""
        if self.reservoir <= 0 or not len(feature):
            return
        feature = np.asarray(feature, dtype=np.int64)
        key = row_hash(feature, example_id, position)
        keep = key <= self.ceiling()[feature]
        self._merge(feature[keep], key[keep], value[keep], example_id[keep], position[keep])

    def _merge(self, feature: np.ndarray, key: np.ndarray, value: np.ndarray,
               example_id: np.ndarray, position: np.ndarray) -> None:
        """Keep each touched feature's R smallest keys among its stored and new entries: one
        row-wise sort of a [features, R + most new entries] key matrix."""
        if not len(feature):
            return
        by_feature = np.argsort(feature, kind="stable")
        feature, key, value = feature[by_feature], key[by_feature], value[by_feature]
        example_id, position = example_id[by_feature], position[by_feature]
        feats, starts, counts = np.unique(feature, return_index=True, return_counts=True)
        cap, n_new = self.reservoir, len(feature)
        slot = np.arange(n_new) - np.repeat(starts, counts)  # rank among the feature's new
        row = np.repeat(np.arange(len(feats)), counts)
        width = cap + int(counts.max())
        # Entries as indices into [stored (m x cap, flattened); new]; -1 pads.
        index = np.full((len(feats), width), -1, dtype=np.int64)
        index[:, :cap] = np.where(np.arange(cap)[None, :] < self.table.fill[feats][:, None],
                                  np.arange(len(feats) * cap).reshape(-1, cap), -1)
        index[row, cap + slot] = len(feats) * cap + np.arange(n_new)
        keys = np.concatenate([self.table.key[feats].reshape(-1), key])
        order_key = np.where(index >= 0, _ordered_int64(keys[np.maximum(index, 0)]),
                             np.iinfo(np.int64).max)
        # Stable: on an equal key (a 64-bit hash collision) a stored entry stays first.
        ranked = torch.from_numpy(order_key).sort(dim=1, stable=True).indices[:, :cap].numpy()
        chosen = np.take_along_axis(index, ranked, axis=1)
        valid = chosen >= 0
        pick = chosen[valid]
        value_all = np.concatenate([self.table.value[feats].reshape(-1), value])
        eid_all = np.concatenate([self.table.example_id[feats].reshape(-1), example_id])
        pos_all = np.concatenate([self.table.position[feats].reshape(-1), position])
        self.table.replace(feats, np.repeat(feats, valid.sum(1)), value_all[pick], keys[pick],
                           eid_all[pick], pos_all[pick])

    def quantile_samples(self, count: int) -> dict[str, np.ndarray]:
        """Per feature, `count` entries of its sample at quantiles (i + 0.5) / count."""
        feature, _, value, _, example_id, position = self.table.columns()
        empty = np.zeros(0, dtype=np.int64)
        if count <= 0 or not len(feature):
            return _columns(empty, "quantile", empty, np.zeros(0), np.zeros(0), empty,
                            empty.astype(np.int32))
        # Each feature's sample sorted by activation; groups are contiguous in `order`.
        order = np.lexsort((position, example_id, value, feature))
        rank = _rank_in_group(feature[order])
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
        tidy = np.lexsort((qrank, feature[picks]))
        picks, quantile, qrank = picks[tidy], quantile[tidy], qrank[tidy]
        return _columns(feature[picks], "quantile", qrank, quantile, value[picks],
                        example_id[picks], position[picks])


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


def _ordered_int64(key: np.ndarray) -> np.ndarray:
    """uint64 keys as int64 in the same order (the sign bit flipped)."""
    return (key.astype(np.uint64) ^ np.uint64(1 << 63)).view(np.int64)


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
