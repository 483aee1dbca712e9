"""Architectures on ground truth: TopK, BatchTopK, Matryoshka and JumpReLU on one synthetic
stream with a hierarchy (4,096 true features in 256 dimensions, L0 about 20; d_sae 1,024), one
harvest, one SAE per trainer.

    .venv/bin/python benchmarks/synthetic_sweep.py [--rows N] [--jumprelu-l0 C] [--ray]

Prints per SAE: MCC, F1, uniqueness, explained variance (FVE on the held-out rows), L0, and the
wall time of its trainer; then each wall time as a ratio to TopK's, and the harvest's share.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pyarrow.parquet as pq

import thresher

SOURCE = {"backbone": {"kind": "synthetic",
    "n_features": 4096, "d_in": 256, "mean_l0": 18.0, "zipf_exponent": 0.5,
    "n_parents": 128, "children_per_parent": 4, "child_prob": 0.6,
    "block_rows": 4096, "seed": 0}, "hook": "synthetic"}


def config(rows: int, out: str, jumprelu_l0: float) -> dict:
    return {
        "run": {"name": "synthetic-sweep", "out": out, "seed": 0},
        "source": SOURCE,
        "stream": {"chunk_rows": 8192, "capacity_chunks": 16, "mix_chunks": 4,
                   "holdout_rows": 16384, "norm_rows": 8192},
        "train": {"batch_size": 1024, "rows": rows, "checkpoint_every": 100,
                  "warmup_steps": 20, "d_sae": 1024, "k": 20, "lr": 2e-3,
                  # As in tests/train/test_ground_truth.py: from the defaults' 0.001 the threshold
                  # barely moves in a few hundred steps and JumpReLU stays dense.
                  "jumprelu": {"init_threshold": 0.5, "bandwidth": 0.5}},
        "sweep": [{"arch": ["topk", "batchtopk", "matryoshka"]},
                  {"arch": "jumprelu", "l0_coef": jumprelu_l0}],
        "resources": {"harvesters": 1, "trainers": 4, "cpus_per_harvester": 1,
                      "cpus_per_trainer": 0},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1024 * 300, help="training rows per SAE")
    parser.add_argument("--ray", action="store_true", help="the Ray executor (default inline)")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--jumprelu-l0", type=float, default=5.0)
    args = parser.parse_args()
    start = time.perf_counter()
    run_dir = thresher.run(config(args.rows, args.out, args.jumprelu_l0),
                           inline=not args.ray, progress=False, overwrite=True)
    wall = time.perf_counter() - start
    record = json.loads((run_dir / "run.json").read_text())
    summary = pq.read_table(run_dir / "stats" / "summary.parquet").to_pandas()
    print(f"machine: {os.cpu_count()} CPUs, torch threads per role as configured; executor "
          f"{'ray' if args.ray else 'inline'}; {args.rows} training rows per SAE; "
          f"true L0 {summary['gt_l0'].iloc[0]:.1f}")
    print(f"{'sae':<20}{'MCC':>7}{'F1':>7}{'uniq':>7}{'FVE':>7}{'L0':>7}{'train s':>9}"
          f"{'x topk':>8}")
    base = float(summary.loc[summary["arch"] == "topk", "train_seconds"].iloc[0])
    for _, row in summary.sort_values("sae_id").iterrows():
        print(f"{row['sae_id']:<20}{row['gt_mcc']:7.3f}{row['gt_f1']:7.3f}"
              f"{row['gt_uniqueness']:7.3f}{row['fve']:7.3f}{row['l0']:7.1f}"
              f"{row['train_seconds']:9.1f}{row['train_seconds'] / base:8.2f}")
    harvest = record["timings"]["harvest"]
    print(f"wall {wall:.1f} s; harvest {harvest:.1f} s ({harvest / wall:.0%} of wall, one "
          f"harvest for {len(summary)} SAEs)")


if __name__ == "__main__":
    main()
