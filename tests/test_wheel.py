"""The package is what a reader installs: the wheel built from this checkout, installed into a
fresh virtual environment outside the repository (as Colab's ``pip install`` does, not an
editable install), holds every module and subpackage, registers every zoo entry, and runs a
chapter end to end.

The fresh environment gets the wheel alone; its dependencies (torch, matplotlib, ...) are
borrowed from this test's environment through a ``.pth`` line that comes after its own
site-packages, so that `vitbook` can only come from the wheel (the editable install's import
hook lives in a ``.pth`` file of the borrowed folder, which Python does not process there)."""

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from vitbook import recipes, zoo  # noqa: F401  (registers the zoo entries to compare with)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh environment's python, the wheel's file names, a folder outside the repo)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a clean copy: no build/ folder of an earlier build can leak in
    shutil.copytree(
        ROOT / "vitbook", source / "vitbook", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = work.glob("vitbook-*.whl")
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         str(wheel)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    own = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (own / "zz_borrowed_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    outside = work / "elsewhere"
    outside.mkdir()
    return python, zipfile.ZipFile(wheel).namelist(), outside


def run(python, code: str, cwd) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [str(python), "-I", "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_wheel_holds_every_module_and_subpackage(installed):
    _, names, _ = installed
    in_wheel = {n for n in names if n.startswith("vitbook/") and n.endswith(".py")}
    in_repo = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "vitbook").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert in_repo - in_wheel == set(), f"missing from the wheel: {sorted(in_repo - in_wheel)}"
    assert "vitbook/recipes/__init__.py" in in_wheel
    data_files = {
        str(p.relative_to(ROOT)) for p in (ROOT / "vitbook").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }  # fmt: skip
    assert data_files and data_files <= set(names), (
        f"data files missing: {sorted(data_files - set(names))}"
    )


def test_every_module_imports_from_the_installed_wheel(installed):
    python, names, outside = installed
    modules = sorted(
        n[:-3].replace("/", ".").removesuffix(".__init__")
        for n in names
        if n.startswith("vitbook/") and n.endswith(".py") and not n.endswith("__main__.py")
    )
    code = (
        "import importlib, json, vitbook\n"
        f"mods = {modules!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        "from vitbook import zoo\n"
        "print(json.dumps({'file': vitbook.__file__, 'zoo': zoo.names(), 'n': len(mods)}))\n"
    )
    got = json.loads(run(python, code, outside).strip().splitlines()[-1])
    assert not got["file"].startswith(str(ROOT)), f"imported from the checkout: {got['file']}"
    assert "site-packages" in got["file"]
    assert got["zoo"] == zoo.names(), "importing vitbook.recipes registers every zoo entry"
    assert got["n"] >= 30


def test_a_chapter_runs_end_to_end_on_the_installed_wheel(installed, tmp_path, monkeypatch):
    python, _, outside = installed
    kernels = tmp_path / "jupyter" / "kernels" / "vitbook-wheel"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-I", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "vitbook wheel",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    nb = nbformat.read(ROOT / "book" / "01_patches.ipynb", as_version=4)
    nb.cells.insert(
        2,
        nbformat.v4.new_code_cell(
            "import vitbook, sys\nassert 'site-packages' in vitbook.__file__, vitbook.__file__"
        ),
    )
    NotebookClient(
        nb, timeout=600, kernel_name="vitbook-wheel", resources={"metadata": {"path": str(outside)}}
    ).execute()
    checks = "".join(o.get("text", "") for o in nb.cells[-2].outputs)
    assert "all hold" in checks or "all checks passed" in checks, checks
