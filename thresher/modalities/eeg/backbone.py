"""The patchtst kind's backbone: a transformers PatchTSTModel; each (channel, patch) token is one
row."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thresher.config import ConfigError, ModelBackboneConfig, SourceConfig
from thresher.modalities.eeg.recordings import WindowBatch
from thresher.modalities.model_tools import LayerTaps, host_rows, hub_offline, seeded
from thresher.stream.block import ActivationBlock


class PatchTSTBackbone:
    """transformers PatchTSTModel cut after the deepest hooked encoder layer; rows = (channel,
    patch).

    Hooks: ``embeddings`` (patch embedding + positions: ``hidden_states[0]``) or ``layer.N``
    (output of encoder layer N: ``hidden_states[N + 1]``, or ``last_hidden_state`` for the
    last layer, since PatchTST's ``hidden_states`` hold each layer's input); several hooks come
    from one forward, side by side.
    """

    def __init__(self, source: SourceConfig, config: Any, device: str = "cpu") -> None:
        """`config`: the model's PatchTSTConfig (thresher/modalities/eeg/patchtst.py)."""
        from transformers import PatchTSTModel

        cfg = source.backbone
        assert isinstance(cfg, ModelBackboneConfig)
        if cfg.config is not None:
            with seeded():
                model = PatchTSTModel(config)
        else:
            try:
                with hub_offline():
                    model = PatchTSTModel.from_pretrained(str(Path(cfg.model).expanduser()),
                                                          local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"source.backbone.model {cfg.model!r}: cannot load a "
                                  f"PatchTST checkpoint ({str(exc)[:300]})") from exc
        if getattr(model, "do_mask_input", False):
            model.do_mask_input = False  # random patch masking is for pre-training only
            model.masking = torch.nn.Identity()
        n_layers = int(config.num_hidden_layers)
        valid = ["embeddings"] + [f"layer.{i}" for i in range(n_layers)]
        layers = model.encoder.layers
        self.hooks = source.hooks
        self._taps = LayerTaps()
        for hook in self.hooks:
            match = re.fullmatch(r"layer\.(\d+)", hook)
            if hook != "embeddings" and (match is None or int(match.group(1)) >= n_layers):
                raise ConfigError(f"source.hook {hook!r} is not a hook of this {n_layers}-"
                                  f"layer PatchTST model; valid hooks: {', '.join(valid)}")
            if match:
                self._taps.tap(layers[int(match.group(1))], hook)
            else:
                self._taps.tap(layers[0], hook, on="input", input_name="hidden_state")
        self.dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.device = device
        self.config = config
        self.n_channels = int(config.num_input_channels)
        self.context = int(config.context_length)
        self.use_cls = bool(getattr(config, "use_cls_token", False))
        self.hook_widths = tuple(int(config.d_model) for _ in self.hooks)
        self.d_model = sum(self.hook_widths)

    def activations(self, values: torch.Tensor) -> torch.Tensor:
        """[B, channels, patches, d_model] at the hooks (side by side, in the model's dtype)
        for windows [B, context, channels]."""
        if tuple(values.shape[1:]) != (self.context, self.n_channels):
            raise ValueError(f"windows of shape {tuple(values.shape[1:])} do not fit the model "
                             f"(context_length {self.context}, {self.n_channels} channels)")
        with torch.inference_mode():
            captured = self._taps.run(
                lambda: self.model(past_values=values.to(self.device, self.dtype)))
        acts = torch.cat([captured[hook] for hook in self.hooks], dim=-1)
        if self.use_cls:
            acts = acts[:, :, 1:]  # the CLS token is not a (channel, patch) token
        return acts

    def harvest(self, batch: WindowBatch) -> ActivationBlock:
        real = np.asarray(batch.example_id) >= 0
        example_id = np.asarray(batch.example_id, dtype=np.int64)[real]
        if not real.any():
            return ActivationBlock(acts=np.zeros((0, self.d_model), dtype=np.float32),
                                   example_id=np.zeros(0, dtype=np.int64),
                                   position=np.zeros(0, dtype=np.int32))
        acts = self.activations(torch.from_numpy(np.array(batch.values[real])))
        b, c, p, d = acts.shape
        rows, bf16_bits = host_rows(acts.reshape(b * c * p, d))
        return ActivationBlock(
            acts=rows, bf16_bits=bf16_bits,
            example_id=np.repeat(example_id, c * p),
            position=np.tile(np.arange(c * p, dtype=np.int32), b),
        )
