"""The declaration types of an SAE architecture's torch-free half: `ArchSpec` and `SweepKey`.

An architecture `<name>` is two modules: thresher/config/archs/<name>.py declares its `SPEC`
(an `ArchSpec`: its settings, the sweep keys it reads and its step cost; config reads it, so it
imports no torch) and thresher/train/archs/<name>.py holds its `Architecture` subclass (training
rule, inference rule and export). Both are found by their module name; nothing lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

Problems = list[tuple[str, str]]  # (field, what is wrong with it)


@dataclass(frozen=True)
class SweepKey:
    """A hyperparameter each SAE of a sweep has its own value of (the grid's, else
    train.<name>): its type, default and check, and how the plan and summary.parquet show it."""

    name: str
    type: type[int] | type[float] | type[str]
    default: Any
    minimum: Literal["positive", "non-negative"] | None = None
    in_plan: Literal["always", "when_set"] = "always"  # when_set: only where not 0
    column_type: str = "float64"  # its summary.parquet column (a pyarrow type's name)
    # Another sweep key this one's value must stay below (k of d_sae), checked per SAE.
    below: str | None = None


class ArchSettings(Protocol):
    """An architecture's own settings: a frozen dataclass written under train.<arch>."""

    def problems(self) -> Problems:
        """(field, what is wrong) for each value out of range; the loader adds file:line."""
        ...


@dataclass(frozen=True)
class ArchSpec:
    """What config knows of one architecture."""

    name: str  # the config's `arch`; also the name of its two modules
    settings: type[ArchSettings]  # a frozen dataclass, written under train.<name>
    # The sweep keys only this family of architectures reads (k, l1_coef, ...), beside the
    # ones every SAE has (thresher.config.saes.SHARED_KEYS). An SAE carries these alone.
    sweep_keys: tuple[SweepKey, ...]
    # Matmul-equivalents (rows x d_in x d_sae multiply-adds) of one training step per unit of
    # width, for packing SAEs onto trainers by cost.
    step_cost: float
