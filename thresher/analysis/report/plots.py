"""The report's static plots (matplotlib, Agg): the Pareto front of FVE against L0, training
curves, and per-SAE histograms of feature density and MonoScore."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def pareto_front(summary: pd.DataFrame) -> pd.DataFrame:
    """The SAEs no other SAE beats on both counts (FVE at least as high with L0 at most as low,
    one of them strictly), ordered by L0: the ones worth reading first."""
    ordered = summary.sort_values(["l0", "fve"], ascending=[True, False])
    keep, best = [], -np.inf
    for index, row in ordered.iterrows():
        if row["fve"] > best:  # lower L0 came first: only a higher FVE earns a place
            keep.append(index)
            best = row["fve"]
    return ordered.loc[keep]


def pareto_plot(summary: pd.DataFrame, front: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch, group in summary.groupby("arch"):
        ax.scatter(group["l0"], group["fve"], label=arch, s=40)
        for _, row in group.iterrows():
            ax.annotate(row["sae_id"], (row["l0"], row["fve"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.plot(front["l0"], front["fve"], "k--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set(xlabel="L0 (active latents per row)", ylabel="fraction of variance explained")
    ax.legend()
    return save(fig, path)


def curves_plot(curves: pd.DataFrame, path: Path) -> Path:
    """FVE, L0 and dead fraction against training step, one line per SAE. FVE and L0 are the
    window's observed batches where there are some, else the bank's own training L0."""
    import matplotlib.pyplot as plt

    panels = (("fve", "FVE (observed batches)"), ("l0", "L0 (observed batches)"),
              ("train_loss", "training loss"), ("train_dead_fraction", "dead fraction"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (column, title) in zip(axes, panels, strict=True):
        for sae_id, group in curves.groupby("sae_id"):
            group = group.sort_values("step")
            values = group[column].to_numpy(dtype=np.float64)
            if column == "l0" and not np.isfinite(values).any():
                values = group["train_l0"].to_numpy(dtype=np.float64)
            if np.isfinite(values).any():
                ax.plot(group["step"], values, label=str(sae_id), lw=1.2)
        ax.set(title=title, xlabel="step")
        if column in ("l0", "train_loss"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    return save(fig, path)


def histograms(features: pd.DataFrame, summary: pd.DataFrame, column: str, path: Path,
               title: str) -> Path:
    import matplotlib.pyplot as plt

    ids = list(summary["sae_id"])
    cols = min(3, len(ids))
    rows = -(-len(ids) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, sid in zip(axes.flat, ids, strict=False):
        values = features.loc[features.sae_id == sid, column].to_numpy()
        finite = values[np.isfinite(values)]
        ax.hist(finite, bins=40)
        left_out = len(values) - len(finite)
        ax.set_title(f"{sid} ({left_out} left out)" if left_out else sid, fontsize=9)
    for ax in list(axes.flat)[len(ids):]:
        ax.axis("off")
    fig.suptitle(title)
    return save(fig, path)


def save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path
