"""Which torch device a role runs on, decided where it runs: only an actor sees the GPUs Ray
gave it (CUDA_VISIBLE_DEVICES), so this is called inside the harvester or trainer."""

from __future__ import annotations

import logging

import torch

from thresher.config import ConfigError

log = logging.getLogger(__name__)


def torch_device(gpus: float, requested: str = "auto", role: str = "trainer") -> str:
    """`requested` is a backbone's `device` (trainers always use auto).

    auto: CUDA where the role was given GPUs and torch sees one, else the CPU (with a warning
    where GPUs were asked for). cpu: the CPU. cuda: CUDA, or a ConfigError where there is none.
    """
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{role}: backbone.device is cuda but torch sees no CUDA device "
                              "here; set backbone.device to auto or cpu, or give the harvesters "
                              "a GPU (resources.gpus_per_harvester)")
        return "cuda"
    if gpus > 0 and torch.cuda.is_available():
        return "cuda"
    if gpus > 0:
        log.warning("%s: %g GPU requested but torch sees no CUDA device; using the CPU", role,
                    gpus)
    return "cpu"
