"""The checks no type can express: values in range, sources whose inputs exist and fit their
backbone, sweep grids that name real streams and hooks. Each error names file:line and the fix."""

from __future__ import annotations

import difflib
import os
import re
from typing import Any

from thresher.config.archs import ARCH_SPECS, ARCHITECTURES
from thresher.config.build import Where, build
from thresher.config.files import config_dir, resolve_dirs, resolve_globs
from thresher.config.kinds import ModalitySpec, input_modality, modality_spec_of
from thresher.config.saes import SWEEP_KEY, SWEEP_KEYS, sweep_key_type
from thresher.config.schema import Config, ConfigError, SourceConfig
from thresher.config.sweep import expand_sweep

STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _positive(cfg: Any, names: tuple[str, ...], path: tuple, where: Where) -> None:
    for name in names:
        value = getattr(cfg, name, None)  # inputs of one modality have only some of them
        if value is not None and value <= 0:
            raise ConfigError(f"{where.at((*path, name))} must be positive, got {value!r}")


def _check_device_amount(amount: float | None, path: tuple, where: Where) -> None:
    if amount is not None and (amount < 0 or (amount > 1 and amount != int(amount))):
        # Ray's own rule: a fraction of one device packs actors onto it; more than one device
        # must be a whole number of them.
        raise ConfigError(f"{where.at(path)} is {amount!r}: use 0, a fraction below 1 (several "
                          "actors share one device) or a whole number")


def check_config(cfg: Config, where: Where) -> None:
    _positive(cfg.stream, ("chunk_rows", "capacity_chunks", "mix_chunks", "norm_rows"),
              ("stream",), where)
    _positive(cfg.train, ("batch_size", "rows", "checkpoint_every", "curve_every"),
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
    if cfg.train.rows < cfg.train.batch_size:  # an SAE steps on whole batches only
        raise ConfigError(
            f"{where.at(('train', 'rows'))} is {cfg.train.rows}, below one batch "
            f"(train.batch_size {cfg.train.batch_size}); set train.rows to at least "
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
    _check_train(cfg, where)
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
    _check_saes(cfg, where)


def _check_saes(cfg: Config, where: Where) -> None:
    """Each SAE of the sweep: a key declared to stay below another (k of d_sae) does."""
    for sae in expand_sweep(cfg):
        for name, value in sae.arch_keys.items():
            other = SWEEP_KEY[name].below
            if other is not None and value >= sae.value(other):
                file = f" in {where.file}" if where.file else ""
                raise ConfigError(
                    f"SAE {sae.sae_id}{file} has {name} {value}, not below its {other} "
                    f"{sae.value(other)}: lower {name} or raise {other} (train.{name}, "
                    f"train.{other} or the sweep)")


def _check_train(cfg: Config, where: Where) -> None:
    """The architectures' own settings (the bank trusts them) and the dead-latent window."""
    train = cfg.train
    _positive(train, ("dead_window",), ("train",), where)
    for key in SWEEP_KEY:  # the sweep keys' defaults pass the sweep's own checks
        _check_sweep_value(key, getattr(train, key), ("train", key), where)
    for spec in ARCH_SPECS:
        for name, problem in train.arch_settings(spec.name).problems():
            raise ConfigError(f"{where.at(('train', spec.name, name))} {problem}")


def _check_source(cfg: Config, source: SourceConfig, path: tuple, where: Where) -> None:
    """The source's inputs exist and fit its backbone's modality (its `ModalitySpec`); its
    hooks are distinct; then what its backbone kind asks (`BackboneConfig.check`)."""
    inputs, backbone = source.inputs, source.backbone
    _positive(source, ("batch_size",), path, where)
    _positive(inputs, ("context", "max_tokens", "max_examples", "stride"), (*path, "inputs"),
              where)
    hooks = source.hooks
    if not hooks or (not backbone.replays_store and not all(hooks)):
        raise ConfigError(f"{where.at((*path, 'hook'))} is empty: name the hook point(s) to "
                          "harvest")
    if len(set(hooks)) != len(hooks):
        raise ConfigError(f"{where.at((*path, 'hook'))} lists a hook twice: {list(hooks)}")
    modality = modality_spec_of(backbone.kind)
    if modality.inputs:
        _check_inputs(cfg, source, modality, path, where)
    backbone.check(hooks, path, where)


def _check_inputs(cfg: Config, source: SourceConfig, kinds: ModalitySpec, path: tuple,
                  where: Where) -> None:
    """Inputs of the backbone's modality, with `tokens` only where it applies; their paths."""
    inputs = source.inputs
    if inputs.kind not in kinds.inputs:
        raise ConfigError(
            f"{where.at((*path, 'inputs', 'kind'))} is {inputs.kind!r} "
            f"({input_modality(inputs.kind)}) but the backbone {source.backbone.kind!r} reads "
            f"{kinds.name}; valid inputs for it: {', '.join(kinds.inputs)}")
    if source.tokens != "all" and not kinds.chooses_tokens:
        raise ConfigError(f"{where.at((*path, 'tokens'))} is {source.tokens!r} but only "
                          "image backbones choose tokens; remove it")
    alone = [hook for hook in source.hooks if hook in kinds.hooks_alone]
    if alone and len(source.hooks) > 1:
        raise ConfigError(
            f"{where.at((*path, 'hook'))}: {alone[0]!r} gives one row per image and the layer "
            "hooks one row per token, so they cannot share a stream's rows; put "
            f"{alone[0]!r} in a source of its own")
    needs_paths = inputs.kind not in kinds.pathless_inputs
    if needs_paths and not inputs.paths:
        raise ConfigError(
            f"{where.at((*path, 'inputs', 'paths'))} is empty: inputs of kind "
            f"{inputs.kind!r} need at least one path")
    base = config_dir(cfg)
    for i, pattern in enumerate(inputs.paths if needs_paths else ()):
        folders = inputs.kind in kinds.folder_inputs
        found = resolve_dirs(pattern, base) if folders else resolve_globs(pattern, base)
        if not found:
            what = "folder" if folders else "file"
            raise ConfigError(
                f"{where.at((*path, 'inputs', 'paths', i))}: no {what} matches "
                f"{pattern!r} (relative paths are read from {str(base.resolve())!r})")
        # Readable by this user (a folder: listable too); their contents are read at the run.
        mode = os.R_OK | os.X_OK if folders else os.R_OK
        for found_path in found:
            if not os.access(found_path, mode):
                raise ConfigError(
                    f"{where.at((*path, 'inputs', 'paths', i))}: cannot read {str(found_path)!r}"
                    f" (permission denied); make it readable (chmod {'a+rx' if folders else 'a+r'}"
                    ") or leave it out of the pattern")


def _check_sweep_target(cfg: Config, key: str, value: Any, path: tuple, where: Where) -> None:
    """A grid's `stream` / `hook` must name a stream / a hook of the config."""
    if key == "stream" and value not in [s.name for s in cfg.sources]:
        raise ConfigError(f"{where.at(path)} is {value!r}, not a stream of this config; streams: "
                          f"{', '.join(s.name for s in cfg.sources)}")
    if key == "hook":
        hooks = sorted({h for s in cfg.sources for h in s.hooks})
        if value not in hooks:
            raise ConfigError(f"{where.at(path)} is {value!r}, not a hook of any source; hooks: "
                              f"{', '.join(hooks)}")


def _check_sweep_value(key: str, value: Any, path: tuple, where: Where) -> None:
    built = build(sweep_key_type(key), value, path, where)
    if key == "arch" and built not in ARCHITECTURES:
        close = difflib.get_close_matches(built, ARCHITECTURES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where.at(path)} is {built!r}{hint} Valid choices: "
                          f"{' | '.join(map(repr, ARCHITECTURES))}")
    minimum = SWEEP_KEY[key].minimum if key in SWEEP_KEY else None
    if minimum == "positive" and built <= 0:
        raise ConfigError(f"{where.at(path)} must be positive, got {value!r}")
    if minimum == "non-negative" and built < 0:
        raise ConfigError(f"{where.at(path)} must be >= 0, got {value!r}")

