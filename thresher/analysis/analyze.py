"""`thresher analyze RUN`: every statistic again, from the exported SAEs alone.

Reads run.json's resolved config, harvests the stream's held-out rows again (the first
`stream.holdout_rows` rows, cut as the run cut them; nothing else is harvested), applies each
exported SAE (saes/<id>/, raw units) with frozen weights, and rewrites stats/*.parquet. For a
causal language model it also splices each SAE into the model (modalities/text/splice.py) over the
held-out windows for CE-loss recovered and KL.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from thresher.analysis.evaluate import (
    TrainerResult,
    evaluate_saes,
    identity_columns,
    sae_tables,
    source_metrics,
    write_run_stats,
)
from thresher.analysis.feature_columns import SAEWeights
from thresher.analysis.frozen import FrozenSAE, load_run_saes
from thresher.config import Config, SourceConfig
from thresher.harvest.collect import collect_holdout
from thresher.stream.block import ActivationBlock

log = logging.getLogger(__name__)


def run_config(run_dir: str | Path) -> tuple[dict[str, Any], Config]:
    """run.json and its Config, relative input paths read from the recorded config file's
    folder (wherever `thresher analyze` is started)."""
    from thresher.rundir import load_run_config

    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass a run directory (runs/<name>)")
    return load_run_config(run_dir)


def analyze_run(run_dir: str | Path, lm_metrics: bool = True,
                lm_windows: int = 256) -> dict[str, Path]:
    """Recompute stats/*.parquet of a finished run from its exported SAEs; returns the files.

    Each stream's held-out rows are harvested again once; each SAE is scored on its own hook's
    columns of them (and, for language models, spliced back in at that hook).
    """
    from thresher.rundir import open_run

    run_dir = open_run(run_dir)  # a URI: its working copy, brought up to date
    record, cfg = run_config(run_dir)
    cfg.check_libraries()  # its held-out rows are harvested again
    by_stream: dict[str, list[FrozenSAE]] = {}
    for sae in load_run_saes(run_dir):
        by_stream.setdefault(sae.sae.stream_id or cfg.sources[0].name, []).append(sae)
    trainers = record.get("trainers") or {}
    results: dict[str, TrainerResult] = {}
    for stream_id, saes in by_stream.items():
        source = cfg.source_named(stream_id)
        holdout = collect_holdout(cfg, stream_id)
        by_hook: dict[str, list[FrozenSAE]] = {}
        for sae in saes:  # a stream's hooks share its held-out rows, side by side
            by_hook.setdefault(sae.sae.hook or source.hooks[0], []).append(sae)
        for hook, group in by_hook.items():
            rows = holdout.select(hook)

            def encode_decode(x: torch.Tensor, group: list[FrozenSAE] = group) -> list[Any]:
                return [s.encode_decode(x) for s in group]

            stats = evaluate_saes(encode_decode, [s.sae.sae_id for s in group],
                                  [s.sae.d_sae for s in group], rows)
            # Ground truth and probing always; CE/KL (the SAEs spliced into the model) unless
            # --no-lm-metrics.
            extra = source_metrics(source, rows, encode_decode,
                                   {s.sae.sae_id: s.W_dec.numpy() for s in group})
            if lm_metrics:
                for sid, spliced in _lm_metrics(source, hook, run_dir, rows, group,
                                                lm_windows).items():
                    extra[sid] = {**extra.get(sid, {}), **spliced}
            for sae in group:
                sid = sae.sae.sae_id
                trainer_id = str(sae.record.get("trainer_id", "t0"))
                weights = SAEWeights(sae.W_enc, sae.W_dec,
                                     sae.decoder_norm_training_units().numpy())
                metrics, columns, examples, labels = sae_tables(sid, stats[sid], weights)
                metrics.update(extra.get(sid, {}))
                result = results.setdefault(trainer_id, TrainerResult(trainer_id, [], []))
                seconds = (trainers.get(trainer_id) or {}).get("seconds", float("nan"))
                result.summary_rows.append({
                    **identity_columns(cfg, stream_id, trainer_id, sae.sae, sae.d_in),
                    "input_scale": sae.input_scale, "steps": int(sae.record.get("step", 0)),
                    "rows_trained": int(sae.record.get("rows_seen", 0)),
                    "train_seconds": float(seconds), **metrics,
                })
                result.feature_columns.append(columns)
                result.example_columns.append(examples)
                if rows.label is not None:
                    result.label_columns.append(labels)
    return write_run_stats(run_dir, list(results.values()))


def _lm_metrics(source: SourceConfig, hook: str, run_dir: Path, holdout: ActivationBlock,
                saes: list[FrozenSAE], max_windows: int) -> dict[str, dict[str, float]]:
    """CE/KL per SAE spliced in at `hook` over the held-out windows (none, with a log line,
    where undefined)."""
    from thresher.harvest.inputs import manifest_path
    from thresher.modalities.text.kind import load_tokenizer
    from thresher.modalities.text.splice import SplicedLM, splice_metrics, splice_supported

    reason = splice_supported(source)
    if reason is not None:
        log.info("no CE-loss recovered for stream %s: %s", source.name, reason)
        return {}
    manifest = manifest_path(run_dir, source.name)
    if not manifest.is_file():
        log.info("no CE-loss recovered: %s is missing", manifest)
        return {}
    ids = np.unique(holdout.example_id)[:max_windows]
    table = pq.read_table(manifest, columns=["example_id", "token_ids"]).to_pydict()
    by_id = dict(zip(table["example_id"], table["token_ids"], strict=True))
    windows = [np.asarray(by_id[int(i)], dtype=np.int64) for i in ids]
    tokenizer = load_tokenizer(source.backbone)
    lm = SplicedLM(source, hook=hook)
    replacements = {s.sae.sae_id: (lambda x, s=s: s.encode_decode(x)[1]) for s in saes}
    with torch.no_grad():
        metrics = splice_metrics(lm, windows, replacements, tokenizer.pad_id,
                                 len(tokenizer.prefix), len(tokenizer.suffix))
    return {sid: asdict(m) for sid, m in metrics.items()}
