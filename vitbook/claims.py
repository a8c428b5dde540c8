"""Asserted findings, recorded: the Checks cell of every chapter states its measured claims
through :func:`check`, which asserts them and, when ``$VITBOOK_CLAIMS`` names a file, appends
each value to it (one JSON line). ``make claims`` runs the book under several seeds and CPU
kernel sets and turns those files into the appendix's tables (`vitbook.claims_table`,
``python -m vitbook.claims_table --page``): for every finding, its value in every run, its
threshold, and its smallest margin.

A finding is a measured number against a threshold: ``check("MAE probe gain over random",
gain, above=0.02)``. An identity (two code paths agree, a shape) is not a finding: a plain
``assert`` states it. A number the page reports without asserting it, such as one cell of a
results table, is a measurement: ``measure("self-supervision", "MAE", "probe, 1% labels", 78.1)``
records it without a threshold, and the appendix shows each such table with its spread over the
runs. The seed of the run is `vitbook.settings.seed` (``$VITBOOK_SEED``, default
0); the zoo's models and the chapters' own experiments both draw from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .settings import seed
from .show import wrapped


def cpu_kernels() -> str:
    """The CPU kernel set torch runs on here (``default``, ``avx2``, ``avx512``, ...)."""
    return torch.backends.cpu.get_cpu_capability().lower()


def cpu_name(default: str = "unknown CPU") -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), or ``default``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


class Claims:
    """The findings of one chapter: ``claims = Claims("10_mae")``, then ``claims.check(...)``
    once per finding. ``claims.summary()`` ends the cell.

    A finding that does not hold raises at once, except in a recording run (``$VITBOOK_CLAIMS``
    set, as in ``make claims``): there every finding of the cell is checked and recorded, so that
    one failure does not hide the values of the rest from the sweep, and ``summary()`` raises for
    all the failures together."""

    def __init__(self, chapter: str):
        self.chapter = chapter
        self.results: list[dict] = []
        self.failures: list[str] = []
        self.measurements: list[dict] = []

    def check(
        self,
        name: str,
        value: float,
        *,
        above: float | None = None,
        below: float | None = None,
        why: str = "",
    ) -> float:
        """Assert ``value > above`` (or ``value < below``, or both), record the value, and
        return the margin (how far inside the threshold it landed, the smaller of the two).
        ``why`` says what the threshold rests on (a negative control, the measured spread)."""
        if above is None and below is None:
            raise ValueError(f"check({name!r}) needs a threshold: above=..., below=... or both")
        value = float(value)
        margins = []
        if above is not None:
            margins.append(value - above)
        if below is not None:
            margins.append(below - value)
        margin = min(margins)
        passed = margin > 0
        rule = threshold_text(above, below)
        record = {
            "chapter": self.chapter,
            "name": name,
            "value": value,
            "above": above,
            "below": below,
            "margin": margin,
            "passed": passed,
            **_run_fields(),
            "why": why,
        }
        self.results.append(record)
        _append(record)
        mark = "ok  " if passed else "FAIL"
        print(wrapped(f"{mark} {name}: {value:.4g} (needs {rule}; margin {margin:+.4g})", " " * 5))
        if not passed:
            self.failures.append(
                f"{self.chapter}: finding {name!r} does not hold: {value:.4g}, needs {rule}"
                + (f" ({why})" if why else "")
            )
            if not _recording():
                raise AssertionError(self.failures[-1])
        return margin

    def measure(self, table: str, row: str, column: str, value: float) -> float:
        """Record ``value`` as the cell (``row``, ``column``) of the results table ``table``: not
        asserted, and printed by nothing (the page shows the table its own way). In a recording
        run the appendix shows the table with every cell's mean and range over the runs."""
        value = float(value)
        if value != value:
            raise ValueError(f"measure({table!r}, {row!r}, {column!r}) got NaN; expected a number")
        record = {
            "chapter": self.chapter,
            "name": f"{table}: {row}, {column}",
            "kind": "measurement",
            "table": table,
            "row": row,
            "column": column,
            "value": value,
            **_run_fields(),
        }
        self.measurements.append(record)
        _append(record)
        return value

    def summary(self) -> None:
        """Print how many findings held; raise if any did not (in a recording run, where
        :meth:`check` records a failure and goes on, this is where it is reported)."""
        if self.failures:
            raise AssertionError(
                f"{len(self.failures)} of {len(self.results)} findings do not hold:\n"
                + "\n".join(self.failures)
            )
        recorded = f"; {len(self.measurements)} table values recorded" if self.measurements else ""
        print(
            f"{len(self.results)} findings checked (seed {seed()}, CPU kernels {cpu_kernels()}); "
            f"all hold{recorded}"
        )


def _run_fields() -> dict:
    """What every record says of the run that wrote it: seed, CPU kernels, torch threads."""
    return {"seed": seed(), "kernels": cpu_kernels(), "threads": torch.get_num_threads()}


def threshold_text(above: float | None, below: float | None) -> str:
    """A threshold as text: "> 0.1", "< 0.5" or "> 0.2 and < 5"."""
    parts = [f"> {above:.4g}"] if above is not None else []
    if below is not None:
        parts.append(f"< {below:.4g}")
    return " and ".join(parts)


def _claims_file() -> str:
    """The file a recording run writes its findings to (``$VITBOOK_CLAIMS``); '' when none."""
    return os.environ.get("VITBOOK_CLAIMS", "").strip()


def _recording() -> bool:
    """True in a run that records its findings (``$VITBOOK_CLAIMS`` names a file)."""
    return bool(_claims_file())


def _append(record: dict) -> None:
    path = _claims_file()
    if not path:
        return
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
        f.write(json.dumps({**record, "sha256": record_digest(record)}) + "\n")


def record_digest(record: dict) -> str:
    """The SHA-256 of a record's canonical JSON: each line of a claims file carries its own, so a
    value edited or damaged on disk is caught when the appendix is made from it."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
