"""The stages as Python calls: `thresher.run(config)` and `thresher.plan(config)`."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from thresher import uri_io
from thresher.config import Config, Plan, load_config, make_plan
from thresher.rundir import Terminated, create_run_dir, load_run_config, record_ending

log = logging.getLogger(__name__)

ConfigLike = str | os.PathLike[str] | dict | Config | None


def plan(config: ConfigLike = None) -> Plan:
    """Validate a config and expand it into streams, trainers and SAEs; runs nothing."""
    from thresher.modalities.stored.source import read_stores
    from thresher.preflight import preflight

    cfg = load_config(config)
    cfg.check_libraries()  # before a store or a model's config is read
    the_plan = make_plan(cfg, read_stores(cfg))
    preflight(the_plan)  # cheap checks of hooks and stores, before Ray or a backbone starts
    return the_plan


def run(config: ConfigLike = None, *, inline: bool = False, progress: bool | None = None,
        resume: bool = False, overwrite: bool = False) -> Path | str:
    """Harvest, train and write statistics; returns the run directory (its URI where run.out
    is one; the files are then also in this machine's working copy, thresher/uri_io.py).

    `config` is a YAML path, a dict, a Config, or None for the built-in default run.
    `inline=True` runs every role in this process without Ray (debugging, one-GPU boxes).
    An existing run directory is an error unless `resume` (continue from its checkpoints and
    stream cursors) or `overwrite` (start again) is set.
    """
    the_plan = plan(config)
    executor = "inline" if inline else "ray"
    run_dir = create_run_dir(the_plan, executor, resume=resume, overwrite=overwrite)
    start = time.perf_counter()
    from thresher.outcome import close_curve_log, finalize, open_curve_log

    curves = open_curve_log(run_dir, the_plan)
    try:
        with _sigterm_interrupts():
            if inline:
                from thresher.inline import run_inline

                outcome = run_inline(the_plan, run_dir, curves, progress_enabled=progress)
            else:
                from thresher.distributed.pipeline import run_ray

                outcome = run_ray(the_plan, run_dir, curves, progress_enabled=progress)
            finalize(run_dir, the_plan, executor, outcome, time.perf_counter() - start, curves)
    except BaseException as exc:
        try:
            close_curve_log(run_dir, curves)  # the curves so far stay, for the resume
        except Exception as close_error:  # the run's own error is the one to raise
            log.warning("could not save the training curves: %s", close_error)
        record_ending(run_dir, exc)  # failed or interrupted, why, and where a resume goes on
        raise
    location = uri_io.location_of(run_dir)
    return location if uri_io.is_uri(location) else run_dir


def resume(run_dir: str | os.PathLike[str], *, inline: bool = False,
           progress: bool | None = None) -> Path | str:
    """Continue a run from its checkpoints, with the config it was started with.

    Relative input paths are read from the original config file's folder, as in the first run
    (not from wherever the resume is started).
    """
    _, cfg = load_run_config(run_dir)
    return run(cfg, inline=inline, progress=progress, resume=True)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread while a run goes, so
    it ends as Ctrl-C does: recorded as interrupted, actors stopped, resumable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
