"""Writing files so that a crash never leaves half of one.

`atomic_write` writes to a temporary file beside the target and renames it into place, so a
reader sees the old file or the new one, never a mix. Datasets (`vitbook.data`) and checkpoints
(`vitbook.checkpoint`) both save through it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

STALE_TMP_SECONDS = 600  # a temporary file untouched this long was left by a killed writer


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], mode: int = 0o644) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, then rename it to
    ``path``. On any error the temporary file is removed and the error propagates; a file that
    was at ``path`` before stays as it was. Temporary files a killed writer left beside ``path``
    more than `STALE_TMP_SECONDS` ago are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_tmp(path: Path) -> None:
    now = time.time()
    for tmp in path.parent.glob(f"{glob_escape(path.name)}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)
