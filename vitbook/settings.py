"""The book's settings, read from the environment in one place.

* `seed`: ``$VITBOOK_SEED`` (a non-negative integer, 0 when unset): the seed of every zoo
  model's recipe and of every chapter's own experiments. ``make claims`` runs the book under
  several seeds.
* `cache_dir`: ``$VITBOOK_CACHE`` (default ``~/.cache/vitbook/zoo``), where `vitbook.zoo` keeps
  trained models.
* `data_dir`: ``$VITBOOK_DATA`` (default ``~/.cache/vitbook/data``), where `vitbook.data` keeps
  datasets.

A value that cannot be right (an empty folder name, a file where a folder should be, a seed
that is not a number) is refused with what to do, instead of silently using the current folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def seed() -> int:
    """The book's seed: ``$VITBOOK_SEED`` (a non-negative integer), 0 when unset."""
    raw = os.environ.get("VITBOOK_SEED", "0").strip() or "0"
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"VITBOOK_SEED must be a non-negative integer, got {raw!r}; unset it for seed 0"
        ) from None
    if value < 0:
        raise ValueError(f"VITBOOK_SEED must be a non-negative integer, got {value}")
    return value


def folder_from_env(var: str, default: str, error=ValueError) -> Path:
    """The folder named by the environment variable ``var`` (``default`` when it is unset). An
    empty value, or one naming a file, raises ``error`` with what to do instead of silently using
    the current directory or failing later with a bare NotADirectoryError."""
    value = os.environ.get(var)
    if value is None:
        return Path(default).expanduser()
    if not value.strip():
        raise error(
            f"${var} is set but empty; expected the path of a folder. Unset it "
            f"(`unset {var}`) to use {default}, or set it to a folder."
        )
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise error(
            f"${var} is {value!r}, which is a file; expected a folder. Point ${var} at a "
            f"folder (it is created if missing), or unset it to use {default}."
        )
    return path


def cache_dir() -> Path:
    """Where trained zoo models live: ``$VITBOOK_CACHE`` or ``~/.cache/vitbook/zoo``."""
    return folder_from_env("VITBOOK_CACHE", "~/.cache/vitbook/zoo", ValueError)


def data_dir(error=ValueError) -> Path:
    """Where datasets live: ``$VITBOOK_DATA`` or ``~/.cache/vitbook/data``."""
    return folder_from_env("VITBOOK_DATA", "~/.cache/vitbook/data", error)
