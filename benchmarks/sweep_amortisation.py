"""Sweep amortisation: the default stream with 1 TopK SAE, then with 8 (one harvest each).

    .venv/bin/python benchmarks/sweep_amortisation.py [--inline]

Target: the 8-SAE run takes at most 2x the wall time of the 1-SAE run (eight separate
runs would take about 8x). SAEs: d_sae 1536, k 32 / 64, four learning rates.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import thresher
from thresher.config import load_config


def run(sweep: list[dict], trainers: int, inline: bool, name: str) -> tuple[float, dict]:
    cfg = load_config(None).to_dict()
    cfg["run"].update(out="runs/bench", name=name)
    cfg["sweep"] = sweep
    cfg["resources"]["trainers"] = trainers
    start = time.perf_counter()
    run_dir = thresher.run(cfg, inline=inline, progress=False, overwrite=True)
    return time.perf_counter() - start, json.loads((run_dir / "run.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inline", action="store_true")
    parser.add_argument("--trainers", type=int, default=2)
    args = parser.parse_args()
    import ray

    if not args.inline:  # start Ray once, outside both timings
        ray.init(include_dashboard=False, log_to_driver=False)
    one, rec1 = run([{"arch": "topk", "k": 32, "lr": 1e-3}], 1, args.inline, "sweep-1")
    eight, rec8 = run([{"arch": "topk", "k": [32, 64], "lr": [3e-4, 1e-3, 2e-3, 4e-3]}],
                      args.trainers, args.inline, "sweep-8")
    print(f"machine: {os.cpu_count()} CPUs; executor {'inline' if args.inline else 'ray'}")
    print(f"1 SAE : {one:6.1f} s  (harvest {rec1['timings']['harvest']:.1f} s, "
          f"forward calls {rec1['harvest']['forward_calls']})")
    print(f"8 SAEs: {eight:6.1f} s  (harvest {rec8['timings']['harvest']:.1f} s, "
          f"forward calls {rec8['harvest']['forward_calls']}, {args.trainers} trainers)")
    print(f"ratio 8/1: {eight / one:.2f}x   (target <= 2x; 8 separate runs: ~8x)")


if __name__ == "__main__":
    main()
