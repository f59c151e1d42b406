"""Where the workplace's shared data lives (``../shared`` beside the checkout).

A clone made elsewhere (``git clone . /tmp/x``) finds it beside the repository it was
cloned from; ``SKYRENDER_SHARED_DIR`` overrides both.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_shared_dir() -> Path:
    """``$SKYRENDER_SHARED_DIR``, else ``../shared``, else ``shared`` beside the clone's origin."""
    if os.environ.get("SKYRENDER_SHARED_DIR"):
        return Path(os.environ["SKYRENDER_SHARED_DIR"])
    beside = REPO_ROOT.parent / "shared"
    if beside.is_dir():
        return beside
    try:
        origin = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "config", "--get", "remote.origin.url"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and Path(origin).is_dir():
        candidate = Path(origin).resolve().parent / "shared"
        if candidate.is_dir():
            return candidate
    return beside


SHARED_DIR = find_shared_dir()
