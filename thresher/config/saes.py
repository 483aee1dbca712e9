"""The one declaration of SAE settings: what a sweep varies per SAE, and what each architecture
sets for all of its SAEs.

`Hyperparameters` lists the sweep keys, one field each, with its type, default and check and
how the plan and summary.parquet show it (the field's `SweepKey`); `SAEConfig` (one SAE) and
`TrainConfig` (whose `train.<key>` are the defaults) both derive from it, and the sweep check,
`expand_sweep`, `Plan.describe`, the summary columns and the report read it, so a new sweep key
is one field here. Each architecture's own settings are a frozen dataclass written under
`train.<arch>` in YAML (`ARCH_SPECS` maps the name to it); its training code is
thresher/train/archs/<arch>.py, registered under the same name.

Torch-free on purpose: loading a config imports this, and config imports no stage.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# --------------------------------------------------------------------------------------------
# Each architecture's own settings (train.<arch>)
# --------------------------------------------------------------------------------------------


def was(old: str) -> dict[str, str]:
    """Field metadata: the setting was the flat `train.<old>` before it moved here."""
    return {"was": old}


Problems = list[tuple[str, str]]  # (field, what is wrong with it)


@dataclass(frozen=True)
class TopKSettings:
    """topk (Gao et al. 2024): f = ReLU(TopK_k(pre)), plus AuxK on dead latents."""

    # AuxK: the dead latents that reconstruct the residual (0: d_in // 2), and its loss weight
    # (1/32, Gao et al.).
    aux_k: int = field(default=0, metadata=was("aux_k"))
    aux_k_coef: float = field(default=0.03125, metadata=was("aux_k_coef"))
    # Decode from the k active latents only (thresher.train.sparse).
    sparse_decode: bool = field(default=True, metadata=was("sparse_decode"))

    def problems(self) -> Problems:
        return [(name, "must be >= 0") for name in ("aux_k", "aux_k_coef")
                if getattr(self, name) < 0]


@dataclass(frozen=True)
class BatchTopKSettings(TopKSettings):
    """batchtopk: the k * B largest entries of the batch in training, a threshold at inference."""

    threshold_ema: float = field(default=0.01, metadata=was("threshold_ema"))  # its EMA rate

    def problems(self) -> Problems:
        wrong = super().problems()
        if not 0 < self.threshold_ema <= 1:
            wrong.append(("threshold_ema", f"must be in (0, 1], got {self.threshold_ema}"))
        return wrong


@dataclass(frozen=True)
class MatryoshkaSettings(BatchTopKSettings):
    """matryoshka: batchtopk whose nested prefixes of latents also reconstruct alone."""

    # The prefixes, as fractions of d_sae (the full width is always the last level).
    fractions: tuple[float, ...] = field(default=(0.0625, 0.25),
                                         metadata=was("matryoshka_fractions"))
    # Keep decoder rows at unit norm, as the other TopK-family archs do. Off by default, as
    # sae_lens trains it: with free rows Matryoshka recovers the ground truth of
    # tests/test_ground_truth.py as well as sae_lens does (mean MCC 0.895), held at unit norm it
    # loses 0.03 (0.865). On is Bussmann et al.'s reference training.
    unit_norm_decoder: bool = False

    def problems(self) -> Problems:
        wrong = super().problems()
        if any(not 0 < f < 1 for f in self.fractions):
            wrong.append(("fractions", f"must each lie in (0, 1), got {list(self.fractions)}"))
        return wrong


@dataclass(frozen=True)
class JumpReLUSettings:
    """jumprelu: f = pre * H(pre - theta), theta learned through a straight-through estimator."""

    # The straight-through estimator's rectangle-kernel width (training units).
    bandwidth: float = field(default=0.05, metadata=was("jumprelu_bandwidth"))
    init_threshold: float = field(default=0.01, metadata=was("jumprelu_init_threshold"))
    # Fraction of training over which l0_coef ramps up from 0.
    coef_warmup: float = field(default=0.05, metadata=was("l1_warmup"))

    def problems(self) -> Problems:
        wrong = [(name, "must be positive") for name in ("bandwidth", "init_threshold")
                 if getattr(self, name) <= 0]
        if self.coef_warmup < 0:
            wrong.append(("coef_warmup", f"must be >= 0, got {self.coef_warmup}"))
        return wrong


@dataclass(frozen=True)
class ReLUSettings:
    """relu (Anthropic, April 2024): f = ReLU(pre), L1 penalty weighted by decoder norms."""

    # Fraction of training over which l1_coef ramps up from 0.
    coef_warmup: float = field(default=0.05, metadata=was("l1_warmup"))
    # Anthropic resampling of dead latents every this many steps (0: off).
    resample_every: int = field(default=0, metadata=was("resample_every"))

    def problems(self) -> Problems:
        wrong = []
        if self.coef_warmup < 0:
            wrong.append(("coef_warmup", f"must be >= 0, got {self.coef_warmup}"))
        if self.resample_every < 0:
            wrong.append(("resample_every", f"must be >= 0, got {self.resample_every}"))
        return wrong


ArchSettings = TopKSettings | JumpReLUSettings | ReLUSettings


@dataclass(frozen=True)
class ArchSpec:
    name: str
    settings: type[ArchSettings]  # written under train.<name>
    # Matmul-equivalents (rows x d_in x d_sae multiply-adds) of one training step per unit of
    # width, for packing SAEs onto trainers by cost.
    step_cost: float


# The TopK family decodes and back-propagates sparsely (one dense encoder matmul plus selection);
# relu and jumprelu run six dense matmuls (encoder and decoder, forward and two backward each).
ARCH_SPECS = (
    ArchSpec("topk", TopKSettings, step_cost=2.0),
    ArchSpec("relu", ReLUSettings, step_cost=6.0),
    ArchSpec("batchtopk", BatchTopKSettings, step_cost=2.5),
    ArchSpec("jumprelu", JumpReLUSettings, step_cost=6.0),
    ArchSpec("matryoshka", MatryoshkaSettings, step_cost=3.0),
)
ARCHITECTURES = tuple(spec.name for spec in ARCH_SPECS)
ARCH_SPEC = {spec.name: spec for spec in ARCH_SPECS}
ArchName = Literal[ARCHITECTURES]  # type: ignore[valid-type]
# The TopK family: latents chosen by rank (per row, or over the batch), trained with AuxK.
TOPK_FAMILY = tuple(s.name for s in ARCH_SPECS if issubclass(s.settings, TopKSettings))
MONO_STEP_COST = 3.0  # MonoLoss: E^T A and its backward, plus the dense latents


# --------------------------------------------------------------------------------------------
# What a sweep varies per SAE
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepKey:
    """How one sweep key is checked, shown in the plan and stored in summary.parquet."""

    minimum: Literal["positive", "non-negative"] | None = None
    archs: tuple[str, ...] | None = None  # the architectures that read it (None: every one)
    in_plan: Literal["always", "when_set"] = "always"  # when_set: only where not 0
    column_type: str = "float64"  # its summary.parquet column (a pyarrow type's name)
    was: str | None = None  # its name before it was renamed (an old YAML gets told)


def sweep_key(**declared: Any) -> dict[str, SweepKey]:
    """Field metadata: the field is a sweep key, declared so."""
    return {"sweep": SweepKey(**declared)}


@dataclass(frozen=True)
class Hyperparameters:
    """The sweep keys: each SAE of a sweep has its own value of these (the grid's, else
    train.<key>). `stream` and `hook` (SAEConfig.stream_id, .hook) restrict a grid instead."""

    arch: ArchName = field(default="topk", metadata=sweep_key(column_type="string"))
    d_sae: int = field(default=1536, metadata=sweep_key(minimum="positive", column_type="int32"))
    k: int = field(default=32, metadata=sweep_key(minimum="positive", archs=TOPK_FAMILY,
                                                  column_type="int32"))
    # The L1 penalty coefficient of relu, the L0 one of jumprelu.
    l1_coef: float = field(default=5.0, metadata=sweep_key(minimum="non-negative",
                                                           archs=("relu",), was="l1"))
    l0_coef: float = field(default=0.5, metadata=sweep_key(minimum="non-negative",
                                                           archs=("jumprelu",), was="l0"))
    # MonoLoss weight: mono_coef * (1 - mean batch MonoScore), any architecture.
    mono_coef: float = field(default=0.0, metadata=sweep_key(minimum="non-negative",
                                                             in_plan="when_set"))
    lr: float = field(default=1e-3, metadata=sweep_key(minimum="positive"))
    # The SAE's init seed.
    seed: int = field(default=0, metadata=sweep_key(column_type="int64", was="sae_seed"))

    def hyperparameters(self) -> dict[str, Any]:
        """The sweep keys' values, in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Hyperparameters)}


HYPERPARAMETERS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Hyperparameters)
HYPERPARAMETER_NAMES = tuple(f.name for f in HYPERPARAMETERS)
SWEEP_KEY: dict[str, SweepKey] = {f.name: f.metadata["sweep"] for f in HYPERPARAMETERS}
# Grid keys that pick where a grid applies, and the SAEConfig field each one sets.
TARGET_KEYS = {"stream": "stream_id", "hook": "hook"}
SWEEP_KEYS = (*SWEEP_KEY, *TARGET_KEYS)


def sweep_key_type(key: str) -> Any:
    """The type a sweep key's values are converted to."""
    return typing.get_type_hints(Hyperparameters)[key] if key in SWEEP_KEY else str


@dataclass(frozen=True, kw_only=True)
class SAEConfig(Hyperparameters):
    """One SAE of a sweep: its id, its hyperparameters and the stream and hook it trains on."""

    sae_id: str
    stream_id: str = "s0"  # the stream whose rows it trains on
    hook: str = ""  # the hook of that stream ("" for a stored source's only hook)

    def to_dict(self) -> dict[str, Any]:
        plain = dataclasses.asdict(self)
        return {"sae_id": plain.pop("sae_id"), **plain}  # the id first, for a reader of json

    def plan_values(self) -> dict[str, Any]:
        """The hyperparameters the plan shows for this SAE: those its architecture reads."""
        return {name: value for name, value in self.hyperparameters().items()
                if name != "arch" and (SWEEP_KEY[name].archs is None
                                       or self.arch in SWEEP_KEY[name].archs)
                and (SWEEP_KEY[name].in_plan == "always" or value)}


def _renamed_train_keys() -> dict[str, tuple[str, ...]]:
    """Old `train.<key>` -> where it is now (relative to train), from the `was` of each field."""
    moved: dict[str, tuple[str, ...]] = {}
    for f in HYPERPARAMETERS:
        old = SWEEP_KEY[f.name].was
        if old:
            moved[old] = (f.name,)
    for spec in ARCH_SPECS:
        for f in dataclasses.fields(spec.settings):
            if "was" in f.metadata:
                moved[f.metadata["was"]] = (*moved.get(f.metadata["was"], ()),
                                            f"{spec.name}.{f.name}")
    return moved


# A YAML that still writes an old key is told the new one (ConfigError with file:line).
RENAMED_TRAIN_KEYS = _renamed_train_keys()
RENAMED_SWEEP_KEYS = {key.was: name for name, key in SWEEP_KEY.items() if key.was}
