"""What the actors of a run ask for: harvesters and their CPUs / GPUs, torch threads per role."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

from thresher.config.schema import Config, SourceConfig


@dataclass(frozen=True)
class HarvestResources:
    """What one stream's harvest asks Ray for."""

    harvesters: int
    cpus_per_harvester: float
    gpus_per_harvester: float


def harvest_resources(cfg: Config, source: SourceConfig) -> HarvestResources:
    """The source's own harvester settings, each falling back to the `resources` section."""
    res = cfg.resources

    def pick(own: float | None, default: float) -> float:
        return default if own is None else own

    return HarvestResources(
        harvesters=int(pick(source.harvesters, res.harvesters)),
        cpus_per_harvester=pick(source.cpus_per_harvester, res.cpus_per_harvester),
        gpus_per_harvester=pick(source.gpus_per_harvester, res.gpus_per_harvester))


def torch_threads(cfg: Config, role: Literal["harvester", "trainer"],
                  source: SourceConfig | None = None) -> int:
    """Threads for torch in a role: the config's, else the role's whole CPUs, else an even split
    of this machine's cores. A harvester of `source` counts that source's own CPUs."""
    res = cfg.resources
    explicit = res.harvester_threads if role == "harvester" else res.trainer_threads
    if explicit:
        return explicit
    if role == "harvester":
        harvest = (harvest_resources(cfg, source) if source is not None else
                   HarvestResources(res.harvesters, res.cpus_per_harvester,
                                    res.gpus_per_harvester))
        cpus, harvesters = harvest.cpus_per_harvester, harvest.harvesters
    else:
        cpus, harvesters = res.cpus_per_trainer, res.harvesters
    if cpus >= 1:
        return math.floor(cpus)
    return max(1, (os.cpu_count() or 1) // (harvesters + res.trainers))
