"""The `backbone.config` schema of a `synthetic` source: the known dictionary's settings.

Here rather than with the source's code so that checking a config never imports a stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thresher.config.build import Where, build
from thresher.config.schema import BackboneConfig, ConfigError

HOOK = "synthetic"  # the one hook a synthetic source has


@dataclass(frozen=True)
class SyntheticConfig:
    """`source.backbone.config` of a `synthetic` source (every key optional)."""

    n_features: int = 1024
    d_in: int = 128
    mean_l0: float = 8.0  # expected firing features per row outside the hierarchy
    zipf_exponent: float = 0.5
    magnitude_low: float = 0.5
    magnitude_high: float = 1.5
    n_parents: int = 0  # 0: no hierarchy
    children_per_parent: int = 2
    child_prob: float = 0.5  # P(one child fires | its parent fires)
    correlation_rank: int = 0  # 0: independent firing
    correlation_strength: float = 0.0  # s in [0, 1): share of z's variance that is shared
    noise_std: float = 0.0  # isotropic Gaussian noise added to each row
    rows: int = 1 << 22  # rows in the stream; blocks are made only as the harvest asks
    block_rows: int = 4096
    seed: int = 0  # the dictionary and every block (independent of run.seed)


def synthetic_config(backbone: BackboneConfig, path: tuple = ("source", "backbone", "config"),
                     where: Any = None) -> SyntheticConfig:
    """The typed config of a synthetic backbone; ConfigError naming a bad key or value
    (`where`: config.py's record of the YAML lines, for file:line in the message)."""
    where = where if where is not None else Where(None, {})
    cfg = build(SyntheticConfig, backbone.config or {}, path, where)
    check_synthetic(cfg, where.at(path))
    return cfg


def check_synthetic(cfg: SyntheticConfig, where: str = "`source.backbone.config`") -> None:
    for name in ("n_features", "d_in", "rows", "block_rows", "children_per_parent"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{where}: {name} must be positive, got {getattr(cfg, name)!r}")
    if cfg.mean_l0 <= 0 or cfg.magnitude_low < 0 or cfg.magnitude_high < cfg.magnitude_low:
        raise ConfigError(f"{where}: need mean_l0 > 0 and 0 <= magnitude_low <= magnitude_high, "
                          f"got {cfg.mean_l0}, {cfg.magnitude_low}, {cfg.magnitude_high}")
    if cfg.n_parents < 0 or cfg.n_parents * (1 + cfg.children_per_parent) > cfg.n_features:
        raise ConfigError(f"{where}: n_parents is {cfg.n_parents}: parents and their "
                          f"{cfg.children_per_parent} children each must fit in n_features "
                          f"({cfg.n_features}); lower n_parents or raise n_features")
    if not 0 <= cfg.child_prob <= 1 or not 0 <= cfg.correlation_strength < 1:
        raise ConfigError(f"{where}: child_prob must be in [0, 1] and correlation_strength in "
                          f"[0, 1), got {cfg.child_prob}, {cfg.correlation_strength}")
    if cfg.correlation_rank < 0 or cfg.noise_std < 0:
        raise ConfigError(f"{where}: correlation_rank and noise_std must be >= 0")


def describe_synthetic(cfg: SyntheticConfig) -> str:
    """The plan's line for a synthetic source: what its rows are made of."""
    hierarchy = (f", hierarchy {cfg.n_parents} parents x {cfg.children_per_parent} children"
                 if cfg.n_parents else "")
    correlated = f", correlations of rank {cfg.correlation_rank}" if cfg.correlation_rank else ""
    return (f"synthetic: {cfg.rows} rows of {cfg.d_in} dims from {cfg.n_features} known "
            f"features (mean L0 {cfg.mean_l0:g}, Zipf exponent {cfg.zipf_exponent:g}"
            f"{hierarchy}{correlated}), seed {cfg.seed}, blocks of {cfg.block_rows} rows")
