"""Sweep expansion: the `sweep` grids become one SAEConfig per SAE and hook of every stream."""

from __future__ import annotations

import itertools
from typing import Any

from thresher.config.schema import SWEEP_TYPES, Config, SAEConfig


def fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_sweep(cfg: Config, hooks: dict[str, tuple[str, ...]] | None = None
                 ) -> list[SAEConfig]:
    """One SAEConfig per point of every grid, for every stream and hook the grid applies to.

    Order: streams, then hooks, then grids. `hooks` gives each stream's hooks where they are
    not in the config (a stored source taking its cache's); ids are unique and filesystem-safe,
    and name the stream / the hook where the run has more than one.
    """
    t = cfg.train
    base = {"arch": t.arch, "d_sae": t.d_sae, "k": t.k, "l1": t.l1, "lr": t.lr,
            "seed": t.sae_seed, "l0": t.l0, "mono_coef": t.mono_coef}
    grids = cfg.sweep or ({},)
    saes: list[SAEConfig] = []
    for source in cfg.sources:
        stream_hooks = (hooks or {}).get(source.name, source.hooks)
        for hook in stream_hooks:
            for grid in grids:
                if not _grid_applies(grid, source.name, hook):
                    continue
                axes = [(key, value if isinstance(value, list) else [value])
                        for key, value in grid.items() if key not in ("stream", "hook")]
                for point in itertools.product(*(values for _, values in axes)):
                    chosen = dict(zip((key for key, _ in axes), point, strict=True))
                    params = {**base, **{k: SWEEP_TYPES[k](v) if SWEEP_TYPES[k] in (int, float)
                                         else v for k, v in chosen.items()}}
                    label = "-".join(f"{k}{'_' if k[-1].isdigit() else ''}{fmt(v)}"
                                     for k, v in chosen.items() if k != "arch")
                    parts = [f"{len(saes):02d}"]
                    if len(cfg.sources) > 1:
                        parts.append(source.name)
                    if len(stream_hooks) > 1:
                        parts.append(hook)
                    parts += [params["arch"]] + ([label] if label else [])
                    saes.append(SAEConfig(sae_id="-".join(parts), stream_id=source.name,
                                          hook=hook, **params))
    return saes


def _grid_applies(grid: dict[str, Any], stream: str, hook: str) -> bool:
    for key, here in (("stream", stream), ("hook", hook)):
        if key in grid:
            wanted = grid[key] if isinstance(grid[key], list) else [grid[key]]
            if here not in wanted:
                return False
    return True


# Matmul-equivalents (rows x d_in x d_sae multiply-adds) of one training step, per arch: the
