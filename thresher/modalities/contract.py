"""The contract every modality keeps, and the types the harvest hands along.

A modality (one folder under thresher/modalities/) is one `Modality` value, registered in
thresher/modalities/registry.py, and its YAML words in its torch-free spec.py (its input kinds
and its backbone kinds' settings, which config reads). It turns a source into `Inputs` (typed
input batches and the inputs manifest), may decode a batch in a CPU stage first (`Decoder`),
checks a source cheaply before a run (`preflight`) and renders a stream's examples for the
report. Each backbone kind is one class (`BackboneKind`, named by its settings) that loads a
`Backbone` whose `harvest(batch)` makes exactly one ActivationBlock per input batch.

An input batch is a frozen dataclass of numpy arrays of fixed shape: across processes it
travels as plain numpy arrays, the argument of one harvester actor call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa

from thresher.config import BackboneConfig, SourceConfig
from thresher.stream.block import ActivationBlock

if TYPE_CHECKING:
    from thresher.modalities.render import Examples, ExamplesRequest


@dataclass(frozen=True, eq=False)
class InputBatch:
    """One backbone forward's inputs; each modality's batch type subclasses it."""

    @property
    def unreadable_examples(self) -> tuple[int, ...]:
        """Examples of this batch its CPU stage could not read (only images have such)."""
        return ()


@dataclass(frozen=True, eq=False)
class BlockIndexBatch(InputBatch):
    """Input batch of a source whose rows come in whole blocks (a store, a synthetic source):
    the 'forward' of `block` [i] makes or reads block i."""

    block: np.ndarray  # int64 [1]

    @classmethod
    def of(cls, i: int) -> BlockIndexBatch:
        return cls(block=np.array([i], dtype=np.int64))

    @property
    def index(self) -> int:
        return int(np.asarray(self.block).reshape(-1)[0])


class Decoder(Protocol):
    """A modality's CPU stage: turns batches of `batch_type` into what its backbones harvest.
    Small and picklable: Ray ships it to the decode tasks (`decode_task`)."""

    batch_type: ClassVar[type[InputBatch]]

    def decode(self, batch: Any) -> InputBatch: ...


@dataclass
class Inputs:
    """A stream's input batches, in stream order, and its inputs manifest."""

    batches: list[InputBatch]  # one per backbone forward, fixed shapes
    manifest: pa.Table | None  # the modality's manifest schema; a store's: the stored one
    n_examples: int
    planned_rows: int  # the rows the harvest produces (an estimate where the model decides)
    # Inputs skipped while listing, each named with why ("a.edf: not an EDF file"); those
    # the CPU stage cannot decode are named by the harvest (HarvestReport.unreadable_examples).
    unreadable: tuple[str, ...] = ()
    decode: Decoder | None = None  # batches to decode in a CPU stage before the backbone


class Backbone(Protocol):
    """What every backbone is to the harvester: hooks, their widths and one harvest per batch."""

    hooks: tuple[str, ...]
    hook_widths: tuple[int, ...]  # width of each hook's activations
    d_model: int  # sum of hook_widths

    def harvest(self, batch: Any) -> ActivationBlock:
        """ONE forward for one input batch: the rows of every hook side by side."""
        ...


def lazy(module: str, name: str) -> Callable[..., Any]:
    """`module.name`, imported on its first call: a modality's backbones (torch, model libraries)
    and report renderer (pandas) load only in the processes that use them, so the Ray stream
    actor, which only lists inputs, starts in seconds."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = name
    return call


class BackboneKind(Protocol):
    """The code of one backbone kind (its settings name it: `BackboneConfig.implementation`).
    Each modality asks more of its kinds (text: thresher/modalities/text/kind.py, image:
    image/kind.py); every kind loads its backbone."""

    def load(self, source: SourceConfig, device: str, base_dir: Path) -> Backbone: ...


_KINDS: dict[str, Any] = {}


def kind_code(backbone: BackboneConfig) -> Any:
    """The kind class named by the settings' `implementation`, made once per process and
    imported on first use (model libraries load only where a kind runs)."""
    path = type(backbone).implementation
    if path not in _KINDS:
        module, _, name = path.partition(":")
        _KINDS[path] = getattr(importlib.import_module(module), name)()
    return _KINDS[path]


def load_backbone(source: SourceConfig, device: str, base_dir: Path) -> Backbone:
    """The source's backbone, loaded by its kind."""
    kind: BackboneKind = kind_code(source.backbone)
    return kind.load(source, device, base_dir)


def no_preflight(source: SourceConfig, base_dir: Path) -> None:
    """A modality without checks before a run beyond the config's."""


@dataclass(frozen=True)
class Modality:
    """One modality: what the harvest, `thresher plan` and the report ask of it."""

    name: str
    batch_type: type[InputBatch]  # what its backbone kinds harvest (after any decoding)
    prepare_inputs: Callable[[SourceConfig, int, Path], Inputs]  # (source, seed, base_dir)
    manifest_schema: pa.Schema | None  # its inputs manifest (None: none of its own)
    render_examples: Callable[[ExamplesRequest], Examples]
    preflight: Callable[[SourceConfig, Path], None] = no_preflight
    decoder: Callable[[SourceConfig, Path], Decoder] | None = None  # the CPU stage, if any
    # The known features behind a source's rows, where it has them (a synthetic source's
    # SyntheticModel: its dictionary and which features fire on each row); the ground-truth
    # metrics score SAEs against it.
    ground_truth: Callable[[SourceConfig], Any] | None = None


def empty_block(d: int, labelled: bool = False) -> ActivationBlock:
    """No rows (a batch of filler rows only)."""
    return ActivationBlock(acts=np.zeros((0, d), dtype=np.float32),
                           example_id=np.zeros(0, dtype=np.int64),
                           position=np.zeros(0, dtype=np.int32),
                           label=np.zeros(0, dtype=np.int64) if labelled else None)
