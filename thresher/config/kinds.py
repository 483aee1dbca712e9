"""`source.backbone` and `source.inputs`: the settings of one backbone kind and of one
modality's inputs, and the kinds every modality declares.

Each modality package has a torch-free `spec.py` (thresher/modalities/<m>/spec.py) holding its
`MODALITY`: a `ModalitySpec` with its inputs' settings (an `InputsConfig` subclass whose `kind`
lists its input kinds) and its backbone kinds, each kind a frozen dataclass subclassing
`BackboneConfig` (its typed settings, its checks, the plan's line, where its code lives and the
libraries beyond thresher's core that it imports, `requires`).
Config reads those spec modules by name at first use, so importing config imports no stage;
every list of kinds (the YAML `kind` choices, each modality's kinds) is derived from them. A
spec module imports only thresher.config (tests/structure/test_layering.py).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args, get_type_hints

from thresher.config.errors import ConfigError

if TYPE_CHECKING:
    from thresher.config.build import Where

MODALITIES_PACKAGE = "thresher.modalities"
DEFAULT_KIND = "hf_text"  # a backbone mapping without `kind`
DEFAULT_INPUTS = "python_docstrings"  # an inputs mapping without `kind`


@dataclass(frozen=True)
class Requirement:
    """A library that a kind imports and thresher's core dependencies leave out: its top-level
    module (looked up, not imported) and the extra of thresher (pyproject.toml) that installs
    it."""

    module: str
    extra: str
    also: str = ""  # another way to get it, said after the extra

    def check(self, user: str) -> None:
        """A ConfigError naming `user` (the key and kind that need the module), the module and
        the install, where the module cannot be found; it looks the module up without importing
        it, so a check costs no import of torch or of the library."""
        if importlib.util.find_spec(self.module) is None:
            also = f" ({self.also})" if self.also else ""
            raise ConfigError(f'{user} needs the {self.module} package: '
                              f'pip install "thresher[{self.extra}]"{also}')


@dataclass(frozen=True)
class BackboneConfig:
    """A backbone kind's settings; YAML's `kind` picks the subclass (config/build.py)."""

    kind: str = field(default="", init=False)
    # "module:Class": the kind's code (load, and what its modality asks of a kind), imported
    # only where it runs (thresher/modalities/contract.py, `kind_code`).
    implementation: ClassVar[str] = ""
    # The source replays an activation store: its hooks may be left empty (the store's own),
    # and `thresher harvest` has nothing to harvest.
    replays_store: ClassVar[bool] = False
    # The libraries of an extra that the kind's code imports (checked before anything loads,
    # `Config.check_libraries`).
    requires: ClassVar[tuple[Requirement, ...]] = ()

    @classmethod
    def variants(cls) -> dict[str, type[BackboneConfig]] | None:
        """Every kind's settings class by kind, for the YAML builder (None below the root)."""
        return backbone_kinds() if cls is BackboneConfig else None

    @classmethod
    def default_variant(cls) -> str:
        return DEFAULT_KIND

    def check(self, hooks: tuple[str, ...], path: tuple, where: Where) -> None:
        """What the kind asks beyond its fields' types (`path`: the source's key path)."""

    def describe(self) -> str:
        """What the plan says the backbone is."""
        return self.kind

    @property
    def model_label(self) -> str:
        """The summary's `model` column."""
        return self.kind

    @property
    def device(self) -> str:
        """Where the backbone runs (a kind with a model has the setting): a source without a
        model makes or reads its rows on the CPU."""
        return "cpu"


@dataclass(frozen=True)
class ModelBackboneConfig(BackboneConfig):
    """The settings every model-library kind shares."""

    # A model name or a local folder; empty with `config` set builds random weights from it.
    model: str = ""
    # Keyword arguments of the library's own config class: the model is then built from it with
    # random weights, downloading nothing.
    config: dict[str, Any] | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # type: ignore[assignment]

    def describe(self) -> str:
        return f"{self.kind} {self.model or '<random weights from config>'}"

    @property
    def model_label(self) -> str:
        return self.model or "<random weights>"


@dataclass(frozen=True)
class InputsConfig:
    """`source.inputs`: the settings of one modality's inputs; YAML's `kind` picks the
    modality's subclass, whose `kind` field lists its input kinds (config/build.py)."""

    kind: str = DEFAULT_INPUTS
    # Files or folders (globs allowed), relative to the config file's folder.
    paths: tuple[str, ...] = ()
    # The libraries of an extra that reading an input kind imports, by input kind.
    requires: ClassVar[Mapping[str, tuple[Requirement, ...]]] = {}

    @classmethod
    def variants(cls) -> dict[str, type[InputsConfig]] | None:
        """Every input kind's settings class, by kind, for the YAML builder."""
        if cls is not InputsConfig:
            return None
        return {kind: spec.inputs_config for spec in modality_specs().values()
                if spec.inputs_config is not None for kind in spec.inputs}

    @classmethod
    def default_variant(cls) -> str:
        return DEFAULT_INPUTS

    def describe(self) -> str:
        """What the plan says the inputs are."""
        return f"inputs {self.kind}"


@dataclass(frozen=True)
class ModalitySpec:
    """The YAML words of one modality: its backbone kinds and the input kinds they read."""

    name: str
    backbones: tuple[type[BackboneConfig], ...]
    # Its inputs' settings, whose `kind` Literal names its input kinds (None: its rows come
    # from the backbone, a store or a model).
    inputs_config: type[InputsConfig] | None = None
    folder_inputs: tuple[str, ...] = ()  # input kinds whose `paths` name folders, not files
    pathless_inputs: tuple[str, ...] = ()  # input kinds that need no `paths`
    chooses_tokens: bool = False  # `source.tokens` applies (which tokens become rows)
    hooks_alone: tuple[str, ...] = ()  # hooks of one row per example: no other hook beside

    @property
    def inputs(self) -> tuple[str, ...]:
        """Its input kinds."""
        if self.inputs_config is None:
            return ()
        return tuple(get_args(get_type_hints(self.inputs_config)["kind"]))


@functools.cache
def modality_specs() -> dict[str, ModalitySpec]:
    """Every modality's spec, read from thresher/modalities/<m>/spec.py."""
    package = importlib.util.find_spec(MODALITIES_PACKAGE)
    assert package is not None and package.submodule_search_locations is not None
    found: dict[str, ModalitySpec] = {}
    for info in sorted(pkgutil.iter_modules(package.submodule_search_locations),
                       key=lambda m: m.name):
        name = f"{MODALITIES_PACKAGE}.{info.name}.spec"
        if info.ispkg and importlib.util.find_spec(name) is not None:
            spec: ModalitySpec = importlib.import_module(name).MODALITY
            found[spec.name] = spec
    return found


@functools.cache
def backbone_kinds() -> dict[str, type[BackboneConfig]]:
    """Every backbone kind's settings class, by kind."""
    kinds: dict[str, type[BackboneConfig]] = {}
    for spec in modality_specs().values():
        for settings in spec.backbones:
            if settings.kind in kinds:
                raise TypeError(f"backbone kind {settings.kind!r} is declared by "
                                f"{kinds[settings.kind].__qualname__} and "
                                f"{settings.__qualname__}")
            kinds[settings.kind] = settings
    return kinds


def modality_spec_of(kind: str) -> ModalitySpec:
    """The modality a backbone kind belongs to."""
    return next(spec for spec in modality_specs().values()
                if any(settings.kind == kind for settings in spec.backbones))


def input_modality(inputs_kind: str) -> str:
    """The modality an input kind belongs to."""
    return next(spec.name for spec in modality_specs().values() if inputs_kind in spec.inputs)


def default_backbone() -> BackboneConfig:
    return backbone_kinds()[DEFAULT_KIND]()


def default_inputs() -> InputsConfig:
    variants = InputsConfig.variants()
    assert variants is not None
    return variants[DEFAULT_INPUTS]()


def check_positive(cfg: Any, names: tuple[str, ...], where: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{where}: {name} must be positive, got {getattr(cfg, name)!r}")
