"""The book's figure style, and a check that every figure reads at page width.

The book's text column is 688 CSS pixels wide. A matplotlib figure shown inline takes one CSS
pixel per dot at ``figure.dpi`` (100 here; the "retina" format draws twice as many dots and
halves them back), so a figure wider than 6.9 inches is scaled down to fit, and its text with
it: 8-point labels on a 12-inch figure land as 4.6 points. `book_style` sets text sizes of 9 points
and more and sharp (retina) output; `text_on_page` measures the smallest text a figure puts
on the page, found by drawing it; `book_style` also records that size for every figure a
notebook shows, and `too_small` lists the figures under `MIN_TEXT_PT`, for the Checks cell.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

COLUMN_PX = 688  # the content column of the built book, in CSS pixels
MIN_TEXT_PT = 8.5  # "about 9 points", as text lands on the page
CSS_PX_PER_PT = 96 / 72

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
    "figure.figsize": (6.4, 3.6),
}

_shown: list[tuple[int, float, str]] = []  # (figure number shown, smallest text in pt, that text)


def text_on_page(fig, column_px: int = COLUMN_PX) -> tuple[float, str]:
    """The smallest text ``fig`` draws, in points as it lands in a ``column_px``-wide column
    (figure scaled down to fit where wider), and the text itself. Drawing the figure finds
    only text that is drawn (no hidden tick labels)."""
    if not hasattr(fig.canvas, "get_renderer"):  # a bare Figure(): give it a canvas that draws
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()  # the one draw is the spied one below
    sizes: list[tuple[float, str]] = []
    draw_text = renderer.draw_text

    def spy(gc, x, y, s, prop, angle, *args, **kwargs):
        if str(s).strip():
            sizes.append((prop.get_size_in_points(), str(s)))
        return draw_text(gc, x, y, s, prop, angle, *args, **kwargs)

    renderer.draw_text = spy
    try:
        fig.draw(renderer)
    finally:
        del renderer.draw_text
    if not sizes:
        return float("inf"), ""
    width_px = fig.get_tightbbox(renderer).width * fig.dpi
    scale = min(1.0, column_px / width_px)
    size, text = min(sizes)
    return size * fig.dpi / 72 / CSS_PX_PER_PT * scale, text


def book_style() -> None:
    """The book's matplotlib style (text of 9 points and more, 100 dpi) and, in IPython, sharp
    retina output; every figure shown from then on has its smallest text recorded (`too_small`).
    Safe to call more than once."""
    plt.rcParams.update(STYLE)
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None or not hasattr(ip, "display_formatter"):
        return
    from matplotlib.figure import Figure
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats("retina")
    png = ip.display_formatter.formatters["image/png"]
    inner = png.lookup_by_type(Figure)
    if getattr(inner, "vitbook_records", False):
        return

    def recording(fig, *args, **kwargs):
        size, text = text_on_page(fig)
        _shown.append((getattr(fig, "number", -1), size, text))
        return inner(fig, *args, **kwargs)

    recording.vitbook_records = True
    png.for_type(Figure, recording)


def too_small(minimum: float = MIN_TEXT_PT) -> list[str]:
    """The figures shown since `book_style` whose smallest text lands under ``minimum``
    points on the page, described; an empty list when every one reads."""
    return [
        f"figure {n}: '{text[:30]}' lands at {size:.1f} pt"
        for n, size, text in _shown
        if size < minimum
    ]


def shown() -> int:
    """How many figures were shown (and measured) since `book_style`."""
    return len(_shown)
