"""The `synthetic` source: activations made from a known feature dictionary (ground truth).

Each row is x = Σ_j a_j d_j + noise, with d_j the unit rows of a random dictionary
[n_features, d_in] and a_j ≥ 0 the true feature activations:

- firing: feature j fires with a Zipfian probability p_j ∝ (j + 1)^−zipf_exponent, scaled so
  that the features outside any hierarchy fire `mean_l0` times per row on average (p ≤ 1);
- correlations (`correlation_rank` > 0): firing is thresholded from a Gaussian copula,
  z = √(1−s)·ε + √s·(L g) with L [features, rank] of unit rows, fire where Φ(z) < p_j, so each
  marginal p_j is kept while features sharing directions of L fire together;
- hierarchy (`n_parents` > 0): the commonest `n_parents` features are parents with
  `children_per_parent` children each; when a parent fires, with probability `child_prob`
  exactly one of its children fires (chosen uniformly), so siblings are mutually exclusive and a
  child never fires without its parent;
- magnitudes: uniform in [magnitude_low, magnitude_high] for each firing entry.

Like the `stored` source, the input batch [i] is "harvested" by making block i, a pure
function of (seed, i): every executor, harvester and re-analysis sees identical rows, and
the evaluation regenerates the true activations of the held-out rows (example_id = row index
in the stream, position 0) instead of shipping them with the activations.
"""

from __future__ import annotations

import numpy as np

from thresher.config import SourceConfig
from thresher.modalities.synthetic.spec import SyntheticConfig


class SyntheticModel:
    """The dictionary, firing probabilities and hierarchy of one config; makes blocks."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.cfg = cfg
        n, c = cfg.n_features, cfg.children_per_parent
        rng = np.random.default_rng([cfg.seed, 0])
        dictionary = rng.normal(size=(n, cfg.d_in))
        self.dictionary = dictionary / np.linalg.norm(dictionary, axis=1, keepdims=True)
        n_child = cfg.n_parents * c
        self.parents = np.arange(cfg.n_parents)
        # children[j, i]: the i-th child of parent j; they follow the parents in index order.
        self.children = cfg.n_parents + np.arange(n_child).reshape(cfg.n_parents, c)
        # Roots fire by themselves (parents included); children only through their parent.
        self.roots = np.concatenate([self.parents, np.arange(cfg.n_parents + n_child, n)])
        p = (self.roots + 1.0) ** -cfg.zipf_exponent
        self.root_prob = np.minimum(p * cfg.mean_l0 / p.sum(), 1.0)
        if cfg.correlation_rank:
            mix = rng.normal(size=(len(self.roots), cfg.correlation_rank))
            self.mix = mix / np.linalg.norm(mix, axis=1, keepdims=True)
            from scipy.special import ndtri

            self.root_z = ndtri(self.root_prob)  # fire where z < Φ⁻¹(p): P = p exactly

    @property
    def n_blocks(self) -> int:
        return -(-self.cfg.rows // self.cfg.block_rows)

    def block_size(self, block: int) -> int:
        return min(self.cfg.block_rows, self.cfg.rows - block * self.cfg.block_rows)

    def feature_acts(self, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Block `block`'s true activations as entries (row, feature, value), and its rows."""
        cfg, rows = self.cfg, self.block_size(block)
        rng = np.random.default_rng([cfg.seed, 1, block])
        if cfg.correlation_rank:
            s = cfg.correlation_strength
            z = (np.sqrt(1 - s) * rng.standard_normal((rows, len(self.roots)))
                 + np.sqrt(s) * (rng.standard_normal((rows, cfg.correlation_rank)) @ self.mix.T))
            fires = z < self.root_z
        else:
            fires = rng.random((rows, len(self.roots))) < self.root_prob
        row, col = np.nonzero(fires)
        feat = self.roots[col]
        if cfg.n_parents:
            parent_fires = fires[:, : cfg.n_parents]
            child_on = parent_fires & (rng.random(parent_fires.shape) < cfg.child_prob)
            which = rng.integers(0, cfg.children_per_parent, size=parent_fires.shape)
            c_row, c_parent = np.nonzero(child_on)
            c_feat = self.children[c_parent, which[c_row, c_parent]]
            row, feat = np.concatenate([row, c_row]), np.concatenate([feat, c_feat])
        order = np.lexsort((feat, row))
        row, feat = row[order], feat[order]
        value = rng.uniform(cfg.magnitude_low, cfg.magnitude_high, size=len(row))
        return row, feat, value, rows

    def block_acts(self, block: int) -> np.ndarray:
        """x [rows, d_in] float32 of block `block`."""
        row, feat, value, rows = self.feature_acts(block)
        from scipy.sparse import csr_matrix

        # Sparse product: a row has ~L0 entries, far cheaper than a dense [rows, features] one.
        x = csr_matrix((value, (row, feat)), shape=(rows, self.cfg.n_features)) @ self.dictionary
        if self.cfg.noise_std:
            noise_rng = np.random.default_rng([self.cfg.seed, 2, block])
            x += self.cfg.noise_std * noise_rng.standard_normal(x.shape)
        return x.astype(np.float32)


def settings_of(source: SourceConfig) -> SyntheticConfig:
    assert isinstance(source.backbone, SyntheticConfig)
    return source.backbone


def model_of(source: SourceConfig) -> SyntheticModel:
    return SyntheticModel(settings_of(source))


def true_fires(model: SyntheticModel, example_id: np.ndarray,
               features: np.ndarray) -> tuple[np.ndarray, int]:
    """(bool [rows, len(features)]: whether each true feature in `features` fires on each row,
    the number of true firing entries of all features on these rows); rows are named by their
    example_id (the stream row index) and regenerated block by block."""
    entries = 0
    unique, inverse = np.unique(features, return_inverse=True)  # latents may share a feature
    out = np.zeros((len(example_id), len(unique)), dtype=bool)
    blocks = example_id // model.cfg.block_rows
    column = np.full(model.cfg.n_features, -1)
    column[unique] = np.arange(len(unique))
    for block in np.unique(blocks):
        at = np.nonzero(blocks == block)[0]
        row, feat, _, rows = model.feature_acts(int(block))
        local = np.full(rows, -1)
        local[example_id[at] - block * model.cfg.block_rows] = at
        ours = local[row] >= 0
        entries += int(ours.sum())
        keep = ours & (column[feat] >= 0)
        out[local[row[keep]], column[feat[keep]]] = True
    return out[:, inverse], entries
