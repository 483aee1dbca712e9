"""What the backbones of several modalities share: offline hub loading, seeded random
weights, layer taps that stop a forward after the deepest hooked layer, a transformers
encoder's list of layers, and the rows of a forward on the host.

Nothing here downloads: every Hugging Face lookup inside `hub_offline` runs in offline mode, so
a missing model fails at once instead of hanging on the network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from thresher.config import ConfigError, ModelBackboneConfig

if TYPE_CHECKING:  # imported where used: the tokenizers and hub helpers need no torch
    import torch

SEED = 0  # random-weight backbones are built under this torch seed, so runs repeat exactly


class StopForward(Exception):
    """Raised by LayerTaps once every tapped layer has run: deeper layers never run."""


class LayerTaps:
    """Captures hidden states at several layers during one forward, then stops it.

    `tap` registers a hook recording a module's output (or its input) under a key; `run(fn)`
    calls fn() and returns {key: tensor}. Taps record only inside `run`, so other callers of the
    model (a probe, the CE-loss splice) run it whole.
    """

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._captured: dict[str, torch.Tensor] = {}
        self._armed = False

    def tap(self, module: torch.nn.Module, key: str, on: str = "output",
            input_name: str = "hidden_states") -> None:
        self.keys.append(key)
        if on == "output":
            def record_output(_module: torch.nn.Module, _args: tuple, output: Any) -> None:
                self._record(key, output[0] if isinstance(output, tuple) else output)

            module.register_forward_hook(record_output)
        else:
            def record_input(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
                self._record(key, args[0] if args else kwargs[input_name])

            module.register_forward_pre_hook(record_input, with_kwargs=True)

    def _record(self, key: str, value: torch.Tensor) -> None:
        if self._armed:
            self._captured[key] = value
            if len(self._captured) == len(self.keys):
                raise StopForward

    def run(self, forward: Callable[[], Any]) -> dict[str, torch.Tensor]:
        self._captured, self._armed = {}, True
        try:
            with contextlib.suppress(StopForward):
                forward()
        finally:
            self._armed = False
        captured, self._captured = self._captured, {}
        missing = [key for key in self.keys if key not in captured]
        if missing:
            raise RuntimeError(f"the hooked layers {missing} did not run")
        return captured


def transformers_config(kwargs: dict[str, Any], needs_model_type: str) -> Any:
    """A transformers config built from `backbone.config` (its `model_type` and keyword
    arguments), for a model with random weights; `needs_model_type` ends the message that
    asks for a missing model_type."""
    from transformers import AutoConfig

    config = dict(kwargs)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"source.backbone.config needs `model_type` {needs_model_type}")
    try:
        return AutoConfig.for_model(model_type, **config)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"source.backbone.config: {exc}") from exc


def library_config(cfg: ModelBackboneConfig, build: Callable[[dict[str, Any]], Any],
                   from_folder: Callable[[str], Any], folder_hint: str = "") -> Any:
    """The model library's config of a backbone: `build(backbone.config)` (a model with random
    weights), else `from_folder` of the local save_pretrained folder `backbone.model` (this
    machine may be offline); `folder_hint` says more of the folder the kind loads."""
    if cfg.config is not None:
        try:
            return build(dict(cfg.config))
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"source.backbone.config: {exc}") from exc
    folder = Path(cfg.model).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"source.backbone.model {cfg.model!r} is not a local folder; "
                          f"{cfg.kind} loads a save_pretrained folder{folder_hint} (this machine "
                          "is offline) or builds random weights from `config`")
    return from_folder(str(folder))


def host_rows(rows: torch.Tensor) -> tuple[np.ndarray, bool]:
    """Rows [n, d] of a forward as a contiguous numpy array on the host, and whether they are
    bf16. A bf16 backbone's rows stay bf16 (their bits in an int16 array, since numpy has no
    bf16): half the bytes of float32 in the object store and on the wire, widened only on the
    trainer's device. Other dtypes become float32."""
    import torch

    rows = rows.detach().to("cpu")
    if rows.dtype == torch.bfloat16:
        return rows.contiguous().view(torch.int16).numpy(), True
    return np.ascontiguousarray(rows.float().numpy()), False


def torch_dtype(cfg: ModelBackboneConfig) -> torch.dtype:
    import torch

    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Offline mode for every Hugging Face Hub call inside (HF_HUB_OFFLINE=1 semantics).

    Libraries that do not pass `local_files_only` through (TransformerLens loading its tokenizer)
    would otherwise try the network and, on a machine without one, wait for timeouts.
    """
    import huggingface_hub.constants as hub_constants

    before = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def seeded() -> Iterator[None]:
    """Build random weights under a fixed seed without disturbing the caller's RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        yield


def layer_list(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """The encoder's list of layers: (its parent module, attribute name, the list)."""
    import torch

    n_layers = model.config.num_hidden_layers
    recorded = getattr(model, "_can_record_outputs", None) or {}
    layer_cls = recorded.get("hidden_states")
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            if isinstance(layer_cls, type) and isinstance(module[0], layer_cls):
                candidates.insert(0, name)
            else:
                candidates.append(name)
    if not candidates:
        raise ConfigError(f"cannot find the {n_layers} encoder layers of "
                          f"{type(model).__name__}; hf_text supports BERT-style encoders")
    path = candidates[0]
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)
