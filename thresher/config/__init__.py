"""Typed run configuration: one YAML file validated into frozen dataclasses.

``load_config`` turns YAML (or a dict) into a :class:`Config`; every error names the key path,
the file and line, and the valid choices. ``expand_sweep`` turns the ``sweep`` grids into one
:class:`SAEConfig` per SAE and hook of every stream; ``make_plan`` packs them onto trainers.

The modules, in the order a config passes through them:
schema (the dataclasses; `train` is built from the architectures' specs, one module each in
archs/; beside it kinds, the backbone and input settings each modality's spec.py declares, and
saes, the sweep keys and one SAE's config, which the plan, the summary columns and the
training code read) ->
build (YAML values to typed fields) -> validate (checks across fields, with file:line) ->
loader (``load_config``) -> sweep (``expand_sweep``) -> plan (``make_plan``); beside them
files (input paths and the run directory) and resources (what each actor asks for). Config
imports no stage: the stages import it.
"""

from thresher.config.arch_spec import ArchSettings, ArchSpec, SweepKey
from thresher.config.archs import ARCH_SPEC, ARCH_SPECS, ARCHITECTURES
from thresher.config.build import Where, build
from thresher.config.files import config_dir, input_files, resolve_dirs, resolve_globs, run_dir_of
from thresher.config.kinds import (
    BackboneConfig,
    InputsConfig,
    ModalitySpec,
    ModelBackboneConfig,
    backbone_kinds,
    modality_specs,
)
from thresher.config.loader import load_config
from thresher.config.plan import (
    Plan,
    StoredStore,
    StreamPlan,
    TrainerPlan,
    make_plan,
    pack_trainers,
    sae_cost,
    train_steps,
)
from thresher.config.resources import HarvestResources, harvest_resources, torch_threads
from thresher.config.saes import SHARED_KEYS, SWEEP_KEY, SWEEP_KEYS, SAEConfig
from thresher.config.schema import (
    DEFAULT_CONFIG_NAME,
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    ResourcesConfig,
    RunConfig,
    SourceConfig,
    StreamConfig,
    TrainConfig,
    WandbConfig,
    to_plain,
)
from thresher.config.sweep import expand_sweep

__all__ = [
    "ARCHITECTURES",
    "ARCH_SPEC",
    "ARCH_SPECS",
    "DEFAULT_CONFIG_NAME",
    "DEFAULT_CONFIG_PATH",
    "SHARED_KEYS",
    "SWEEP_KEY",
    "SWEEP_KEYS",
    "ArchSettings",
    "ArchSpec",
    "BackboneConfig",
    "Config",
    "ConfigError",
    "HarvestResources",
    "InputsConfig",
    "ModalitySpec",
    "ModelBackboneConfig",
    "Plan",
    "ResourcesConfig",
    "RunConfig",
    "SAEConfig",
    "SourceConfig",
    "StoredStore",
    "StreamConfig",
    "StreamPlan",
    "SweepKey",
    "TrainConfig",
    "TrainerPlan",
    "WandbConfig",
    "Where",
    "backbone_kinds",
    "build",
    "config_dir",
    "expand_sweep",
    "harvest_resources",
    "input_files",
    "load_config",
    "make_plan",
    "modality_specs",
    "pack_trainers",
    "resolve_dirs",
    "resolve_globs",
    "run_dir_of",
    "sae_cost",
    "to_plain",
    "torch_threads",
    "train_steps",
]
