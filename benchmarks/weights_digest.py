"""The SHA-256 of every exported SAE of a small, fixed inline run: every architecture (and
MonoLoss) on the synthetic source, one harvest. A refactor that must not change training prints
the same digests before and after.

    .venv/bin/python benchmarks/weights_digest.py [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

from safetensors.numpy import load_file

import thresher

CONFIG = {
    "run": {"name": "digest", "seed": 0},
    "source": {
        "backbone": {"kind": "synthetic", "n_features": 96, "d_in": 32, "mean_l0": 4,
                     "seed": 0},
        "hook": "synthetic",
    },
    "stream": {"chunk_rows": 1024, "capacity_chunks": 8, "mix_chunks": 2,
               "holdout_rows": 1024, "norm_rows": 1024},
    "train": {"batch_size": 256, "rows": 8192, "checkpoint_every": 8, "curve_every": 8,
              "d_sae": 64, "k": 4, "lr": 2e-3},
    "sweep": [{"arch": ["topk", "batchtopk", "matryoshka", "relu", "jumprelu"]},
              {"arch": "topk", "mono_coef": 0.1}],
    "resources": {"harvesters": 1, "trainers": 1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="where the run goes (default: a temp dir)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="thresher-digest-")
    config = {**CONFIG, "run": {**CONFIG["run"], "out": out}}
    run_dir = Path(thresher.run(config, inline=True, progress=False, overwrite=True))
    total = hashlib.sha256()
    for weights in sorted((run_dir / "saes").glob("*/sae_weights.safetensors")):
        tensors = load_file(weights)  # the tensors alone: the file's metadata may change
        sha = hashlib.sha256()
        for name in sorted(tensors):
            sha.update(name.encode())
            sha.update(tensors[name].tobytes())
        digest = sha.hexdigest()
        total.update(digest.encode())
        print(f"{weights.parent.name:24s} {digest[:16]}")
    print(f"{'all':24s} {total.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
