"""Where the repository's parts are, for tests in any folder of tests/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "thresher"
EXAMPLES = ROOT / "examples"
