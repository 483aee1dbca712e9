"""The run directory: its layout, `run.json`, and atomic JSON writes.

Layout (format_version 1; see docs/formats.md):

  <out>/<name>/
    run.json                       resolved config, plan, versions, git commit, harvest counters
    inputs/<stream_id>.parquet     example_id -> origin, text, token ids fed to the model
    saes/<sae_id>/cfg.json         SAELens-loadable config
    saes/<sae_id>/sae_weights.safetensors
    saes/<sae_id>/checkpoint/      resume state (weights, Adam moments, step, stream cursor)
    stats/summary.parquet          one row per SAE
    stats/features.parquet         one row per (SAE, feature)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from thresher import uri_io
from thresher.config import Config, Plan, load_config, run_dir_of
from thresher.errors import UserError

RUN_JSON_FORMAT_VERSION = 1  # run.json's layout (docs/formats.md)
# Set by Ray in the driver of a `ray job submit` job (ray/_private/runtime_env/constants.py).
SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def versions() -> dict[str, str]:
    """Versions of Python and the installed packages a run depends on.

    Read from package metadata, not by importing them: importing transformer_lens alone takes
    seconds to tens of seconds, twice per run.
    """
    out = {"python": platform.python_version()}
    for name in ("thresher", "torch", "numpy", "pyarrow", "ray", "transformers",
                 "transformer-lens"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name.replace("-", "_")] = importlib.metadata.version(name)
    return out


def git_commit() -> str | None:
    """The commit of the thresher checkout running this, if it is one (no shell involved)."""
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


class RunDirError(UserError, ValueError):
    """A run directory that cannot be used as asked (exists, missing, or temporary)."""


def create_run_dir(plan: Plan, executor: str, *, resume: bool = False,
                   overwrite: bool = False) -> Path:
    """Make the run directory; an existing run is continued (resume) or cleared (overwrite).

    Trainers restore from any checkpoint they find, so starting a new run on top of an old one
    would silently continue it: that needs an explicit choice. Returns the local folder the run
    is written through (for a URI, its working copy: thresher/uri_io.py).
    """
    out = plan.config.run.out
    if SUBMITTED_JOB_ENV in os.environ and not uri_io.is_uri(out) and not Path(out).is_absolute():
        raise RunDirError(
            f"run.out is the relative path {out!r}, but this is a `ray job submit` job, whose "
            "working directory is temporary and deleted afterwards. Set run.out to an absolute "
            "path on storage every node shares, or to a URI")
    location = run_dir_of(plan.config)
    previous = uri_io.join(location, "run.json")
    exists = uri_io.is_file(previous)
    if exists and not resume:
        if not overwrite:
            record = run_record(location)
            status = record.get("status", "unknown")
            why = f": {record['reason']}" if record.get("reason") else ""
            raise RunDirError(
                f"{location} already holds a run (status {status}{why}). Pass --resume to "
                "continue it from its checkpoints with the config stored in its run.json, "
                "--overwrite to start again with this config, or choose another run.name / "
                "run.out")
        for name in ("saes", "stats", "run.json", "inputs", "report", "wandb"):
            uri_io.remove(uri_io.join(location, name))
    if resume and not exists:
        raise RunDirError(f"nothing to resume: {location} holds no run.json")
    run_dir = uri_io.working_dir(location)
    if uri_io.is_uri(location) and not resume:
        # A working copy left by an earlier run of this URI is stale; trainers of a resumed
        # run pull their own checkpoints (Trainer).
        shutil.rmtree(run_dir)
        run_dir = uri_io.working_dir(location)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_json(run_dir, plan, executor, status="running")
    return run_dir


def open_run(run: str | Path) -> Path:
    """The local folder to read a run from: the path itself, or for a URI its working copy,
    brought up to date (checkpoints left out: only a resumed trainer needs its own)."""
    run_dir = uri_io.working_dir(run)
    uri_io.pull(run_dir, skip=("saes/*/checkpoint",))
    return run_dir


def run_record(run: str | Path) -> dict[str, Any]:
    location = uri_io.join(run, "run.json")
    if not uri_io.is_file(location):
        raise RunDirError(f"{run} is not a thresher run directory: no run.json")
    try:
        return json.loads(uri_io.read_text(location))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{location} is not the JSON thresher writes ({exc})") from exc


def config_of_run(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a run was started with (from its run.json)."""
    config = run_record(run_dir)["config"]
    config.pop("source_file", None)
    return config


def load_run_config(run_dir: str | Path) -> tuple[dict[str, Any], Config]:
    """run.json and the Config it records, validated as the run validated it: relative input
    paths against the recorded config file's folder, wherever this process was started."""
    record = run_record(run_dir)
    config = dict(record["config"])
    source_file = config.pop("source_file", None)
    return record, load_config(config, source_file=source_file)


def write_run_json(run_dir: Path, plan: Plan, executor: str, status: str,
                   extra: dict[str, Any] | None = None) -> Path:
    config = plan.config.to_dict()
    if plan.config.source_file:  # absolute: a resume may start from another folder
        config["source_file"] = str(Path(plan.config.source_file).resolve())
    record = {
        "format_version": RUN_JSON_FORMAT_VERSION,
        "status": status,
        "executor": executor,
        "config": config,
        "plan": [
            {"stream_id": s.stream_id, "hooks": list(s.hooks),
             "trainers": [{"trainer_id": t.trainer_id, "hook": t.hook,
                           "saes": [c.to_dict() for c in t.saes]} for t in s.trainers]}
            for s in plan.streams
        ],
        "versions": versions(),
        "git_commit": git_commit(),
        **(extra or {}),
    }
    return uri_io.save_json(run_dir / "run.json", record, default=str)


# --------------------------------------------------------------------------------------------
# How a run ended
# --------------------------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM (e.g. `ray job stop`, a scheduler's kill), ended like Ctrl-C: as an interruption
    whose checkpoints a resume continues from."""


def one_line(exc: BaseException) -> str:
    """An error as one line: its type and the first line of its message. A remote task's error
    (Ray's RayTaskError carries it as `cause`, and the task as `function_name`) is the error
    raised in the task, and where: "RuntimeError: ... (in TrainerActor.run)"."""
    where = ""
    while isinstance(cause := getattr(exc, "cause", None), BaseException) and cause is not exc:
        task = _RAY_TASK.search(_ANSI.sub("", str(exc)))
        where = where or (task.group(1) if task else str(getattr(exc, "function_name", "")))
        exc = cause
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return f"{line} (in {where})" if where else line


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colours Ray puts in its messages
_RAY_TASK = re.compile(r"ray::([\w.]+)\(")  # "ray::TrainerActor.run() (pid=..., ...)"


def checkpointed_step(run_dir: str | Path) -> int:
    """The step a resume of this run continues from: the newest checkpoint every SAE has."""
    from thresher.train.checkpoint import read_checkpoint_info

    steps = []
    for stream in run_record(run_dir).get("plan", []):
        for trainer in stream["trainers"]:
            for sae in trainer["saes"]:
                info = read_checkpoint_info(run_dir, sae["sae_id"])
                steps.append(info.current.step if info is not None else 0)
    return min(steps, default=0)


def record_ending(run_dir: str | Path, exc: BaseException) -> str:
    """Write into run.json how the run ended (`interrupted` or `failed`, the reason and the
    step a resume continues from); returns the status. Never raises: a run directory that
    cannot be written any more must not hide the error that ended the run."""
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    try:
        record = run_record(run_dir)
        record.update({"status": status, "reason": one_line(exc),
                       "checkpointed_step": checkpointed_step(run_dir)})
        uri_io.save_json(Path(run_dir) / "run.json", record, default=str)
    except Exception as err:
        import logging

        logging.getLogger(__name__).warning("could not record the run's end in %s: %s",
                                            run_dir, one_line(err))
    return status
