"""SAE training throughput: thresher's bank (sparse TopK decode, BankAdam) against a plain
reference (dense decode, torch.optim.Adam, one SAE at a time), in the same run.

    .venv/bin/python benchmarks/sae_throughput.py [--threads 2] [--steps 6] [--repeats 3]
    .venv/bin/python benchmarks/sae_throughput.py --device cuda --bf16   # d_in 768, d_sae 24576

CPU targets: d_in 512, d_sae 4096, k 32, batch 2048 --
  one SAE:      thresher >= 2x the reference's samples/s;
  bank of 8:    (different lr and k) >= 1.5x the throughput of the reference run for the 8 SAEs
                one after another.
GPU (--device cuda --bf16, d_in 768, d_sae 24576, k 32): tokens/s and the fraction of the GPU's
bf16 matmul peak the SAE's useful FLOPs represent (target >= 40%). The peak is measured here by a
large bf16 matmul, not taken from a datasheet.
Random Gaussian activations: throughput does not depend on what the SAE learns.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from thresher.config import SAEConfig, TrainConfig
from thresher.stream.stats import StreamStats
from thresher.train.bank import SAEBank


def reference_step_fn(d_in: int, d_sae: int, k: int, lr: float, device: str,
                      seed: int) -> Callable[[torch.Tensor], None]:
    """A plain TopK SAE step: dense decode, autograd, torch.optim.Adam, unit-norm decoder."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    params = [torch.nn.Parameter(w_dec.T.contiguous().to(device)),
              torch.nn.Parameter(torch.zeros(d_sae, device=device)),
              torch.nn.Parameter(w_dec.to(device)),
              torch.nn.Parameter(torch.zeros(d_in, device=device))]
    w_enc, b_enc, w_dec_p, b_dec = params
    adam = torch.optim.Adam(params, lr=lr)

    def step(x: torch.Tensor) -> None:
        pre = (x - b_dec) @ w_enc + b_enc
        values, indices = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, indices, values.relu())
        loss = ((f @ w_dec_p + b_dec - x) ** 2).sum(-1).mean()
        adam.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            unit = w_dec_p / w_dec_p.norm(dim=1, keepdim=True)
            assert w_dec_p.grad is not None
            w_dec_p.grad -= (w_dec_p.grad * unit).sum(1, keepdim=True) * unit
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        adam.step()
        with torch.no_grad():
            w_dec_p.div_(w_dec_p.norm(dim=1, keepdim=True))

    return step


def timed(step: Callable[[torch.Tensor], object], batches: list[torch.Tensor], device: str,
          warmup: int = 2) -> float:
    """Seconds per step, after `warmup` untimed steps."""
    return timed_both(step, batches, device, warmup)[0]


def timed_both(step: Callable[[torch.Tensor], object], batches: list[torch.Tensor], device: str,
               warmup: int = 2) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per step, after `warmup` untimed steps. CPU time
    counts every thread of this process, so on a shared machine it is the steadier figure."""
    for x in batches[:warmup]:
        step(x)
    if device == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    for x in batches[warmup:]:
        step(x)
    if device == "cuda":
        torch.cuda.synchronize()
    steps = len(batches) - warmup
    return (time.perf_counter() - start) / steps, (time.process_time() - start_cpu) / steps


def bank_of(saes: list[SAEConfig], d_in: int, steps: int, device: str,
            bf16: bool = False) -> SAEBank:
    stats = StreamStats(d_in=d_in, scale=1.0, center=np.zeros(d_in, dtype=np.float32), rows=0)
    train = TrainConfig(warmup_steps=1, bf16=bf16, dead_window=10**9)
    return SAEBank(saes, stats, train, steps + 10, device=device)


def load_note() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"
    except OSError:
        return "load average unavailable"


def best_and_median(values: list[float]) -> tuple[float, float]:
    return min(values), float(np.median(values))


def cpu_benchmark(args: argparse.Namespace) -> None:
    d_in, d_sae, k, batch = 512, 4096, 32, 2048
    device = "cpu"
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(batch, d_in, generator=g) for _ in range(args.steps + 2)]
    print(f"CPU, torch threads {torch.get_num_threads()}, {args.steps} timed steps, "
          f"{args.repeats} rounds (thresher and reference alternate; best and median of the "
          f"rounds); before: {load_note()}")

    steps_run = len(batches) * args.repeats
    one = SAEConfig(sae_id="one", arch="topk", d_sae=d_sae, arch_keys={"k": k}, lr=1e-3)
    single = bank_of([one], d_in, steps_run, device)
    reference = reference_step_fn(d_in, d_sae, k, 1e-3, device, 0)
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(timed_both(single.step, batches, device))
        theirs.append(timed_both(reference, batches, device))
    (t_single, t_single_med), (t_ref, t_ref_med) = (best_and_median([w for w, _ in runs])
                                                    for runs in (ours, theirs))
    c_single, c_ref = (min(c for _, c in runs) for runs in (ours, theirs))
    print(f"one TopK SAE (d_in {d_in}, d_sae {d_sae}, k {k}, batch {batch}):")
    print(f"  thresher   {batch / t_single:8.0f} samples/s best, {batch / t_single_med:8.0f} "
          f"median  ({t_single * 1e3:.0f} ms/step; CPU {c_single * 1e3:.0f} ms/step)")
    print(f"  reference  {batch / t_ref:8.0f} samples/s best, {batch / t_ref_med:8.0f} "
          f"median  ({t_ref * 1e3:.0f} ms/step; CPU {c_ref * 1e3:.0f} ms/step)")
    print(f"  speed-up   {t_ref / t_single:.2f}x best/best, {t_ref_med / t_single_med:.2f}x "
          f"median/median, {c_ref / c_single:.2f}x in CPU time   (target >= 2x)")

    lrs = [3e-4, 1e-3, 2e-3, 4e-3] * 2
    ks = [32] * 4 + [64] * 4
    saes = [SAEConfig(sae_id=f"s{i}", arch="topk", d_sae=d_sae, arch_keys={"k": kk}, lr=lr,
                      seed=i)
            for i, (lr, kk) in enumerate(zip(lrs, ks, strict=True))]
    bank = bank_of(saes, d_in, steps_run, device)
    references = [reference_step_fn(d_in, d_sae, kk, lr, device, i)
                  for i, (lr, kk) in enumerate(zip(lrs, ks, strict=True))]
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(timed_both(bank.step, batches, device))
        # the 8 reference SAEs one after another: one round's time is the sum of theirs
        per_sae = [timed_both(step, batches, device) for step in references]
        theirs.append((sum(w for w, _ in per_sae), sum(c for _, c in per_sae)))
    (t_bank, t_bank_med), (t_seq, t_seq_med) = (best_and_median([w for w, _ in runs])
                                                for runs in (ours, theirs))
    c_bank, c_seq = (min(c for _, c in runs) for runs in (ours, theirs))
    print("bank of 8 TopK SAEs (lr 3e-4..4e-3, k 32 and 64):")
    print(f"  thresher bank        {batch / t_bank:8.0f} samples/s best, {batch / t_bank_med:8.0f}"
          f" median, for all 8  ({t_bank * 1e3:.0f} ms/step; CPU {c_bank * 1e3:.0f} ms/step)")
    print(f"  reference, 8 in turn {batch / t_seq:8.0f} samples/s best, {batch / t_seq_med:8.0f}"
          f" median, for all 8  ({t_seq * 1e3:.0f} ms per step of each; CPU "
          f"{c_seq * 1e3:.0f} ms)")
    print(f"  speed-up             {t_seq / t_bank:.2f}x best/best, {t_seq_med / t_bank_med:.2f}x "
          f"median/median, {c_seq / c_bank:.2f}x in CPU time   (target >= 1.5x)")
    print(f"after: {load_note()}")


def matmul_peak_flops(device: str, dtype: torch.dtype, n: int = 8192) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    reps = 20
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def gpu_benchmark(args: argparse.Namespace) -> None:
    d_in, d_sae, k, batch = 768, 24576, 32, args.batch or 8192
    device = "cuda"
    batches = [torch.randn(batch, d_in, device=device) for _ in range(args.steps + 2)]
    one = SAEConfig(sae_id="one", arch="topk", d_sae=d_sae, arch_keys={"k": k}, lr=1e-3)
    bank = bank_of([one], d_in, args.steps, device, bf16=args.bf16)
    t_step = timed(bank.step, batches, device)
    tokens = batch / t_step
    # Useful work of a sparse-decode TopK step: the encoder matmul forward (2 B d_in d_sae);
    # decode and the sparse backward are O(B k d_in), small beside it.
    useful = 2 * batch * d_in * d_sae
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak = matmul_peak_flops(device, dtype)
    print(f"GPU {torch.cuda.get_device_name()}, bf16 autocast {args.bf16}, batch {batch}")
    print(f"  {tokens:,.0f} tokens/s ({t_step * 1e3:.2f} ms/step)")
    print(f"  measured {dtype} matmul peak {peak / 1e12:.1f} TFLOP/s; encoder FLOPs/s "
          f"{useful / t_step / 1e12:.1f} TFLOP/s = {useful / t_step / peak:.0%} of peak "
          "(target >= 40%)")
    ref = timed(reference_step_fn(d_in, d_sae, k, 1e-3, device, 0), batches, device)
    print(f"  reference (dense, fp32, torch Adam): {batch / ref:,.0f} tokens/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="CPU: rounds per measurement")
    parser.add_argument("--batch", type=int, default=0, help="GPU batch (default 8192)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible to torch")
        gpu_benchmark(args)
    else:
        cpu_benchmark(args)


if __name__ == "__main__":
    main()
