"""What a page shows besides figures: the package's own source code, highlighted (`source`),
tables as HTML (`table`), printouts and captions folded to the space they have (`wrapped`,
`wrap_caption`). Both return IPython display objects, which render the same in
Jupyter, Colab and the built book.
"""

from __future__ import annotations

import inspect
import textwrap


class Source:
    """Highlighted source code for the page. Each line is its own block with a hanging indent, so
    that a line the column wraps continues under its own indentation instead of at the margin;
    the styles are inline, so the same HTML reads the same in Jupyter, Colab and the book."""

    def __init__(self, code: str):
        self.code = code
        self.data = code  # as IPython.display.Code names it

    def __repr__(self) -> str:
        return self.code

    def _repr_html_(self) -> str:
        import re

        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        html = highlight(self.code, PythonLexer(), HtmlFormatter(linespans="vbl"))
        html = html[html.index("<pre>") + 5 : html.rindex("</pre>")]
        lines = self.code.split("\n")

        def line(m):
            n = int(m.group(1)) - 1
            text = lines[n] if n < len(lines) else ""
            indent = len(text) - len(text.lstrip(" ")) + 4  # continuation lines: 4 deeper
            return (
                f'<span class="vb-line" style="display:block;padding-left:{indent}ch;'
                f'text-indent:-{indent}ch;min-height:1.2em">'
            )

        html = re.sub(r'<span id="vbl-(\d+)">', line, html).replace("\n</span>", "</span>")
        style = HtmlFormatter().get_style_defs(".vitbook-source")
        return (
            f'<style>{style}</style><div class="vitbook-source highlight"><pre '
            f'style="white-space:pre-wrap;overflow-wrap:anywhere">{html}</pre></div>'
        )


def source(*objects, skip_docstring: bool = False) -> Source:
    """The source code of classes or functions of the package, highlighted, for the page: the
    notebook shows the code it runs, taken from ``vitbook`` itself, so the page and the code can
    never disagree. Returns a `Source` (renders in Jupyter, Colab and the built book; a wrapped
    line keeps its indentation). ``skip_docstring`` drops each function's docstring."""
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
    return Source("\n\n\n".join(parts))


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


COLUMN = 74  # characters of a printout that fit the column (77.8 of the 14 px monospace in the
# built book's 688 px output box, measured in Chromium; a little less, for other fonts)


def wrapped(text: str, indent: str = "  ") -> str:
    """``text`` folded to the page's column, each paragraph on its own, continuation lines
    indented: a printout whose lines wrap on the page loses its shape."""
    return "\n".join(
        textwrap.fill(part, width=COLUMN, subsequent_indent=indent, break_on_hyphens=False)
        for part in str(text).split("\n")
    )


def error(err: BaseException) -> None:
    """Print a caught exception as the reader should see it, ``Type: message``, folded to the
    column."""
    print(wrapped(f"{type(err).__name__}: {err}"))


class _FoldingStream:
    """``sys.stdout`` with every printed line longer than the column folded (`wrapped`) as it
    is written: a chapter's printouts keep their shape on the page, in Jupyter and in Colab."""

    def __init__(self, stream):
        self._stream = stream
        self._pending = ""  # the line being written, until its newline comes

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            *lines, self._pending = self._pending.split("\n")
            self._stream.write("\n".join(_fold(line) for line in lines) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _fold(line: str) -> str:
    return line if len(line) <= COLUMN or "\r" in line else wrapped(line)


def fold_printouts() -> None:
    """From now on, fold printed lines longer than the page's column (`figstyle.book_style`
    calls it at the top of every chapter). Calling it again changes nothing."""
    import sys

    if not isinstance(sys.stdout, _FoldingStream):
        sys.stdout = _FoldingStream(sys.stdout)


def wrap_caption(text: str, width_inches: float, points: float = 9) -> str:
    """A caption broken into lines that fit a cell ``width_inches`` wide at ``points`` pt (about
    0.6 of the size per character), so that neighbours never touch: at spaces, and inside a word
    too long for a line at its hyphens and where a capital follows a small letter
    ("STIXGeneral" / "Italic"), cutting a word elsewhere only where no such place is left."""
    import re

    per_line = max(4, int(width_inches * 72 / (0.62 * points)) - 1)
    pieces = []  # (piece, whether a space comes before it)
    for word in text.split():
        parts = (
            [word]
            if len(word) <= per_line
            else re.split(r"(?<=[a-z0-9-])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=-)", word)
        )
        for i, part in enumerate(p for p in parts if p):
            while len(part) > per_line:  # no place left to break: cut
                pieces.append((part[:per_line], i == 0))
                part, i = part[per_line:], i + 1
            pieces.append((part, i == 0))
    lines = [""]
    for piece, spaced in pieces:
        joined = lines[-1] + (" " if spaced and lines[-1] else "") + piece
        if lines[-1] and len(joined) > per_line:
            lines.append(piece)
        else:
            lines[-1] = joined
    return "\n".join(lines) or text
