"""Checks that are cheap, run by `thresher plan` and at the start of `thresher run`, before Ray
or any backbone starts: a bad hook or a bad store is one ConfigError line naming the file or
key and the fix, not a worker traceback a minute later. Each modality has its own
(`Modality.preflight`): text checks its hooks against the model's config, a stored source opens
and checks its store. Before these, `thresher.plan` checks that the libraries of the config's
kinds are installed (`Config.check_libraries`), as these checks may import them.
"""

from __future__ import annotations

from thresher.config import Plan, config_dir
from thresher.modalities.registry import modality_of


def preflight(plan: Plan) -> None:
    base = config_dir(plan.config)
    for stream in plan.streams:
        modality_of(stream.source).preflight(stream.source, base)
