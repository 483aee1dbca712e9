"""The synthetic modality's YAML words: the `synthetic` kind, rows made from a known feature
dictionary, and its settings (torch-free: config reads it, thresher/config/kinds.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, ClassVar

from thresher.config.errors import ConfigError
from thresher.config.kinds import BackboneConfig, ModalitySpec, check_positive

if TYPE_CHECKING:
    from thresher.config.build import Where

HOOK = "synthetic"  # the one hook a synthetic source has


@dataclass(frozen=True)
class SyntheticConfig(BackboneConfig):
    """The known dictionary and how its features fire (thresher/modalities/synthetic/model.py);
    every key optional."""

    kind: str = field(default="synthetic", init=False)
    implementation: ClassVar[str] = "thresher.modalities.synthetic.source:Synthetic"
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

    def check(self, hooks: tuple[str, ...], path: tuple, where: Where) -> None:
        if hooks != (HOOK,):
            raise ConfigError(f"{where.at((*path, 'hook'))} is {list(hooks)}: a synthetic "
                              f"source has the one hook {HOOK!r}; set source.hook to it")
        self.check_values(where.at((*path, "backbone")))

    def check_values(self, where: str = "`source.backbone`") -> None:
        check_positive(self, ("n_features", "d_in", "rows", "block_rows",
                              "children_per_parent"), where)
        if (self.mean_l0 <= 0 or self.magnitude_low < 0
                or self.magnitude_high < self.magnitude_low):
            raise ConfigError(f"{where}: need mean_l0 > 0 and 0 <= magnitude_low <= "
                              f"magnitude_high, got {self.mean_l0}, {self.magnitude_low}, "
                              f"{self.magnitude_high}")
        if self.n_parents < 0 or self.n_parents * (1 + self.children_per_parent) > self.n_features:
            raise ConfigError(f"{where}: n_parents is {self.n_parents}: parents and their "
                              f"{self.children_per_parent} children each must fit in "
                              f"n_features ({self.n_features}); lower n_parents or raise "
                              "n_features")
        if not 0 <= self.child_prob <= 1 or not 0 <= self.correlation_strength < 1:
            raise ConfigError(f"{where}: child_prob must be in [0, 1] and correlation_strength "
                              f"in [0, 1), got {self.child_prob}, {self.correlation_strength}")
        if self.correlation_rank < 0 or self.noise_std < 0:
            raise ConfigError(f"{where}: correlation_rank and noise_std must be >= 0")

    def describe(self) -> str:
        hierarchy = (f", hierarchy {self.n_parents} parents x {self.children_per_parent} "
                     "children" if self.n_parents else "")
        correlated = (f", correlations of rank {self.correlation_rank}"
                      if self.correlation_rank else "")
        return (f"synthetic: {self.rows} rows of {self.d_in} dims from {self.n_features} known "
                f"features (mean L0 {self.mean_l0:g}, Zipf exponent {self.zipf_exponent:g}"
                f"{hierarchy}{correlated}), seed {self.seed}, blocks of {self.block_rows} rows")

    @property
    def model_label(self) -> str:
        """The generator and the settings it was given beyond the defaults (run.json holds
        them all)."""
        given = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.init and getattr(self, f.name) != f.default}
        return ("synthetic " + ", ".join(f"{k}={given[k]}" for k in sorted(given))).strip()


MODALITY = ModalitySpec("synthetic", (SyntheticConfig,))
