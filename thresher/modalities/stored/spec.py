"""The stored modality's YAML words: the `stored` kind, which replays an activation store
(torch-free: config reads it, thresher/config/kinds.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from thresher.config.errors import ConfigError
from thresher.config.kinds import BackboneConfig, ModalitySpec

if TYPE_CHECKING:
    from thresher.config.build import Where


@dataclass(frozen=True)
class StoredConfig(BackboneConfig):
    """`model`: the store's path (an LMDB folder written by `thresher harvest`, a folder of .npy
    shards, or a shard store's URI); relative paths are read from the config's folder. Hooks:
    those the store holds (empty replays them all)."""

    kind: str = field(default="stored", init=False)
    implementation: ClassVar[str] = "thresher.modalities.stored.source:Stored"
    replays_store: ClassVar[bool] = True
    model: str = ""

    def check(self, hooks: tuple[str, ...], path: tuple, where: Where) -> None:
        if not self.model:
            raise ConfigError(f"{where.at((*path, 'backbone', 'model'))} is empty: a stored "
                              "source needs the path of a store written by `thresher harvest` "
                              "(or a folder of .npy shards)")

    @property
    def model_label(self) -> str:
        return self.model


MODALITY = ModalitySpec("stored", (StoredConfig,))
