"""Checks that are cheap, run by `thresher plan` and at the start of `thresher run`, before Ray
or any backbone starts: a bad hook or a bad store is one ConfigError line naming the file or
key and the fix, not a worker traceback a minute later. First every library of an extra that a
source's kinds import must be installed (`check_libraries`); then each modality has its own
checks (`Modality.preflight`): text checks its hooks against the model's config, a stored
source opens and checks its store.
"""

from __future__ import annotations

from thresher.config import Config, Plan, config_dir
from thresher.modalities.registry import modality_of


def check_libraries(cfg: Config) -> None:
    """One ConfigError line for the first library that a source's backbone kind or input kind
    needs and this environment lacks: the key, the kind, the module and the extra to install
    (`requires` in each kind's spec). Looked up, not imported."""
    for i, source in enumerate(cfg.sources):
        key = "source" if len(cfg.sources) == 1 else f"sources.{i}"
        backbone, inputs = source.backbone, source.inputs
        for requirement in backbone.requires:
            requirement.check(f"{key}.backbone.kind {backbone.kind}")
        for requirement in inputs.requires.get(inputs.kind, ()):
            requirement.check(f"{key}.inputs.kind {inputs.kind}")


def preflight(plan: Plan) -> None:
    base = config_dir(plan.config)
    for stream in plan.streams:
        modality_of(stream.source).preflight(stream.source, base)
