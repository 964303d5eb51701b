"""Debian's Chromium for the browser tests, driven by Playwright through its
executable path: nothing is downloaded. Without it the browser tests skip,
except under ``CI=true``, where a missing browser fails the run (``make
test``'s system-deps installs it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..helpers import missing

__all__ = ["ARTIFACTS", "find_chromium", "require_chromium"]

# Screenshots of the browser tests, one per state (gitignored).
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The path of a Chromium executable, or None."""
    chosen = os.environ.get("MESHBRIDGE_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    return next((found for name in _NAMES if (found := shutil.which(name))), None)


def require_chromium() -> str:
    """Chromium's path; skips without it, fails under ``CI=true``."""
    found = find_chromium()
    if found is None:
        missing("Chromium is not installed (`make system-deps` installs it)", "browser")
    return found
