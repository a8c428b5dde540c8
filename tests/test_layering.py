"""The package's layering, read from its source: the library knows nothing of the book's
experiments, plotting and training stay apart, and no module grows past about 400 lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "vitbook"
LIMIT = 400  # lines a module


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str) -> set[str]:
    """Every vitbook module that ``module`` imports, at the top or inside a function."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vitbook")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("vitbook"):
                continue
            for a in node.names:  # `from . import data` names a module; `from .data import x` not
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in out if m in MODULES and m != module}


def is_application(module: str) -> bool:
    """The book's experiments and the command that runs its benchmarks sit on top."""
    return module.startswith("vitbook.recipes") or module == "vitbook.bench"


LIBRARY = sorted(m for m in MODULES if not is_application(m))


def test_the_reader_sees_real_edges():
    # the negative control: the import reader finds imports that are there, both kinds
    assert "vitbook.loops" in imports("vitbook.train")  # from .loops import ...
    assert "vitbook.zoo" in imports("vitbook.recipes.classifiers")  # from .. import data, zoo
    assert "vitbook.recipes" in imports("vitbook.bench")  # from vitbook.recipes import ...
    assert "vitbook.recipes.classifiers" in imports("vitbook.recipes.selfsup")


@pytest.mark.parametrize("module", LIBRARY)
def test_no_library_module_imports_the_recipes(module):
    assert not {m for m in imports(module) if m.startswith("vitbook.recipes")}, module


def test_training_does_not_plot_and_measuring_does_not_train():
    assert "vitbook.viz" not in imports("vitbook.train")
    assert "vitbook.viz" not in imports("vitbook.runs")
    assert "vitbook.train" not in imports("vitbook.metrics")


def test_the_generic_loop_knows_no_dataset_specific_augmentation():
    for module in ("vitbook.train", "vitbook.runs", "vitbook.loops"):
        assert "vitbook.transforms" not in imports(module), module


def test_the_zoo_is_a_cache_that_knows_no_model():
    assert not imports("vitbook.zoo") & {"vitbook.train", "vitbook.ssl", "vitbook.transfer"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_about_400_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= LIMIT, f"{module} has {lines} lines"


def floors() -> dict[str, int]:
    """Each module's floor: 1 + the highest floor among the modules it imports."""
    memo: dict[str, int] = {}

    def floor(m, stack=()):
        if m in stack:
            raise AssertionError(f"an import cycle: {' -> '.join((*stack, m))}")
        if m not in memo:
            memo[m] = 1 + max((floor(d, (*stack, m)) for d in imports(m)), default=0)
        return memo[m]

    for m in MODULES:
        floor(m)
    return memo


def test_the_library_has_no_cycles_and_the_recipes_are_the_top():
    f = floors()
    top_library = max(f[m] for m in LIBRARY if m != "vitbook")
    assert all(f[m] > f["vitbook.zoo"] for m in MODULES if m.startswith("vitbook.recipes."))
    assert top_library <= 5, {m: f[m] for m in LIBRARY}
