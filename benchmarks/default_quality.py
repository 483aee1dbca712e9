"""Does the built-in default learn real structure? SAEs vs PCA on the same held-out rows.

    .venv/bin/python benchmarks/default_quality.py [RUN_DIR]

Without RUN_DIR it runs the default (`thresher run`) first. It then re-harvests the run's stream
with the same plain classes (collect_stream) to fit, on the very training rows the SAEs saw, a
PCA with as many components as each TopK SAE's k, and compares held-out fractions of variance
explained. Pass criteria (issue 2): every TopK SAE beats its PCA, and every SAE is above 0.5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

import thresher
from thresher.analysis.baselines import pca_fve
from thresher.config import load_config
from thresher.harvest.collect import collect_stream


def main() -> int:
    run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else thresher.run(None, progress=False)
    config = json.loads((run_dir / "run.json").read_text())["config"]
    config.pop("source_file", None)
    cfg = load_config(config)
    heldout, train = collect_stream(cfg)
    summary = pq.read_table(run_dir / "stats" / "summary.parquet").to_pylist()
    ok = True
    print(f"{len(train)} training rows, {len(heldout)} held-out rows, d_in {heldout.d}")
    print(f"{'sae_id':<24} {'fve':>6} {'l0':>7}  {'pca fve (k comps)':>18}  verdict")
    for row in summary:
        baseline = ""
        passed = row["fve"] > 0.5
        if row["arch"] == "topk":
            hook = row["hook"]
            pca = pca_fve(train.select(hook).float32(), heldout.select(hook).float32(), row["k"])
            baseline = f"{pca:.3f} ({row['k']})"
            passed &= row["fve"] > pca
        ok &= passed
        print(f"{row['sae_id']:<24} {row['fve']:6.3f} {row['l0']:7.1f}  {baseline:>18}  "
              f"{'ok' if passed else 'FAIL'}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
