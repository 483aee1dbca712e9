"""Running the `thresher` command as a user does, and reading what a run recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The console script installed beside this interpreter (the venv's `thresher`).
THRESHER = str(Path(sys.executable).parent / "thresher")


def record(run_dir: Path) -> dict[str, Any]:
    """The run's run.json."""
    return json.loads((run_dir / "run.json").read_text())
