"""The Colab rehearsal (``make colab-check``): every chapter run as a Colab reader runs it.

* A fresh virtual environment holding only what Colab ships (`tests/colab/packages.txt`, and a
  recent pip), not the dev extras, and not the editable install.
* A stand-in ``google.colab`` module, imported before the first cell as Colab's kernel does, so
  that each notebook's own setup cell runs unchanged: it installs vitbook with ``%pip install
  "vitbook @ ..." --no-deps`` (here from a wheel of this checkout, through ``$VITBOOK_INSTALL``,
  since there is no network to GitHub) and umap-learn and timm from the package registry.
* Each chapter alone, copied into an empty folder outside the repository, executed by nbclient.
* Data through the book's own loaders from the data folder CI filled ($VITBOOK_DATA), models
  from the zoo cache that `make test` just filled ($VITBOOK_CACHE), so the rehearsal costs
  minutes, not a second cold run.

Each chapter's time is written to ``_build/colab/times.md``; the pytest summary line counts the
chapters that passed and failed.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "_build" / "colab"
PACKAGES = ROOT / "tests" / "colab" / "packages.txt"
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
STAND_IN = '''"""A stand-in for Colab's google.colab module (the Colab rehearsal, tests/test_colab.py):
the chapters only ask whether it is imported."""
'''

pytestmark = pytest.mark.colab


def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, (
        f"{' '.join(map(str, cmd))}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    )
    return out.stdout


@pytest.fixture(scope="session")
def colab():
    """(the kernel's name, the environment a chapter runs with). The virtual environment is
    built once and reused while packages.txt is unchanged (a new clone builds it afresh)."""
    for var in ("VITBOOK_DATA", "VITBOOK_CACHE"):
        assert os.environ.get(var), f"${var} must name the folder CI filled (see .ci/run)"
    venv = WORK / "venv"
    python = venv / "bin" / "python"
    stamp = venv / "packages.sha256"
    want = hashlib.sha256(PACKAGES.read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == want):
        shutil.rmtree(venv, ignore_errors=True)
        start = time.perf_counter()
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
        _run([str(python), "-m", "pip", "install", "-q", "-r", str(PACKAGES)])
        stamp.write_text(want)
        print(f"Colab's packages installed in {time.perf_counter() - start:.0f} s")
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    google = Path(purelib.strip()) / "google" / "colab"
    google.mkdir(parents=True, exist_ok=True)
    (google / "__init__.py").write_text(STAND_IN)
    # The package as Colab installs it: a wheel built from this checkout (pip builds the same
    # from a clone of the repository), never the editable install.
    wheels = WORK / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    source = Path(tempfile.mkdtemp(prefix="vitbook-source-"))
    shutil.copytree(
        ROOT / "vitbook", source / "vitbook", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    _run([str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)])
    (wheel,) = wheels.glob("vitbook-*.whl")
    _run([str(python), "-m", "pip", "uninstall", "-q", "-y", "vitbook"])  # a fresh install each run
    kernels = WORK / "jupyter" / "kernels" / "colab-rehearsal"
    kernels.mkdir(parents=True, exist_ok=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}",
                    "--IPKernelApp.exec_lines=import google.colab",
                ],
                "display_name": "Colab rehearsal",
                "language": "python",
            }
        )
    )  # fmt: skip
    env = {
        "JUPYTER_PATH": str(WORK / "jupyter"),
        "VITBOOK_INSTALL": wheel.as_uri(),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    (WORK / "times.md").write_text("| chapter | seconds |\n|---|---|\n")
    return "colab-rehearsal", env


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_as_in_colab(colab, chapter, monkeypatch):
    kernel, env = colab
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    alone = Path(tempfile.mkdtemp(prefix="colab-content-"))  # Colab's /content: nothing beside it
    shutil.copy(chapter, alone / chapter.name)
    nb = nbformat.read(alone / chapter.name, as_version=4)
    probe = nbformat.v4.new_code_cell(
        "import vitbook, google.colab\n"
        "assert 'site-packages' in vitbook.__file__, f'vitbook came from {vitbook.__file__}'\n"
        "print('vitbook from', vitbook.__file__)"
    )
    nb.cells.insert(2, probe)  # right after the setup cell: the package Colab installed
    start = time.perf_counter()
    try:
        NotebookClient(
            nb, timeout=900, kernel_name=kernel, resources={"metadata": {"path": str(alone)}}
        ).execute()
    finally:
        seconds = time.perf_counter() - start
        with (WORK / "times.md").open("a") as f:
            f.write(f"| {chapter.stem} | {seconds:.0f} |\n")
        nbformat.write(nb, WORK / f"{chapter.stem}.executed.ipynb")
    installed = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert "site-packages" in installed
    checks = "".join(o.get("text", "") for o in nb.cells[-2].outputs)
    assert "all hold" in checks or "all checks passed" in checks, checks[-2000:]
