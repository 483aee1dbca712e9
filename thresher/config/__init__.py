"""Typed run configuration: one YAML file validated into frozen dataclasses.

``load_config`` turns YAML (or a dict) into a :class:`Config`; every error names the key path,
the file and line, and the valid choices. ``expand_sweep`` turns the ``sweep`` grids into one
:class:`SAEConfig` per SAE and hook of every stream; ``make_plan`` packs them onto trainers.

The modules, in the order a config passes through them:
schema (the dataclasses; beside it saes, the one declaration of the sweep keys and of each
architecture's settings that the plan, the summary columns and the training code read) ->
build (YAML values to typed fields) -> validate (checks across fields, with file:line) ->
loader (``load_config``) -> sweep (``expand_sweep``) -> plan (``make_plan``); beside them
files (input paths and the run directory) and resources (what each actor asks for). Config
imports no stage: the stages import it.
"""

from thresher.config.build import Where, build
from thresher.config.files import config_dir, input_files, resolve_dirs, resolve_globs, run_dir_of
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
from thresher.config.saes import (
    ARCH_SPECS,
    ARCHITECTURES,
    HYPERPARAMETER_NAMES,
    SWEEP_KEY,
    SWEEP_KEYS,
    TOPK_FAMILY,
    ArchName,
    ArchSettings,
    BatchTopKSettings,
    Hyperparameters,
    JumpReLUSettings,
    MatryoshkaSettings,
    ReLUSettings,
    SAEConfig,
    TopKSettings,
)
from thresher.config.schema import (
    DEFAULT_CONFIG_NAME,
    DEFAULT_CONFIG_PATH,
    MODALITY_KINDS,
    BackboneConfig,
    Config,
    ConfigError,
    InputsConfig,
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
    "ARCH_SPECS",
    "DEFAULT_CONFIG_NAME",
    "DEFAULT_CONFIG_PATH",
    "HYPERPARAMETER_NAMES",
    "MODALITY_KINDS",
    "SWEEP_KEY",
    "SWEEP_KEYS",
    "TOPK_FAMILY",
    "ArchName",
    "ArchSettings",
    "BackboneConfig",
    "BatchTopKSettings",
    "Config",
    "ConfigError",
    "HarvestResources",
    "Hyperparameters",
    "InputsConfig",
    "JumpReLUSettings",
    "MatryoshkaSettings",
    "Plan",
    "ReLUSettings",
    "ResourcesConfig",
    "RunConfig",
    "SAEConfig",
    "SourceConfig",
    "StoredStore",
    "StreamConfig",
    "StreamPlan",
    "TopKSettings",
    "TrainConfig",
    "TrainerPlan",
    "WandbConfig",
    "Where",
    "build",
    "config_dir",
    "expand_sweep",
    "harvest_resources",
    "input_files",
    "load_config",
    "make_plan",
    "pack_trainers",
    "resolve_dirs",
    "resolve_globs",
    "run_dir_of",
    "sae_cost",
    "to_plain",
    "torch_threads",
    "train_steps",
]
