"""An `arch` name to its Architecture class: the subclass named so in the module of that name,
thresher/train/archs/<arch>.py (its torch-free spec is thresher/config/archs/<arch>.py). No
list to extend: a new architecture is found by its name.
"""

from __future__ import annotations

import importlib

from thresher.config import ARCHITECTURES
from thresher.train.archs.base import Architecture


def architecture_class(name: str) -> type[Architecture]:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch {name!r}; known: {', '.join(ARCHITECTURES)}")
    module = importlib.import_module(f"{__package__}.{name}")
    found = [cls for cls in vars(module).values()
             if isinstance(cls, type) and issubclass(cls, Architecture)
             and cls.__module__ == module.__name__ and getattr(cls, "name", None) == name]
    if len(found) != 1:
        raise TypeError(f"{module.__name__} must define one Architecture subclass named "
                        f"{name!r}, found {len(found)}")
    return found[0]
