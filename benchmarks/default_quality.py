"""Does the built-in default learn real structure? SAEs vs PCA on the same held-out rows.

    .venv/bin/python benchmarks/default_quality.py [RUN_DIR]

Without RUN_DIR it runs the default (`thresher run`) first. It then re-harvests the run's stream
with the same plain classes (collect_stream) to fit, on the very training rows the SAEs saw, a
PCA with as many components as each TopK SAE's k, and compares held-out fractions of variance
explained. Pass criteria: every SAE is above 0.5, beats a PCA with k
components (TopK's k, or the SAE's L0), has L0 <= 64 and under 5% of its latents firing on more
than 10% of held-out rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import thresher
from tests.oracles import pca_fve
from thresher.harvest.collect import collect_stream
from thresher.rundir import load_run_config


def main() -> int:
    run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else thresher.run(None, progress=False)
    _, cfg = load_run_config(run_dir)  # inputs resolved as the run resolved them
    heldout, train = collect_stream(cfg)
    summary = pq.read_table(run_dir / "stats" / "summary.parquet").to_pylist()
    ok = True
    print(f"{len(train)} training rows, {len(heldout)} held-out rows, d_in {heldout.d}")
    print(f"{'sae_id':<24} {'fve':>6} {'l0':>7} {'dense':>6}  {'pca fve (k comps)':>18}  "
          "verdict")
    for row in summary:
        # k: TopK's k, or for another architecture its held-out L0 (rounded).
        k = int(row["k"]) if row["arch"] == "topk" else max(1, round(row["l0"]))
        hook = row["hook"]
        pca = pca_fve(train.select(hook).float32(), heldout.select(hook).float32(), k)
        dense = row["dense_fraction_10pct"]
        passed = row["fve"] > 0.5 and row["fve"] > pca and row["l0"] <= 64 and dense < 0.05
        ok &= passed
        print(f"{row['sae_id']:<24} {row['fve']:6.3f} {row['l0']:7.1f} {dense:6.1%}  "
              f"{f'{pca:.3f} ({k})':>18}  {'ok' if passed else 'FAIL'}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
