"""Harvest rows/s per backbone family against the bare forward on the same batches (>= 0.9x).

    .venv/bin/python benchmarks/harvest_throughput.py [--batches N] [--rounds R] [--only NAME]
                                                      [--threads T] [--ray]

For each backbone the same input batches (images decoded and EEG windowed beforehand: the model
is timed, not JPEG decoding) go through three calls:

- `lib`: the library's own call a user would write for that activation without thresher
  (the full model with output_hidden_states for transformers, forward_intermediates for
  open_clip / timm, run_with_cache for TransformerLens);
- `bare`: the same work thresher does, written bare: the model stopped at the hook by the
  library's own means (a copy of the model truncated after the hooked layer; stop_early;
  stop_at_layer), tensors out;
- `harvest`: `Harvester.harvest`: one forward to the hook plus the rows cut (content tokens /
  chosen image tokens / channel-patch tokens), metadata attached, numpy out.

`harvest/bare` is the overhead figure (target >= 0.9); `harvest/lib` what a user gains. The
three calls are timed in interleaved rounds and each keeps its fastest round, so load from other
work on the machine hits them alike; by default on one torch thread with the process's CPU
time as the clock, which other processes on a shared machine barely move (`--clock wall
--threads N` for elapsed time on a quiet machine). Random-weight models (no download) except
MiniLM; the ratios do not depend on the weights. `--ray` also times MiniLM through the Ray
harvest pool (thresher's HarvestPool with one actor, steady state after the first block).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thresher.config import SourceConfig, load_config
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import decode_batch, prepare_inputs

Batch = dict[str, np.ndarray]
Call = Callable[[Batch], Any]

VIT_SMALL = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
             "intermediate_size": 1536, "image_size": 224, "patch_size": 16}
SOURCES: dict[str, dict[str, Any]] = {
    "hf_text MiniLM-L6 (trained) layer.3": {
        "backbone": {"kind": "hf_text", "model": "minilm"}, "hook": "layer.3",
        "inputs": {"kind": "python_docstrings", "context": 128, "max_tokens": 40000},
        "batch_size": 32},
    "transformer_lens 4L d256 blocks.1.hook_resid_post": {
        "backbone": {"kind": "transformer_lens", "model": "", "config": {
            "n_layers": 4, "d_model": 256, "n_ctx": 128, "d_head": 32, "n_heads": 8,
            "d_mlp": 1024, "d_vocab": 300, "act_fn": "gelu", "normalization_type": "LN"}},
        "hook": "blocks.1.hook_resid_post",
        "inputs": {"kind": "python_docstrings", "context": 128, "max_tokens": 40000},
        "batch_size": 32},
    "open_clip ViT-B-32 layer.6 tokens=all": {
        "backbone": {"kind": "open_clip", "model": "ViT-B-32"}, "hook": "layer.6",
        "inputs": {"kind": "image_folder", "paths": ["IMAGES"]}, "batch_size": 16},
    "open_clip ViT-B-16-SigLIP2 (timm) layer.5 patches": {
        "backbone": {"kind": "open_clip", "model": "ViT-B-16-SigLIP2"}, "hook": "layer.5",
        "tokens": "patches", "inputs": {"kind": "image_folder", "paths": ["IMAGES"]},
        "batch_size": 8},
    "hf_vision ViT-S/16 layer.3 tokens=cls": {
        "backbone": {"kind": "hf_vision", "model": "", "config": {
            "model_type": "vit", **VIT_SMALL}}, "hook": "layer.3", "tokens": "cls",
        "inputs": {"kind": "image_folder", "paths": ["IMAGES"]}, "batch_size": 16},
    "hf_vision SigLIP-S/16 layer.3 patches": {
        "backbone": {"kind": "hf_vision", "model": "", "config": {
            "model_type": "siglip_vision_model", **VIT_SMALL}}, "hook": "layer.3",
        "tokens": "patches", "inputs": {"kind": "image_folder", "paths": ["IMAGES"]},
        "batch_size": 16},
    "patchtst 14ch d128 3L layer.1": {
        "backbone": {"kind": "patchtst", "model": "", "config": {
            "num_input_channels": 14, "context_length": 256, "patch_length": 16,
            "patch_stride": 16, "d_model": 128, "num_hidden_layers": 3,
            "num_attention_heads": 4, "ffn_dim": 256}},
        "hook": "layer.1", "inputs": {"kind": "spkit_eeg_sample", "context": 256, "stride": 8},
        "batch_size": 32},
}


def _layer(source: SourceConfig) -> int:
    """The block index in the hook: layer.N, blocks.N.<...>."""
    return int(re.search(r"(?:layer|blocks)\.(\d+)", source.hooks[0]).group(1))  # type: ignore[union-attr]


def _text_tensors(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.from_numpy(batch.lengths.astype(np.int64))
    width = int(lengths.max())
    tokens = torch.from_numpy(batch.tokens[:, :width].astype(np.int64))
    return tokens, (torch.arange(width)[None] < lengths[:, None]).long()


def _truncated(model: torch.nn.Module, keep: int) -> torch.nn.Module:
    """A copy of a transformers model keeping the first `keep` of its encoder layers (the
    bare way to stop after a layer)."""
    cut = copy.deepcopy(model)
    n_layers = int(cut.config.num_hidden_layers)
    path = next(name for name, module in cut.named_modules()
                if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers)
    parent_name, _, attr = path.rpartition(".")
    parent = cut.get_submodule(parent_name) if parent_name else cut
    setattr(parent, attr, torch.nn.ModuleList(list(getattr(parent, attr))[:keep]))
    return cut.eval()


def reference_calls(harvester: Harvester) -> tuple[Call, Call]:
    """(lib, bare) for one input batch of this harvester's source."""
    source = harvester.source
    kind = source.backbone.kind
    backbone: Any = harvester.backbone
    layer = _layer(source)

    if kind == "hf_text":
        from transformers import AutoModel

        from thresher.modalities.text.loading import local_model_path

        full = AutoModel.from_pretrained(local_model_path(source.backbone.model),
                                         local_files_only=True).eval()
        cut = backbone.model  # thresher already truncated it after the hooked layer

        def hf_text(model: torch.nn.Module) -> Call:
            def call(batch: Batch) -> Any:
                tokens, mask = _text_tensors(batch)
                with torch.inference_mode():
                    return model(input_ids=tokens, attention_mask=mask,
                                 output_hidden_states=True).hidden_states[layer + 1]
            return call
        return hf_text(full), hf_text(cut)

    if kind == "transformer_lens":
        model, hook = backbone.model, source.hooks[0]

        def tl(stop: int | None) -> Call:
            def call(batch: Batch) -> Any:
                tokens, _ = _text_tensors(batch)
                with torch.inference_mode():
                    return model.run_with_cache(tokens, names_filter=hook,
                                                stop_at_layer=stop)[1][hook]
            return call
        return tl(None), tl(layer + 1)

    if kind == "open_clip":
        visual = backbone.visual
        trunk = getattr(visual, "trunk", None)  # timm (SigLIP2) or open_clip's own ViT

        def oc(stop_early: bool) -> Call:
            def call(batch: Batch) -> Any:
                pixels = torch.from_numpy(batch.pixels)
                with torch.inference_mode():
                    if trunk is not None:
                        return trunk.forward_intermediates(
                            pixels, indices=[layer], stop_early=stop_early,
                            intermediates_only=True, output_fmt="NLC")[0]
                    return visual.forward_intermediates(
                        pixels, indices=[layer], stop_early=stop_early,
                        intermediates_only=True, output_fmt="NLC",
                        output_extra_tokens=True)["image_intermediates"][0]
            return call
        return oc(False), oc(True)

    if kind == "hf_vision":
        full = backbone.model
        cut = _truncated(full, layer + 1)

        def hv(model: torch.nn.Module) -> Call:
            def call(batch: Batch) -> Any:
                with torch.inference_mode():
                    return model(pixel_values=torch.from_numpy(batch.pixels),
                                 output_hidden_states=True).hidden_states[layer + 1]
            return call
        return hv(full), hv(cut)

    full = backbone.model
    cut = _truncated(full, layer + 1)

    def pt(model: torch.nn.Module) -> Call:
        def call(batch: Batch) -> Any:
            with torch.inference_mode():
                out = model(past_values=torch.from_numpy(batch.values),
                            output_hidden_states=True)
            # hidden_states[i] is layer i's input: layer L's output is the truncated model's last
            return out.last_hidden_state if model is cut else out.hidden_states[layer + 1]
        return call
    return pt(full), pt(cut)


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Fastest of `rounds` timings of each call, the calls taking turns within each round."""
    for call in calls.values():
        call()  # warm-up (allocator, lazy init)
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            start = clock()
            call()
            best[name] = min(best[name], clock() - start)
    return best


def _ray_rows_per_second(source: SourceConfig, batches: list[Batch], threads: int) -> float:
    """Steady-state rows/s of thresher's harvest pool with one harvester actor."""
    import ray

    from thresher.distributed.harvest_worker import HarvestPool

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             object_store_memory=1 << 30)
    pool = HarvestPool(source, actors=1, in_flight=2, gpus=0.0, threads=threads,
                       base_dir=".", options={"num_cpus": 1})
    rows, first = 0, None
    for out in pool.harvest(batches):
        if first is None:
            first = time.perf_counter()  # the actor is up and has done one forward
            continue
        rows += out.report.rows
    steady = rows / (time.perf_counter() - (first or time.perf_counter()))
    pool.stop()
    ray.shutdown()
    return steady


def _image_folder(path: str) -> str:
    if not Path(path).is_dir():
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "make_image_folder", Path(__file__).parent.parent / "examples" / "make_image_folder.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.make_image_folder(path, crops=12)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=4, help="input batches per backbone")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: this process's CPU time (steady on a shared machine; use it "
                        "with --threads 1); wall: elapsed time")
    parser.add_argument("--only", default="", help="run the backbones whose name has this")
    parser.add_argument("--ray", action="store_true",
                        help="also time MiniLM through the Ray harvest pool")
    parser.add_argument("--images", default="/tmp/thresher-bench-images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {args.threads} "
          f"threads, load average {os.getloadavg()[0]:.2f} at start; {args.batches} batches, "
          f"best of {args.rounds} interleaved rounds, {args.clock} clock")
    print(f"{'backbone':<52} {'rows':>6} {'lib':>8} {'bare':>8} {'harvest':>8} "
          f"{'h/bare':>7} {'h/lib':>6}   (rows/s)")
    for name, src in SOURCES.items():
        if args.only and args.only not in name:
            continue
        src = dict(src)
        if src["inputs"].get("paths") == ["IMAGES"]:
            src["inputs"] = {**src["inputs"], "paths": [_image_folder(args.images)]}
        cfg = load_config({"source": src})
        inputs = prepare_inputs(cfg.source, 0, Path("."))
        batches = [decode_batch(inputs, b) for b in inputs.batches[: args.batches]]
        harvester = Harvester(cfg.source, threads=args.threads)
        lib, bare = reference_calls(harvester)
        rows = sum(len(harvester.harvest(b)) for b in batches)
        best = interleaved({
            "lib": lambda: [lib(b) for b in batches],  # noqa: B023
            "bare": lambda: [bare(b) for b in batches],  # noqa: B023
            "harvest": lambda: [harvester.harvest(b) for b in batches],  # noqa: B023
        }, args.rounds, clock)
        rate = {k: rows / v for k, v in best.items()}
        print(f"{name:<52} {rows:>6} {rate['lib']:>8.0f} {rate['bare']:>8.0f} "
              f"{rate['harvest']:>8.0f} {rate['harvest'] / rate['bare']:>7.2f} "
              f"{rate['harvest'] / rate['lib']:>6.2f}", flush=True)
        if args.ray and name.startswith("hf_text"):
            steady = _ray_rows_per_second(cfg.source, inputs.batches[: args.batches * 3],
                                          args.threads)
            print(f"{'  ... through the Ray harvest pool, 1 actor (steady)':<52} {'':>6} {'':>8} "
                  f"{'':>8} {steady:>8.0f} {steady / rate['bare']:>7.2f} "
                  f"{steady / rate['lib']:>6.2f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
