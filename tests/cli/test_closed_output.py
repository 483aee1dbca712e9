"""A command whose stdout is closed by its reader (`thresher plan | head -1`) ends quietly, as a
Unix tool does: status 0 or 141 (128 + SIGPIPE), and nothing about an error on stderr."""

from __future__ import annotations

import os
import subprocess

from tests.cli_runs import THRESHER


def test_plan_into_a_pipe_closed_after_the_first_line_ends_quietly() -> None:
    proc = subprocess.Popen([THRESHER, "plan"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read()
    proc.wait(timeout=120)
    assert first.startswith("run 'default'"), first
    assert "internal error" not in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert proc.returncode in (0, 141), (proc.returncode, stderr)


def test_plan_into_a_pipe_closed_before_it_writes_ends_with_141() -> None:
    """The plan is one write of under a kilobyte, so `head -1` breaks the pipe only when it has
    gone before thresher writes: here its reading end is closed before thresher starts."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([THRESHER, "plan"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141
