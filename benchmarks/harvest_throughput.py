"""Harvest rows/s per backbone against the bare forward on the same batches (target >= 0.9x).

    .venv/bin/python benchmarks/harvest_throughput.py [--batches N] [--threads T] [--no-ray]

For each backbone the same input batches go through (a) the model's own forward call that
yields the hooked activations, outside thresher (`bare`), and (b) `Harvester.harvest` (rows cut,
metadata attached, numpy out). Images are decoded once beforehand, so both sides time the
model, not JPEG decoding. For MiniLM (the issue-2 default) the Ray Data path is timed too:
`map_batches(Harvester)` on a one-actor pool, steady state (from the first block on).
Backbones are random-weight (no download) except MiniLM; ratios do not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thresher.config import load_config
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import decode_batch, prepare_inputs


def _time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (allocator, kernels)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _bare_forward(harvester: Harvester) -> Callable[[dict[str, np.ndarray]], Any]:
    """The library's own call that yields the hooked activations, for one input batch."""
    kind = harvester.source.backbone.kind
    backbone: Any = harvester.backbone

    def hf_text(batch: dict[str, np.ndarray]) -> Any:
        lengths = torch.from_numpy(batch["lengths"].astype(np.int64))
        width = int(lengths.max())
        tokens = torch.from_numpy(batch["tokens"][:, :width].astype(np.int64))
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        with torch.inference_mode():
            return backbone.model(input_ids=tokens, attention_mask=mask)

    def open_clip(batch: dict[str, np.ndarray]) -> Any:
        layer = int(harvester.source.hook.split(".")[1])
        with torch.inference_mode():
            return backbone.visual.forward_intermediates(
                torch.from_numpy(batch["pixels"]), indices=[layer], stop_early=True,
                intermediates_only=True, output_fmt="NLC", output_extra_tokens=True)

    def patchtst(batch: dict[str, np.ndarray]) -> Any:
        with torch.inference_mode():
            return backbone.model(past_values=torch.from_numpy(batch["values"]),
                                  output_hidden_states=True)

    def transformer_lens(batch: dict[str, np.ndarray]) -> Any:
        width = int(batch["lengths"].max())
        tokens = torch.from_numpy(batch["tokens"][:, :width].astype(np.int64))
        with torch.inference_mode():
            return backbone.model.run_with_cache(tokens, names_filter=backbone.hook,
                                                 stop_at_layer=backbone.stop_at_layer)

    return {"hf_text": hf_text, "open_clip": open_clip, "patchtst": patchtst,
            "transformer_lens": transformer_lens}[kind]


def _cut_forward(harvester: Harvester) -> Callable[[dict[str, np.ndarray]], Any]:
    """The backbone's own forward up to the hook (same early stop), without row handling."""
    backbone: Any = harvester.backbone
    kind = harvester.source.backbone.kind
    if kind in ("hf_text", "transformer_lens"):
        def text(batch: dict[str, np.ndarray]) -> Any:
            lengths = torch.from_numpy(batch["lengths"].astype(np.int64))
            width = int(lengths.max())
            tokens = torch.from_numpy(batch["tokens"][:, :width].astype(np.int64))
            return backbone.forward(tokens, (torch.arange(width)[None] < lengths[:, None]).long())
        return text
    key = "pixels" if kind == "open_clip" else "values"
    return lambda batch: backbone.activations(torch.from_numpy(batch[key]))


SOURCES: dict[str, dict[str, Any]] = {
    "minilm hf_text layer.3": {
        "backbone": {"kind": "hf_text", "model": "minilm"}, "hook": "layer.3",
        "inputs": {"kind": "python_docstrings", "context": 128, "max_tokens": 60000},
        "batch_size": 32},
    "open_clip ViT-B-32 layer.6 (all tokens)": {
        "backbone": {"kind": "open_clip", "model": "ViT-B-32"}, "hook": "layer.6",
        "inputs": {"kind": "image_folder", "paths": ["IMAGES"]}, "batch_size": 16},
    "patchtst 14ch d128 layer.2": {
        "backbone": {"kind": "patchtst", "model": "", "config": {
            "num_input_channels": 14, "context_length": 256, "patch_length": 16,
            "patch_stride": 16, "d_model": 128, "num_hidden_layers": 3,
            "num_attention_heads": 4, "ffn_dim": 256}},
        "hook": "layer.2", "inputs": {"kind": "spkit_eeg_sample", "context": 256, "stride": 16},
        "batch_size": 16},
    "transformer_lens 4L d256 blocks.1.hook_resid_post": {
        "backbone": {"kind": "transformer_lens", "model": "", "config": {
            "n_layers": 4, "d_model": 256, "n_ctx": 128, "d_head": 32, "n_heads": 8,
            "d_mlp": 1024, "d_vocab": 300, "act_fn": "gelu", "normalization_type": "LN"}},
        "hook": "blocks.1.hook_resid_post",
        "inputs": {"kind": "python_docstrings", "context": 128, "max_tokens": 60000},
        "batch_size": 32},
}


def _ray_rows_per_second(source: Any, batches: list[dict[str, np.ndarray]],
                         threads: int) -> tuple[float, float]:
    """(steady-state rows/s, bare rows/s measured in the same actor) through Ray Data."""
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             object_store_memory=1 << 30)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_items(batches, override_num_blocks=len(batches)).map_batches(
        Harvester, fn_constructor_kwargs={"source": source, "threads": threads}, batch_size=1,
        num_cpus=1, compute=ray.data.ActorPoolStrategy(size=1))
    rows, first = 0, None
    for cols in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        if first is None:
            first = time.perf_counter()  # the actor is up and has done one forward
            continue
        rows += len(cols["example_id"])
    steady = rows / (time.perf_counter() - (first or time.perf_counter()))
    ray.shutdown()
    return steady, float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=12, help="input batches per backbone")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--images", default="/tmp/thresher-bench-images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not Path(args.images).is_dir():
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "mk", Path(__file__).parent.parent / "examples" / "make_image_folder.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.make_image_folder(args.images, crops=12)
    print(f"machine: {os.cpu_count()} CPUs, torch threads {args.threads}, load average "
          f"{os.getloadavg()[0]:.2f} (other work on the machine skews absolute figures)")
    print("rows/s: `model` = the library's own call as a user would write it (full forward for "
          "hf_text/patchtst; forward_intermediates(stop_early) for open_clip; run_with_cache"
          "(stop_at_layer) for TransformerLens); `cut` = thresher's backbone forward to the hook "
          "without row handling; `harvest` = Harvester.harvest (rows + metadata, numpy out)")
    print(f"{'backbone':<52} {'rows':>7} {'model':>8} {'cut':>8} {'harvest':>8} "
          f"{'h/model':>8} {'h/cut':>6}")
    for name, src in SOURCES.items():
        src = dict(src)
        if src["inputs"].get("paths") == ["IMAGES"]:
            src["inputs"] = {**src["inputs"], "paths": [args.images]}
        cfg = load_config({"source": src})
        inputs = prepare_inputs(cfg.source, 0, Path("."))
        batches = [decode_batch(inputs, b) for b in inputs.batches[: args.batches]]
        harvester = Harvester(cfg.source, threads=args.threads)
        bare, cut = _bare_forward(harvester), _cut_forward(harvester)
        rows = sum(len(harvester.harvest(b)) for b in batches)
        t_bare = _time(lambda: [bare(b) for b in batches], args.repeats)  # noqa: B023
        t_cut = _time(lambda: [cut(b) for b in batches], args.repeats)  # noqa: B023
        t_harvest = _time(lambda: [harvester.harvest(b) for b in batches],  # noqa: B023
                          args.repeats)
        print(f"{name:<52} {rows:>7} {rows / t_bare:>8.0f} {rows / t_cut:>8.0f} "
              f"{rows / t_harvest:>8.0f} {t_bare / t_harvest:>8.2f} {t_cut / t_harvest:>6.2f}")
        if name.startswith("minilm") and not args.no_ray:
            steady, _ = _ray_rows_per_second(cfg.source, inputs.batches[: args.batches * 2],
                                             args.threads)
            print(f"{'  ... Ray Data map_batches(Harvester), 1 actor':<52} {'':>7} "
                  f"{rows / t_bare:>8.0f} {rows / t_cut:>8.0f} {steady:>8.0f} "
                  f"{steady * t_bare / rows:>8.2f} {steady * t_cut / rows:>6.2f}")


if __name__ == "__main__":
    main()
