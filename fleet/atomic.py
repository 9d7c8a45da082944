"""Replace a directory all at once: readers see the old folder or the new one, never half of either."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder `tmp` to `out`, replacing what was there; the old copy is removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
