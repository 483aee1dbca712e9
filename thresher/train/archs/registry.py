"""The one place that maps an `arch` name to its Architecture class.

A new architecture is a new module beside these, a class with `name` set, and a line here (and
its name in the config's declaration of architectures).
"""

from __future__ import annotations

from thresher.train.archs.base import Architecture
from thresher.train.archs.batchtopk import BatchTopK
from thresher.train.archs.jumprelu import JumpReLU
from thresher.train.archs.matryoshka import Matryoshka
from thresher.train.archs.relu import ReLU
from thresher.train.archs.topk import TopK

ARCHITECTURE_CLASSES: dict[str, type[Architecture]] = {
    cls.name: cls for cls in (TopK, ReLU, BatchTopK, JumpReLU, Matryoshka)}


def architecture_class(name: str) -> type[Architecture]:
    try:
        return ARCHITECTURE_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r}; known: "
                         f"{', '.join(ARCHITECTURE_CLASSES)}") from None
