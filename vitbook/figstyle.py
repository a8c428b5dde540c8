"""The book's figure style, and a check that every figure reads at page width.

The book's text column is 688 CSS pixels wide. A matplotlib figure shown inline takes one CSS
pixel per dot at ``figure.dpi`` (100 here; the "retina" format draws twice as many dots and
halves them back), so a figure wider than 6.9 inches is scaled down to fit, and its text with
it: 8-point labels on a 12-inch figure land as 4.6 points. `book_style` sets text sizes of 9 points
and more and sharp (retina) output; `text_on_page` measures the smallest text a figure puts
on the page, found by drawing it; `book_style` also records that size for every figure a
notebook shows, and `too_small` lists the figures under `MIN_TEXT_PT`, for the Checks cell.
The same draw finds text that collides: two labels whose boxes overlap, or a label its clip box
cuts (`overlapping_text`); `collisions` lists them for every figure shown.
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
_collided: list[str] = []  # every collision found in a figure shown
OVERLAP_PX = 1.5  # boxes that overlap by less than this in either direction only touch


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

    drawn = {}  # the Text artists drawn, by id (a text of several lines is drawn line by line)

    def spy(gc, x, y, s, prop, angle, *args, **kwargs):
        if str(s).strip():
            sizes.append((prop.get_size_in_points(), str(s)))
            mtext = kwargs.get("mtext")
            if mtext is not None:
                drawn[id(mtext)] = mtext
        return draw_text(gc, x, y, s, prop, angle, *args, **kwargs)

    renderer.draw_text = spy
    try:
        fig.draw(renderer)
    finally:
        del renderer.draw_text
    fig._vitbook_drawn = (renderer, list(drawn.values()))  # for overlapping_text: no second draw
    if not sizes:
        return float("inf"), ""
    width_px = fig.get_tightbbox(renderer).width * fig.dpi
    scale = min(1.0, column_px / width_px)
    size, text = min(sizes)
    return size * fig.dpi / 72 / CSS_PX_PER_PT * scale, text


def overlapping_text(fig) -> list[str]:
    """Text in ``fig`` that collides: pairs of drawn labels whose boxes overlap (by more than
    `OVERLAP_PX` both ways), and labels that their own clip box cuts. Described, one a line."""
    if getattr(fig, "_vitbook_drawn", None) is None:
        text_on_page(fig)
    renderer, drawn = fig._vitbook_drawn
    texts = []
    for t in drawn:
        try:
            box = t.get_window_extent(renderer)
        except (RuntimeError, ValueError):
            continue
        if box.width > 0 and box.height > 0:
            texts.append((t, box))
    out = []
    for i, (a, ba) in enumerate(texts):
        for b, bb in texts[i + 1 :]:
            dx = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            dy = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            if dx > OVERLAP_PX and dy > OVERLAP_PX:
                out.append(f"'{a.get_text()[:25]}' overlaps '{b.get_text()[:25]}'")
        clip = a.get_clip_box() if a.get_clip_on() else None
        if clip is not None and (
            ba.x0 < clip.x0 - OVERLAP_PX or ba.x1 > clip.x1 + OVERLAP_PX
            or ba.y0 < clip.y0 - OVERLAP_PX or ba.y1 > clip.y1 + OVERLAP_PX
        ):  # fmt: skip
            out.append(f"'{a.get_text()[:25]}' is cut by its axes")
    return out


def book_style() -> None:
    """The book's matplotlib style (text of 9 points and more, 100 dpi) and, in IPython, sharp
    retina output and printed lines folded to the column (`show.fold_printouts`); every figure
    shown from then on has its smallest text recorded (`too_small`).
    Safe to call more than once."""
    plt.rcParams.update(STYLE)
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None or not hasattr(ip, "display_formatter"):
        return
    from .show import fold_printouts

    fold_printouts()  # and printouts as wide as the column at most
    from matplotlib.figure import Figure
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats("retina")
    png = ip.display_formatter.formatters["image/png"]
    inner = png.lookup_by_type(Figure)
    if getattr(inner, "vitbook_records", False):
        return

    def recording(fig, *args, **kwargs):
        size, text = text_on_page(fig)
        number = getattr(fig, "number", -1)
        _shown.append((number, size, text))
        _collided.extend(f"figure {number}: {c}" for c in overlapping_text(fig))
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


def collisions() -> list[str]:
    """Text that collides in the figures shown since `book_style` (`overlapping_text`)."""
    return list(_collided)
