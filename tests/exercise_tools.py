"""What keeps a chapter's closing sections honest, checked without running the chapter:

* `exercise_problems`: the starter code of every exercise (the inline code spans of the
  "Exercises" section that are Python) names only what the chapter defines, what its imports
  bring, or builtins; every ``module.attribute`` it reaches exists; and every call to a
  function of the package binds to that function's signature. Cheap: the chapter's imports
  are executed, nothing else, so no model is trained.
* `unbacked_numbers`: a measured number in the "Key takeaways" (a decimal or a percentage)
  must appear in the page's outputs, where the chapter computed it.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import re

SPAN = re.compile(r"`([^`\n]+)`")
MEASURED = re.compile(r"(?<![\w.])\d[\d,]*\.\d+%?|(?<![\w.])\d[\d,]*%")


def section(markdown: str, title: str) -> str:
    """The text of the ``## title`` section of a markdown cell ('' if it has none)."""
    if f"## {title}" not in markdown:
        return ""
    return markdown.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def snippets(text: str) -> list[str]:
    """The inline code spans of ``text`` that parse as Python and run something: a call or an
    import (names, expressions and prose fragments such as ``.permute(...)`` are skipped)."""
    return [span for span in parseable(text) if _runs_something(ast.parse(span))]


def parseable(text: str) -> list[str]:
    """Every inline code span of ``text`` that parses as Python."""
    out = []
    for span in SPAN.findall(text):
        try:
            ast.parse(span)
        except SyntaxError:
            continue
        out.append(span)
    return out


def _runs_something(tree: ast.AST) -> bool:
    return any(isinstance(n, (ast.Call, ast.Import, ast.ImportFrom)) for n in ast.walk(tree))


def reader_names(text: str) -> set[str]:
    """The names an exercise asks the reader to define, in any of its code spans
    (``total = ...``, ``for blk in ...``)."""
    names = set()
    for span in parseable(text):
        names |= bound_names(ast.parse(span))
    return names


def run_imports(snippet: str, namespace: dict) -> None:
    """Execute the import statements of ``snippet`` (an exercise's ``from vitbook import
    train``) into ``namespace``."""
    for stmt in ast.parse(snippet).body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module([stmt], []), "<exercise imports>", "exec"), namespace)


def bound_names(tree: ast.AST) -> set[str]:
    """Every name that ``tree`` binds: assignments, loop and comprehension targets, function and
    class definitions, their arguments, imports, ``with ... as``, ``except ... as``."""
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            names.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.arg):
            names.add(n.arg)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            names.add(n.name)
    return names


def chapter_namespace(code_cells: list[str]) -> tuple[set[str], dict]:
    """The names the chapter's code binds, and a namespace holding what its imports bring
    (the import statements are executed; nothing else is)."""
    names, namespace = set(), {}
    for code in code_cells:
        try:
            tree = ast.parse(code)
        except SyntaxError:  # a cell with IPython magics
            continue
        names |= bound_names(tree)
        for stmt in tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([stmt], []), "<chapter imports>", "exec"), namespace)
    return names, namespace


def _resolve(node: ast.AST, namespace: dict):
    """The object a ``name.attr.attr`` chain denotes in ``namespace``; KeyError if its root is
    not there, AttributeError (naming the chain) if an attribute is missing."""
    if isinstance(node, ast.Name):
        return namespace[node.id]
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, namespace)
        if not hasattr(base, node.attr):
            raise AttributeError(
                f"{ast.unparse(node)}: {ast.unparse(node.value)} has no {node.attr!r}"
            )
        return getattr(base, node.attr)
    raise KeyError(ast.unparse(node))


def exercise_problems(snippet: str, names: set[str], namespace: dict) -> list[str]:
    """What in ``snippet`` cannot run after the chapter: an undefined name, a missing attribute
    of an imported module or class, a call that does not bind to the function's signature."""
    tree = ast.parse(snippet)
    known = names | set(namespace) | set(dir(builtins)) | bound_names(tree)
    problems = [
        f"{snippet!r}: {n.id!r} is not defined in the chapter"
        for n in ast.walk(tree)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in known
    ]
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load):
            try:
                _resolve(n, namespace)
            except KeyError:
                pass  # rooted in a chapter variable: its type is not known without running
            except AttributeError as e:
                problems.append(f"{snippet!r}: {e}")
        if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute)):
            try:
                fn = _resolve(n.func, namespace)
            except (KeyError, AttributeError):
                continue
            if any(isinstance(a, ast.Starred) for a in n.args) or any(
                k.arg is None for k in n.keywords
            ):
                continue
            try:
                sig = inspect.signature(fn)
            except (TypeError, ValueError):
                continue  # a builtin without a signature
            if any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in n.args):
                continue  # `f(x, ...)`: the rest is the reader's to fill in
            try:
                sig.bind(*n.args, **{k.arg: k.value for k in n.keywords})
            except TypeError as e:
                problems.append(f"{snippet!r}: {ast.unparse(n.func)}{sig}: {e}")
    return problems


def unbacked_numbers(takeaways: str, outputs: str) -> list[str]:
    """The measured numbers of ``takeaways`` (decimals, percentages) found nowhere in
    ``outputs``. A whole percentage may be printed with decimals (``75%`` as ``75.0%``)."""
    missing = []
    for number in MEASURED.findall(takeaways):
        pattern = re.escape(number)
        if number.endswith("%") and "." not in number:
            pattern = re.escape(number[:-1]) + r"(?:\.0+)?\s?%"
        if not re.search(r"(?<![\w.])" + pattern + r"(?![\d])", outputs):
            missing.append(number)
    return missing
