"""The sweep keys and one SAE's configuration.

A sweep key is a hyperparameter each SAE of a sweep has its own value of (a grid's, else
`train.<key>`). Every SAE has the `SHARED_KEYS` (arch, d_sae, mono_coef, lr, seed); each
architecture adds the keys it reads (k for the TopK family, l1_coef for relu, ...), declared in
its spec (thresher/config/archs/<arch>.py). An `SAEConfig` carries its shared keys as fields
and its architecture's own keys in `arch_keys`, no other: summary.parquet's column for a key
its architecture does not read is null. The sweep check, `expand_sweep`, `Plan.describe`, the
summary columns and the report read `SWEEP_KEY`.

Torch-free on purpose: loading a config imports this, and config imports no stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from thresher.config.arch_spec import SweepKey
from thresher.config.archs import ARCH_KEYS, ARCH_SPEC, ARCHITECTURES

# The keys of every SAE, whatever its architecture; an SAEConfig field each.
ARCH = SweepKey("arch", str, "topk", column_type="string")  # a module of config/archs/
D_SAE = SweepKey("d_sae", int, 1536, minimum="positive", column_type="int32")  # latents
# MonoLoss weight: mono_coef * (1 - mean batch MonoScore), any architecture.
MONO_COEF = SweepKey("mono_coef", float, 0.0, minimum="non-negative", in_plan="when_set")
LR = SweepKey("lr", float, 1e-3, minimum="positive")  # Adam's learning rate
SEED = SweepKey("seed", int, 0, column_type="int64")  # the SAE's init seed
SHARED_KEYS = (ARCH, D_SAE, MONO_COEF, LR, SEED)

# Every sweep key by name: an SAE's own keys come after its width, as in its id and the plan.
SWEEP_KEY: dict[str, SweepKey] = {key.name: key for key in (ARCH, D_SAE, *ARCH_KEYS.values(),
                                                            MONO_COEF, LR, SEED)}
# Grid keys that pick where a grid applies, and the SAEConfig field each one sets.
TARGET_KEYS = {"stream": "stream_id", "hook": "hook"}
SWEEP_KEYS = (*SWEEP_KEY, *TARGET_KEYS)  # every key a sweep grid may name
MONO_STEP_COST = 3.0  # MonoLoss: E^T A and its backward, plus the dense latents


def sweep_key_type(key: str) -> type:
    """The type a sweep key's values are converted to."""
    return SWEEP_KEY[key].type if key in SWEEP_KEY else str


def arch_key_names(arch: str) -> tuple[str, ...]:
    """The sweep keys an architecture reads beyond the shared ones."""
    return tuple(key.name for key in ARCH_SPEC[arch].sweep_keys)


def own_arch_keys(arch: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """From every sweep key's value, those of the keys `arch` reads (the rest do not apply)."""
    return {name: values[name] for name in arch_key_names(arch)}


@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """One SAE of a sweep: its id, its sweep keys and the stream and hook it trains on."""

    sae_id: str
    arch: str = ARCH.default
    d_sae: int = D_SAE.default
    # Its architecture's own sweep keys, exactly (ArchSpec.sweep_keys): {"k": 32} for topk.
    arch_keys: dict[str, Any] = field(default_factory=dict)
    mono_coef: float = MONO_COEF.default
    lr: float = LR.default
    seed: int = SEED.default
    stream_id: str = "s0"  # the stream whose rows it trains on
    hook: str = ""  # the hook of that stream ("" for a stored source's only hook)

    def __post_init__(self) -> None:
        if self.arch not in ARCH_SPEC:
            raise ValueError(f"SAE {self.sae_id!r}: unknown arch {self.arch!r}; known: "
                             f"{', '.join(ARCHITECTURES)}")
        wanted = arch_key_names(self.arch)
        if set(self.arch_keys) != set(wanted):
            raise ValueError(f"SAE {self.sae_id!r}: arch {self.arch!r} reads the sweep keys "
                             f"{list(wanted)}, got {sorted(self.arch_keys)}")

    def value(self, key: str) -> Any:
        """One of its sweep keys' value."""
        return self.arch_keys[key] if key in self.arch_keys else getattr(self, key)

    def sweep_values(self) -> dict[str, Any]:
        """Its sweep keys' values (the shared ones and its architecture's), in SWEEP_KEY order."""
        return {name: self.value(name) for name in SWEEP_KEY
                if name in self.arch_keys or name not in ARCH_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """Flat plain data: the id, its sweep keys, its stream and hook (`from_dict` reads it)."""
        return {"sae_id": self.sae_id, **self.sweep_values(), "stream_id": self.stream_id,
                "hook": self.hook}

    @classmethod
    def from_dict(cls, plain: Mapping[str, Any]) -> SAEConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"arch_keys"}
        return cls(**{k: v for k, v in plain.items() if k in names},
                   arch_keys={k: v for k, v in plain.items() if k not in names})

    def plan_values(self) -> dict[str, Any]:
        """The sweep keys the plan shows for this SAE (those set, for the when_set ones)."""
        return {name: value for name, value in self.sweep_values().items()
                if name != "arch" and (SWEEP_KEY[name].in_plan == "always" or value)}
