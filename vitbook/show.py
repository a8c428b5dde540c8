"""What a page shows besides figures: the package's own source code, highlighted (`source`),
and tables as HTML (`table`). Both return IPython display objects, which render the same in
Jupyter, Colab and the built book.
"""

from __future__ import annotations

import inspect
import textwrap


def source(*objects, skip_docstring: bool = False):
    """The source code of classes or functions of the package, highlighted, for the page: the
    notebook shows the code it runs, taken from ``vitbook`` itself, so the page and the code can
    never disagree. Returns an ``IPython.display.Code`` (renders in Jupyter, Colab and the
    built book). ``skip_docstring`` drops each function's docstring to keep the page short."""
    from IPython.display import Code

    parts = []
    for obj in objects:
        try:
            src = textwrap.dedent(inspect.getsource(obj))
        except TypeError as e:
            raise TypeError(
                f"show_source takes classes and functions, got {type(obj).__name__}: {e}"
            ) from None
        if skip_docstring and obj.__doc__:
            doc = inspect.getdoc(obj)
            start = src.find('"""')
            end = src.find('"""', start + 3) if start >= 0 else -1
            if start >= 0 and end > start and doc.split("\n")[0] in src[start:end]:
                line_end = src.find("\n", end)
                src = (
                    src[:start].rstrip(" ") + src[line_end + 1 :].lstrip("\n")
                    if line_end > 0
                    else src
                )
        parts.append(src.rstrip())
    return Code("\n\n\n".join(parts), language="python")


def table(rows: dict, index: str = "", caption: str | None = None):
    """A table for the page as HTML (``IPython.display.HTML``; renders in Jupyter, Colab and the
    built book, and wraps to the column where a printed table would run off it). ``rows`` maps
    each row's name to a dict of column name -> cell (strings, or numbers shown as they are)."""
    from html import escape

    from IPython.display import HTML

    if not rows:
        raise ValueError("html_table needs at least one row: got an empty dict")
    columns = list(dict.fromkeys(c for r in rows.values() for c in r))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in [index, *columns])
    body = "".join(
        f"<tr><th>{escape(str(name))}</th>"
        + "".join(f"<td>{escape(str(r.get(c, '')))}</td>" for c in columns)
        + "</tr>"
        for name, r in rows.items()
    )
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return HTML(
        f'<table class="vitbook-table">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )
