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
from typing import Any, Literal

from thresher.config.arch_spec import ArchSettings
from thresher.config.archs import ARCH_SPEC, ARCH_SPECS
from thresher.config.errors import ConfigError
from thresher.config.kinds import (
    BackboneConfig,
    InputsConfig,
    default_backbone,
    default_inputs,
)
from thresher.config.saes import SWEEP_KEY

DEFAULT_CONFIG_NAME = "default"
DEFAULT_CONFIG_PATH = Path(__file__).parents[1] / "configs" / "default.yaml"


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
class SourceConfig:
    # The stream's id in plans, SAE ids and Parquet (default s0, s1, ... in config order).
    name: str = ""
    # Its kind's settings (thresher/modalities/<m>/spec.py): `kind` picks them.
    backbone: BackboneConfig = field(default_factory=default_backbone)
    # One hook or a list of hooks, all taken from one forward pass (a layer sweep costs one
    # harvest); the SAEs of each hook train on that hook's rows.
    # hf_text: "layer.N" (output of encoder layer N, 0-based) or "embeddings".
    # transformer_lens: any hook name, e.g. "blocks.1.hook_resid_post".
    # open_clip, hf_vision, dinov2: "layer.N" (residual output of block N) or "embedding" (the
    # final image embedding: open_clip encode_image, SigLIP pooler output, ViT final CLS).
    # patchtst: "layer.N" (output of encoder layer N) or "embeddings" (input of layer 0).
    # stored: hooks held by the cache (empty takes them all).
    hook: str | tuple[str, ...] = "layer.3"
    # Its modality's input settings (thresher/modalities/<m>/spec.py): `kind` picks them.
    inputs: InputsConfig = field(default_factory=default_inputs)
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
class TrainRun:
    """The training settings every SAE of the run shares; `TrainConfig` adds the sweep keys'
    defaults and the architectures' sections."""

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

    def arch_settings(self, arch: str) -> ArchSettings:
        """train.<arch>: the settings of one architecture."""
        settings = getattr(self, arch)
        assert isinstance(settings, ARCH_SPEC[arch].settings)
        return settings

    def sweep_defaults(self) -> dict[str, Any]:
        """train.<key> of every sweep key: its value where a grid does not set it."""
        return {name: getattr(self, name) for name in SWEEP_KEY}


def _train_config_fields() -> list[tuple[str, Any, Any]]:
    """TrainConfig's fields beyond TrainRun's: each sweep key's default (train.k, train.lr,
    ...), then each architecture's settings (train.topk, train.relu, ...), from the registry."""
    keys = [(key.name, key.type, field(default=key.default)) for key in SWEEP_KEY.values()]
    sections = [(spec.name, spec.settings, field(default_factory=spec.settings))
                for spec in ARCH_SPECS]
    return keys + sections


# train: in YAML. Built, not written out, so that an architecture's section and sweep keys are
# declared once, in its spec (thresher/config/archs/<arch>.py).
TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", _train_config_fields(), bases=(TrainRun,), frozen=True,
    namespace={"__doc__": "Shared by every SAE of the run: TrainRun's settings, the sweep "
                          "keys' defaults (train.<key>) and each architecture's own settings "
                          "(train.<arch>)."})
TrainConfig.__module__ = __name__  # pickled by reference (Ray ships it to the trainers)


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

    def check_libraries(self) -> None:
        """One ConfigError line for the first library that a source's backbone kind or input
        kind needs and this environment lacks: the key, the kind, the module and the extra to
        install (each kind's `requires`, thresher/config/kinds.py). Run before anything reads a
        store or a model (`thresher plan`, `harvest`, `analyze`)."""
        for i, source in enumerate(self.sources):
            key = "source" if len(self.sources) == 1 else f"sources.{i}"
            backbone, inputs = source.backbone, source.inputs
            for requirement in backbone.requires:
                requirement.check(f"{key}.backbone.kind {backbone.kind}")
            for requirement in inputs.requires.get(inputs.kind, ()):
                requirement.check(f"{key}.inputs.kind {inputs.kind}")

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
