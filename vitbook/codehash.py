"""What a trained result depends on, as text: the source of the code that produced it.

`code_sources(f, g)` follows functions ``f`` and ``g`` through every vitbook function, class and
UPPER_CASE constant they reach (names in their code, module attributes, local imports, closures,
default arguments) and returns their sources without comments, docstrings or layout. The zoo
(`vitbook.zoo`) hashes this into a model's cache key, so that changing any helper a training
runs retrains the model, while a comment, a docstring or an unrelated function leaves it alone.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import sys
import textwrap
import types

PACKAGE = __name__.rpartition(".")[0]  # "vitbook"
_SIMPLE = (int, float, str, bool, type(None))


# Plotting never changes a trained result: figures a recipe draws are not followed.
_KEY_SKIP_MODULES = frozenset({f"{PACKAGE}.viz"})


def _ours(obj) -> bool:
    module = getattr(obj, "__module__", None) or ""
    if module in _KEY_SKIP_MODULES:
        return False
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _simple(value) -> bool:
    """A constant whose repr is its value: numbers, strings, and containers of them."""
    if isinstance(value, _SIMPLE):
        return True
    if isinstance(value, tuple | list | set | frozenset):
        return all(_simple(v) for v in value)
    if isinstance(value, dict):
        return all(_simple(k) and _simple(v) for k, v in value.items())
    return False


def _immutable(value) -> bool:
    if isinstance(value, tuple | frozenset):
        return all(_immutable(v) for v in value)
    return isinstance(value, _SIMPLE)


def _stable_repr(value) -> str:
    if isinstance(value, set | frozenset):
        return "{" + ", ".join(sorted(_stable_repr(v) for v in value)) + "}"
    return repr(value)


def _package_modules() -> set[str]:
    package = sys.modules[PACKAGE]
    return {m.name for m in pkgutil.iter_modules(package.__path__)}


def _names(code: types.CodeType) -> set[str]:
    """Every global or attribute name a code object and the code nested in it mention."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _references(fn: types.FunctionType, modules: set[str], stop: dict) -> tuple[list, list[str]]:
    """What ``fn`` can reach: the objects its names resolve to (in its globals, or as attributes
    of the vitbook modules it names or imports), its closure and its defaults; and the simple
    constants among them (UPPER_CASE module constants, closure and default values)."""
    names = _names(fn.__code__)
    found, constants = [], []
    ours_modules = []
    stopped_here = stop.get(fn.__globals__.get("__name__"), frozenset())
    for name in sorted(names):
        value = fn.__globals__.get(name)
        if isinstance(value, types.ModuleType):
            if value.__name__.startswith(PACKAGE + ".") or value.__name__ == PACKAGE:
                ours_modules.append(value)
        elif name in fn.__globals__:
            if name not in stopped_here:
                found.append((name, value))
        elif name in modules:  # a local ``from .ssl import MAE`` names the module "ssl"
            ours_modules.append(importlib.import_module(f"{PACKAGE}.{name}"))
    for module in ours_modules:
        if module.__name__ in _KEY_SKIP_MODULES:
            continue
        for name in sorted(names):
            if name in stop.get(module.__name__, ()):
                continue
            if name in vars(module) and not isinstance(vars(module)[name], types.ModuleType):
                found.append((f"{module.__name__}.{name}", vars(module)[name]))
    objects = []
    for name, value in found:
        if _simple(value):
            short = name.rpartition(".")[2]
            if short.isupper() and not short.startswith("_"):
                constants.append(f"{name} = {_stable_repr(value)}")
        else:
            objects.append(value)
    extra = [c.cell_contents for c in (fn.__closure__ or ()) if _cell_full(c)]
    extra += list(fn.__defaults__ or ()) + list((fn.__kwdefaults__ or {}).values())
    for value in extra:
        if _simple(value):  # a list or dict in a closure is state (it changes as code runs)
            if _immutable(value):
                constants.append(f"{fn.__qualname__} closure/default {_stable_repr(value)}")
        else:
            objects.append(value)
    return objects, constants


def _cell_full(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


_SOURCES: dict[int, tuple[object, str | None]] = {}  # id -> (the object, kept alive; its source)


def _source(obj) -> str | None:
    """The source of the code object that is loaded (cached per object: reading a class's source
    parses its whole module)."""
    hit = _SOURCES.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    try:
        source = _without_comments(inspect.getsource(obj))
    except (OSError, TypeError):
        source = None
    _SOURCES[id(obj)] = (obj, source)
    return source


def _without_comments(source: str) -> str:
    """The code of ``source`` without its comments, docstrings and layout (its syntax tree),
    where it parses on its own; a lambda's line that does not is kept as written."""
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_sources(*roots, stop: dict[str, frozenset[str]] | None = None) -> list[str]:
    """The source of every vitbook function and class that ``roots`` (functions) reach, followed
    transitively through the names in their code (globals, module attributes, local imports),
    their closures and their default arguments, plus the simple constants met on the way;
    sorted, so that the order of definitions and the lines around them do not matter. The roots
    themselves are included wherever they are defined; beyond them only vitbook code is
    followed (torch and other libraries are represented by their version). ``stop`` maps a
    module's name to names in it that are not followed (the zoo's cache functions: a training
    that asks the zoo for another model depends on that model's key, not on the cache)."""
    stop = stop or {}
    modules = _package_modules()
    seen: set[int] = set()
    out: set[str] = set()
    stack = [(obj, True) for obj in roots]
    while stack:
        obj, is_root = stack.pop()
        if isinstance(obj, functools.partial):
            stack += [(v, is_root) for v in (obj.func, *obj.args, *obj.keywords.values())]
            continue
        if isinstance(obj, staticmethod | classmethod):
            obj = obj.__func__
        if isinstance(obj, property):
            stack += [(f, False) for f in (obj.fget, obj.fset, obj.fdel) if f is not None]
            continue
        if inspect.ismethod(obj):
            obj = obj.__func__
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if inspect.isfunction(obj):
            inner = inspect.unwrap(obj)  # torch.no_grad() and other decorators
            if inner is not obj:
                stack.append((inner, is_root))
                continue
            if not (is_root or _ours(obj)):
                continue
            if obj.__name__ in stop.get(obj.__module__, ()):
                continue
            source = _source(obj)
            if source is None:  # generated code (a dataclass's __init__): its class is hashed
                continue
            out.add(f"{obj.__module__}: {source}")
            objects, constants = _references(obj, modules, stop)
            out.update(f"{obj.__module__}: {c}" for c in constants)
            stack += [(o, False) for o in objects]
        elif inspect.isclass(obj):
            if not _ours(obj):
                continue
            out.add(f"{obj.__module__}: {_source(obj)}")
            stack += [(base, False) for base in obj.__mro__[1:]]
            stack += [(v, False) for v in vars(obj).values() if not _simple(v)]
        elif not isinstance(obj, types.ModuleType) and _ours(type(obj)):
            stack.append((type(obj), False))  # an instance of a vitbook class
    return sorted(out)
