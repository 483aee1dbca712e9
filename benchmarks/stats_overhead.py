"""What streaming statistics accumulation adds to a training step (target: at most 10%).

    .venv/bin/python benchmarks/stats_overhead.py [--threads 2] [--steps 6] [--warm 16]

A bank of 8 TopK SAEs (d_in 512, d_sae 4096, batch 2048, k 32 and 64, lr 3e-4..4e-3), random
Gaussian batches, CPU. Per step, interleaved so that load from other processes hits every
variant alike:

  step      SAEBank.step(x): the training step itself, all 8 SAEs
  latents   SAEBank.encode_decode(x): a second, no-grad forward for latents and x_hat (needed
            as long as the bank's step does not hand out the latents it already computed)
  entries   torch.nonzero of those dense latents (a TopK step has them as indices/values)
  curves    SummaryStatistics.update for all 8 SAEs: firing counts, sums, sums of squares and
            extremes per feature, reconstruction sums (what training curves need)
  full      FeatureStatistics() (default options) .update_batch for all 8 SAEs: the above plus
            every registered per-feature statistic (the MonoScore sums among them), top-16
            examples per feature and the 64-row quantile sample (what the frozen-weights pass
            over held-out rows accumulates)

The per-feature tables only change while they fill, so `--warm` batches of latents go into the
`full` accumulators before timing: the figures are the steady state of a long run, not its
first batches (printed separately).

Figures are CPU seconds of this process (time.process_time, all threads), which other processes
on a shared machine disturb far less than wall time; wall seconds are printed too.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from thresher.analysis.feature_statistics import FeatureStatistics
from thresher.analysis.stats import Batch, Rows, StatsOptions, SummaryStatistics
from thresher.config import SAEConfig, TrainConfig
from thresher.stream.stats import StreamStats
from thresher.train.bank import SAEBank

D_IN, D_SAE = 512, 4096
Timings = dict[str, list[tuple[float, float]]]


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"


def bank_of_8(steps: int) -> SAEBank:
    lrs = [3e-4, 1e-3, 2e-3, 4e-3] * 2
    ks = [32] * 4 + [64] * 4
    saes = [SAEConfig(sae_id=f"s{i}", arch="topk", d_sae=D_SAE, arch_keys={"k": k}, lr=lr,
                      seed=i)
            for i, (lr, k) in enumerate(zip(lrs, ks, strict=True))]
    stats = StreamStats(d_in=D_IN, scale=1.0, center=np.zeros(D_IN, dtype=np.float32), rows=0)
    return SAEBank(saes, stats, TrainConfig(warmup_steps=1, dead_window=10**9), steps + 10)


def clock(fn: Callable[[], Any], times: Timings, name: str) -> Any:
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    times.setdefault(name, []).append((time.process_time() - cpu, time.perf_counter() - wall))
    return out


def entries_of(latents: list[tuple[torch.Tensor, torch.Tensor]]
               ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    out = []
    for f, x_hat in latents:
        rows, feats = torch.nonzero(f, as_tuple=True)
        out.append((x_hat, rows, feats, f[rows, feats]))
    return out


def accumulate(stats: list[SummaryStatistics] | list[FeatureStatistics], rows: Rows,
               entries: list[Any]) -> None:
    for s, (x_hat, r, c, v) in zip(stats, entries, strict=True):
        batch = Batch.of_entries(rows, x_hat, r, c, v)
        if isinstance(s, SummaryStatistics):
            s.update(batch)
        else:
            s.update_batch(batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up)")
    parser.add_argument("--warm", type=int, default=16,
                        help="batches of latents fed to the full accumulators before timing")
    parser.add_argument("--batch", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warmup = 2
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch, D_IN, generator=g) for _ in range(args.steps + warmup)]
    bank = bank_of_8(args.steps + warmup)
    print(f"bank of 8 TopK SAEs, d_in {D_IN}, d_sae {D_SAE}, batch {args.batch}, CPU, torch "
          f"threads {torch.get_num_threads()}; before: {load_note()}")

    curves = [SummaryStatistics(D_IN, D_SAE) for _ in bank.sae_ids]
    full = [FeatureStatistics(D_IN, D_SAE, StatsOptions()) for _ in bank.sae_ids]
    first: Timings = {}
    for i in range(args.warm):
        x = torch.randn(args.batch, D_IN, generator=g)
        rows = Rows.of(x, first_id=i * args.batch)
        clock(lambda x=x, rows=rows: accumulate(full, rows, entries_of(bank.encode_decode(x))),
              first if i < 2 else {}, "full")

    times: Timings = {}
    for i, x in enumerate(batches):
        sample = times if i >= warmup else {}
        clock(lambda x=x: bank.step(x), sample, "step")
        latents = clock(lambda x=x: bank.encode_decode(x), sample, "latents")
        entries = clock(lambda latents=latents: entries_of(latents), sample, "entries")
        rows = Rows.of(x, first_id=(args.warm + i) * args.batch)
        clock(lambda rows=rows, entries=entries: accumulate(curves, rows, entries), sample,
              "curves")
        clock(lambda rows=rows, entries=entries: accumulate(full, rows, entries), sample, "full")

    mean = {name: np.mean(np.array(v), axis=0) for name, v in times.items()}
    step_cpu = mean["step"][0]
    print(f"per step, mean of {args.steps}:   CPU s    wall s   CPU vs step")
    for name in ("step", "latents", "entries", "curves", "full"):
        cpu, wall = mean[name]
        print(f"  {name:<22}{cpu:8.3f}  {wall:8.3f}   {cpu / step_cpu:7.1%}")
    if first:
        cpu = np.mean(np.array(first["full"]), axis=0)[0]
        print(f"  (full, its first 2 batches, with their forward: {cpu:.3f} CPU s)")
    extra = mean["latents"][0] + mean["entries"][0]
    print("overhead on a training step, CPU time (target <= 10%):")
    for name in ("curves", "full"):
        cpu = mean[name][0]
        print(f"  {name:<6} from the step's own latents          {cpu / step_cpu:7.1%}")
        print(f"  {name:<6} with a second forward for the latents {(cpu + extra) / step_cpu:7.1%}")
        for every in (4, 16):
            print(f"  {name:<6}   the same on every {every:>2}th batch only   "
                  f"{(cpu + extra) / every / step_cpu:7.1%}")
    # What a run does (thresher.train.trainer): a second forward and the curve statistics on
    # the last train.curve_batches batches of every train.curve_every-step window.
    defaults = TrainConfig()
    share = defaults.curve_batches / defaults.curve_every
    print(f"  curves as a run takes them ({defaults.curve_batches} of every "
          f"{defaults.curve_every} batches)     "
          f"{(mean['curves'][0] + extra) * share / step_cpu:7.1%}")
    print(f"after: {load_note()}")


if __name__ == "__main__":
    main()
