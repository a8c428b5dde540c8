"""What keeps the notebooks readable where readers open them: one repository address, images
that travel inside the notebook, no link that breaks when a notebook is opened alone.

* The repository address lives in `_config.yml` (``repository.url``, ``repository.branch``).
  Copies of it must sit where no build step can reach: every chapter's setup cell (what Colab
  runs) and Colab badge, the README, and `vitbook.release` (where published zoo models are
  fetched from; the installed package cannot read `_config.yml`). `address_copies` lists
  every copy that differs; ``make sync`` rewrites them all.
* Colab opens a notebook alone, without the `book/images` folder beside it, so a diagram is
  embedded in the notebook as a data URI (``<img data-file="mae.svg" src="data:...">``);
  ``make sync`` re-embeds the current `book/images/*.svg`, `stale_images` lists what is out
  of date, `relative_targets` every relative image or link that would break.

Run ``python tests/book_tools.py sync`` (``make sync``) after editing the address in
`_config.yml` or an SVG in `book/images`.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
IMAGES = BOOK / "images"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
PACKAGE_ADDRESS = ROOT / "vitbook" / "release.py"

# An address as it appears anywhere: https://github.com/<owner>/<name>
GITHUB = re.compile(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?=[/@\"')\s]|\.git|$)")
COLAB = re.compile(
    r"https://colab\.research\.google\.com/github/([\w.-]+)/([\w.-]+)/blob/([\w.-]+)/"
)
IMG = re.compile(
    r'<img ([^>]*?)data-file="([^"]+)"([^>]*?)src="data:image/svg\+xml;base64,([^"]*)"'
)


def configured() -> tuple[str, str]:
    """(repository address, branch) from `_config.yml`."""
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def read_notebook(path: Path) -> dict:
    return json.loads(path.read_text())


def write_notebook(path: Path, nb: dict) -> None:
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def cell_text(cell: dict) -> str:
    return "".join(cell["source"])


def set_text(cell: dict, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def _owner_name(url: str) -> tuple[str, str]:
    m = GITHUB.match(url)
    if not m:
        raise ValueError(f"repository.url must be https://github.com/<owner>/<name>, got {url!r}")
    return m.group(1), m.group(2)


def _texts() -> dict[str, str]:
    """Every text that carries a copy of the address: notebook cells, README, the package."""
    out = {}
    for nb in NOTEBOOKS:
        for i, cell in enumerate(read_notebook(nb)["cells"]):
            out[f"{nb.name} cell {i}"] = cell_text(cell)
    out["README.md"] = (ROOT / "README.md").read_text()
    out["vitbook/release.py"] = PACKAGE_ADDRESS.read_text()
    return out


def address_copies() -> list[str]:
    """Every copy of the repository address (GitHub, Colab, the install line) that differs from
    `_config.yml`'s, as 'where: what'; empty when all agree."""
    url, branch = configured()
    owner, name = _owner_name(url)
    bad = []
    for where, text in _texts().items():
        for m in GITHUB.finditer(text):
            if (m.group(1), m.group(2)) != (owner, name):
                bad.append(f"{where}: {m.group(0)}")
        for m in COLAB.finditer(text):
            if (m.group(1), m.group(2), m.group(3)) != (owner, name, branch):
                bad.append(f"{where}: {m.group(0)}")
        for m in re.finditer(r"git\+https://github\.com/[\w.-]+/[\w.-]+@([\w.-]+)", text):
            if m.group(1) != branch:
                bad.append(f"{where}: {m.group(0)}")
    return bad


def _rewrite(text: str, owner: str, name: str, branch: str) -> str:
    text = COLAB.sub(
        f"https://colab.research.google.com/github/{owner}/{name}/blob/{branch}/", text
    )
    text = re.sub(
        r"git\+https://github\.com/[\w.-]+/[\w.-]+@[\w.-]+",
        f"git+https://github.com/{owner}/{name}@{branch}",
        text,
    )
    return GITHUB.sub(f"https://github.com/{owner}/{name}", text)


def svg_data_uri(name: str) -> str:
    return base64.b64encode((IMAGES / name).read_bytes()).decode()


def stale_images() -> list[str]:
    """Embedded diagrams that differ from their file in book/images (or whose file is gone)."""
    bad = []
    for nb in NOTEBOOKS:
        for cell in read_notebook(nb)["cells"]:
            for m in IMG.finditer(cell_text(cell)):
                f = IMAGES / m.group(2)
                if not f.exists() or m.group(4) != svg_data_uri(m.group(2)):
                    bad.append(f"{nb.name}: {m.group(2)}")
    return bad


def _embed(text: str) -> str:
    return IMG.sub(
        lambda m: (
            f'<img {m.group(1)}data-file="{m.group(2)}"{m.group(3)}src="data:image/svg+xml;'
            f'base64,{svg_data_uri(m.group(2))}"'
        ),
        text,
    )


def _strip_code(markdown: str) -> str:
    markdown = re.sub(r"^(```|~~~).*?^\1", "", markdown, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", markdown)


def relative_targets(nb_path: Path) -> list[str]:
    """Relative images and links in ``nb_path``'s markdown that break when the notebook is
    opened alone. Allowed: links to another chapter notebook of this book (``04_training.ipynb``,
    with or without ``#anchor``): opened from GitHub, Colab resolves ``book/04_training.ipynb``
    beside this one to that chapter's own Colab page, and the book build to its HTML page."""
    bad = []
    for cell in read_notebook(nb_path)["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        text = _strip_code(cell_text(cell))
        images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text) + re.findall(
            r"<img [^>]*src=\"([^\"]+)\"", text
        )
        for target in images:
            if not target.startswith(("data:", "https://")):
                bad.append(f"image {target}")
        links = re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)", text) + re.findall(
            r"<a [^>]*href=\"([^\"]+)\"", text
        )
        for target in links:
            if target.startswith(("https://", "http://", "mailto:", "#", "data:")):
                continue
            page = target.split("#")[0]
            if not (re.fullmatch(r"\d\d_\w+\.ipynb", page) and (BOOK / page).exists()):
                bad.append(f"link {target}")
    return bad


def sync() -> list[str]:
    """Write `_config.yml`'s address into every copy and re-embed every diagram; returns the
    files changed."""
    url, branch = configured()
    owner, name = _owner_name(url)
    changed = []
    for nb in NOTEBOOKS:
        data = read_notebook(nb)
        before = json.dumps(data)
        for cell in data["cells"]:
            set_text(cell, _embed(_rewrite(cell_text(cell), owner, name, branch)))
        if json.dumps(data) != before:
            write_notebook(nb, data)
            changed.append(str(nb.relative_to(ROOT)))
    for path in (ROOT / "README.md", PACKAGE_ADDRESS):
        text = path.read_text()
        new = _rewrite(text, owner, name, branch)
        if new != text:
            path.write_text(new)
            changed.append(str(path.relative_to(ROOT)))
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["sync"]:
        sys.exit("usage: python tests/book_tools.py sync")
    done = sync()
    print(
        "rewrote: " + ", ".join(done)
        if done
        else "every copy of the address and every diagram is current"
    )
