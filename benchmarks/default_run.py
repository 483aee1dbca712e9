"""Wall time of the built-in default run, and its split into harvest / train / write.

    .venv/bin/python benchmarks/default_run.py [--inline] [--out DIR]

Target: under 5 minutes on 2 cores. Harvest and training overlap under Ray, so the
split shows where each role spent its time, not a partition of the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import thresher
from thresher.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inline", action="store_true")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    cfg = load_config(None).to_dict()
    cfg["run"]["out"] = args.out
    start = time.perf_counter()
    run_dir = thresher.run(cfg, inline=args.inline, progress=False, overwrite=True)
    wall = time.perf_counter() - start
    record = json.loads((run_dir / "run.json").read_text())
    t = record["timings"]
    print(f"machine: {os.cpu_count()} CPUs; executor {'inline' if args.inline else 'ray'}")
    print(f"default run wall time (incl. Ray start): {wall:.1f} s   (target < 300 s)")
    print(f"  run itself: {t['wall']:.1f} s; harvest {t['harvest']:.1f} s "
          f"({record['harvest']['rows']} rows, {record['harvest']['forward_calls']} forwards); "
          f"slowest trainer stepping {t['train_steps']:.1f} s; "
          f"writing stats {t['write_stats']:.2f} s")
    for trainer, info in record["trainers"].items():
        print(f"  trainer {trainer}: {info['batches']} batches, {info['seconds']:.1f} s, "
              f"example-id entropy {info['example_id_entropy_bits_mean']:.2f} bits/batch "
              f"(max {info['example_id_entropy_bits_max_possible']:.2f})")


if __name__ == "__main__":
    main()
