"""The architectures config knows: one module per architecture in this package, each declaring
`SPEC`, an `ArchSpec` named like its module (thresher/config/arch_spec.py). They are found by
listing this package, so adding an architecture adds a module here and its training module
thresher/train/archs/<name>.py, and touches no list.
"""

from __future__ import annotations

import importlib
import pkgutil

from thresher.config.arch_spec import ArchSpec, SweepKey


def _discover() -> tuple[ArchSpec, ...]:
    """Every module's SPEC, in module-name order; a SPEC named unlike its module is a bug."""
    specs = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        spec = importlib.import_module(f"{__name__}.{info.name}").SPEC
        if not isinstance(spec, ArchSpec) or spec.name != info.name:
            raise TypeError(f"{__name__}.{info.name}.SPEC must be an ArchSpec named "
                            f"{info.name!r}")
        specs.append(spec)
    return tuple(specs)


def _arch_keys(specs: tuple[ArchSpec, ...]) -> dict[str, SweepKey]:
    """Every architecture's sweep keys, once each; archs sharing a key share its declaration."""
    keys: dict[str, SweepKey] = {}
    for spec in specs:
        for key in spec.sweep_keys:
            if keys.setdefault(key.name, key) != key:
                raise TypeError(f"sweep key {key.name!r} is declared twice, differently "
                                f"({spec.name}); import the one declaration")
    return keys


ARCH_SPECS = _discover()
ARCH_SPEC = {spec.name: spec for spec in ARCH_SPECS}
ARCHITECTURES = tuple(ARCH_SPEC)
# The sweep keys of some architectures (k, l1_coef, ...), in the order of ARCH_SPECS.
ARCH_KEYS = _arch_keys(ARCH_SPECS)
