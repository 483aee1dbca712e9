"""Sweep expansion: the `sweep` grids become one SAEConfig per SAE and hook of every stream."""

from __future__ import annotations

import itertools
from typing import Any

from thresher.config.saes import SHARED_KEYS, TARGET_KEYS, SAEConfig, own_arch_keys, sweep_key_type
from thresher.config.schema import Config


def fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_sweep(cfg: Config, hooks: dict[str, tuple[str, ...]] | None = None
                 ) -> list[SAEConfig]:
    """One SAEConfig per point of every grid, for every stream and hook the grid applies to.

    Order: streams, then hooks, then grids. `hooks` gives each stream's hooks where they are
    not in the config (a stored source taking its cache's); ids are unique and filesystem-safe,
    and name the stream / the hook where the run has more than one. A grid key the SAE's
    architecture does not read (k of a relu SAE in a grid over arch) names it in the id but is
    not part of it.
    """
    base = cfg.train.sweep_defaults()  # train.<key>: each sweep key's default
    grids = cfg.sweep or ({},)
    saes: list[SAEConfig] = []
    for source in cfg.sources:
        stream_hooks = (hooks or {}).get(source.name, source.hooks)
        for hook in stream_hooks:
            for grid in grids:
                if not _grid_applies(grid, source.name, hook):
                    continue
                axes = [(key, value if isinstance(value, list) else [value])
                        for key, value in grid.items() if key not in TARGET_KEYS]
                for point in itertools.product(*(values for _, values in axes)):
                    chosen = dict(zip((key for key, _ in axes), point, strict=True))
                    params = {**base, **{k: sweep_key_type(k)(v)
                                         if sweep_key_type(k) in (int, float) else v
                                         for k, v in chosen.items()}}
                    label = "-".join(f"{k}{'_' if k[-1].isdigit() else ''}{fmt(v)}"
                                     for k, v in chosen.items() if k != "arch")
                    parts = [f"{len(saes):02d}"]
                    if len(cfg.sources) > 1:
                        parts.append(source.name)
                    if len(stream_hooks) > 1:
                        parts.append(hook)
                    parts += [params["arch"]] + ([label] if label else [])
                    shared = {key.name: params[key.name] for key in SHARED_KEYS}
                    saes.append(SAEConfig(sae_id="-".join(parts), stream_id=source.name,
                                          hook=hook, **shared,
                                          arch_keys=own_arch_keys(params["arch"], params)))
    return saes


def _grid_applies(grid: dict[str, Any], stream: str, hook: str) -> bool:
    for key, here in zip(TARGET_KEYS, (stream, hook), strict=True):
        if key in grid:
            wanted = grid[key] if isinstance(grid[key], list) else [grid[key]]
            if here not in wanted:
                return False
    return True

