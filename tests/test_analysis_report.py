"""Feature cards per modality, on small real runs: image thumbnails with the activating patch
boxed, EEG channel snippets with the activating patch shaded (text: tests/test_analysis.py).

Each card's examples are checked against stats/examples.parquet and the inputs manifest: the
thumbnail is the manifest's image (pixels compared), the snippet the manifest's recording."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import thresher
from thresher.analysis.analyze import analyze_run, run_config
from thresher.analysis.frozen import load_run_saes
from thresher.analysis.parquet import LABELS_SCHEMA
from thresher.analysis.report import CARD_EXAMPLES, THUMB, write_report
from thresher.harvest.collect import collect_holdout

from .test_analysis import assert_renders_without_missing_image
from .test_eeg import TINY_PATCHTST
from .test_vision import TINY_CLIP

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RESOURCES = {"harvesters": 1, "trainers": 1, "cpus_per_harvester": 1, "cpus_per_trainer": 0,
             "harvester_threads": 1, "trainer_threads": 1}


def _small_run(out: Path, name: str, source: dict[str, Any], holdout: int) -> Path:
    return thresher.run({
        "run": {"name": name, "out": str(out), "seed": 0}, "source": source,
        "stream": {"chunk_rows": 128, "capacity_chunks": 8, "mix_chunks": 2,
                   "holdout_rows": holdout, "norm_rows": 128},
        "train": {"batch_size": 64, "tokens": 512, "checkpoint_every": 4, "warmup_steps": 1,
                  "d_sae": 64, "k": 4},
        "sweep": [{"arch": "topk", "k": [4, 8]}], "resources": RESOURCES,
    }, inline=True, progress=False)


def _cards(page: str) -> list[tuple[int, str]]:
    return [(int(m.group(1)), m.group(2)) for m in
            re.finditer(r"<div class='card' data-feature='(\d+)'>(.*?)</div></div>\n?", page,
                         re.S)]


def _best_top_examples(run_dir: Path, feature: int) -> list[tuple[int, int]]:
    """(example id, position) of the best SAE's top examples of `feature`, as a card shows."""
    stats = run_dir / "stats"
    summary = pq.read_table(stats / "summary.parquet").to_pandas()
    best = summary.sort_values("fve", ascending=False).sae_id.iloc[0]
    examples = pq.read_table(stats / "examples.parquet").to_pandas()
    top = examples[(examples.sae_id == best) & (examples.feature == feature)
                   & (examples.kind == "top")].sort_values("rank")[:CARD_EXAMPLES]
    return list(zip(top.example_id, top.position, strict=True))


def test_image_cards_show_the_manifest_images_with_their_patch(tmp_path: Path) -> None:
    from PIL import Image

    spec = importlib.util.spec_from_file_location("make_image_folder",
                                                  EXAMPLES / "make_image_folder.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = module.make_image_folder(tmp_path / "images", crops=3)
    run_dir = _small_run(tmp_path, "img", {
        "backbone": {"kind": "open_clip", "model": "ViT-B-32", "config": TINY_CLIP},
        "hook": "layer.1", "inputs": {"kind": "image_folder", "paths": [str(folder)]},
        "batch_size": 8}, holdout=170)  # 10 images x (CLS + 4 x 4 patches)
    index = write_report(run_dir)
    page = index.read_text()
    manifest = pq.read_table(run_dir / "inputs" / "s0.parquet").to_pandas().set_index("example_id")
    cards = _cards(page)
    assert len(cards) >= 4
    for feature, card in cards:
        shown = [int(e) for e in re.findall(r"alt='example (\d+)'", card)]
        assert shown == [e for e, _ in _best_top_examples(run_dir, feature)]
        labels = re.findall(r"<figcaption>(\w+) (?:patch \(\d, \d\)|CLS)</figcaption>", card)
        assert labels == [manifest.label_name[e] for e in shown]
    # A thumbnail is the manifest's image, the activating patch boxed in red on a 4 x 4 grid.
    feature, card = cards[0]
    name = re.search(r"<img src='(cards/[^']+)'", card).group(1)  # type: ignore[union-attr]
    example = int(re.search(r"alt='example (\d+)'", card).group(1))  # type: ignore[union-attr]
    thumb = np.asarray(Image.open(run_dir / "report" / name).convert("RGB"), dtype=np.int64)
    original = Image.open(manifest.origin[example]).convert("RGB").resize((THUMB, THUMB),
                                                                          Image.BICUBIC)
    changed = np.abs(thumb - np.asarray(original, dtype=np.int64)).sum(-1) > 0
    assert thumb.shape == (THUMB, THUMB, 3) and changed.mean() < 0.2  # same picture, + a box
    if changed.any():  # a patch token: the box is red and inside one cell of the grid
        rows, cols = np.nonzero(changed)
        cell = THUMB // 4
        assert rows.max() - rows.min() < cell + 2 and cols.max() - cols.min() < cell + 2
        assert (thumb[changed][:, 0] > 200).mean() > 0.9
    assert page.count("<img") == assert_renders_without_missing_image(index, tmp_path / "s.png")

    # Labels (purity) on this labelled run: `thresher analyze` against brute force.
    analyze_run(run_dir)
    holdout = collect_holdout(run_config(run_dir)[1])
    assert holdout.label is not None and (holdout.label >= 0).all()
    labels = pq.read_table(run_dir / "stats/labels.parquet")
    assert labels.schema.equals(LABELS_SCHEMA)
    labels_df = labels.to_pandas()
    features = pq.read_table(run_dir / "stats/features.parquet").to_pandas()
    for sae in load_run_saes(run_dir):
        f = sae.encode(torch.from_numpy(holdout.float32())).numpy()
        n_labels = int(holdout.label.max()) + 1
        counts = np.stack([((f > 0) & (holdout.label[:, None] == c)).sum(0)
                           for c in range(n_labels)], axis=1)  # [d_sae, labels]
        mine = labels_df[labels_df.sae_id == sae.sae.sae_id]
        got = np.zeros_like(counts)
        got[mine.feature, mine.label] = mine["count"]
        np.testing.assert_array_equal(got, counts)
        feats = features[features.sae_id == sae.sae.sae_id].sort_values("feature")
        fired = counts.sum(1) > 0
        np.testing.assert_allclose(feats.label_purity[fired], counts.max(1)[fired]
                                   / counts.sum(1)[fired], rtol=1e-12)
        np.testing.assert_array_equal(feats.top_label[fired], counts.argmax(1)[fired])
        assert feats.label_purity[~fired].isna().all()


def test_eeg_cards_show_the_recording_around_the_patch(tmp_path: Path) -> None:
    from thresher.harvest.eeg import spkit_eeg_sample

    run_dir = _small_run(tmp_path, "eeg", {
        "backbone": {"kind": "patchtst", "model": "", "config": TINY_PATCHTST},
        "hook": "layer.0", "inputs": {"kind": "spkit_eeg_sample", "context": 128, "stride": 64},
        "batch_size": 8}, holdout=224)  # 2 windows x 14 channels x 8 patches
    page = write_report(run_dir).read_text()
    manifest = pq.read_table(run_dir / "inputs" / "s0.parquet").to_pandas().set_index("example_id")
    signals = spkit_eeg_sample().signals
    cards = _cards(page)
    assert len(cards) >= 4
    for feature, card in cards:
        snippets = re.findall(r"<rect class='patch' x='([\d.]+)' y='0' width='([\d.]+)'.*?"
                              r"points='([^']+)'/></svg><span class='meta'>\S+ (\w+), samples "
                              r"(\d+)\.\.\.(\d+) \(window from (\d+)\)", card, re.S)
        top = _best_top_examples(run_dir, feature)
        assert len(snippets) == len(top)
        for (x0, _, points, channel, first, last, start), (example, position) in zip(
                snippets, top, strict=True):
            row = manifest.loc[example]
            c, patch = divmod(position, 8)  # position = channel * num_patches + patch
            assert channel == row.channels[c] and int(start) == row.start
            assert int(first) == row.start + 16 * patch and int(last) == int(first) + 15
            trace = signals[c, row.start:row.start + row.length].astype(np.float64)
            ys = np.array([float(p.split(",")[1]) for p in points.split()])
            assert len(ys) == row.length
            # The polyline is the channel's window, scaled: ys fall as the signal rises.
            assert np.corrcoef(ys, trace)[0, 1] < -0.999
            assert float(x0) == pytest.approx(16 * patch / (row.length - 1) * 360, abs=0.1)
