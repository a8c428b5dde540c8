"""The built book in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by
Playwright opens every page of _build/html from a local HTTP server. Run by `make browser-test`
after `make book`; screenshots land in _build/screenshots/."""

import functools
import http.server
import threading
from pathlib import Path

import exercise_tools
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
REPO = "https://colab.research.google.com/github/vitbook/vitbook/blob/main/"

pytestmark = pytest.mark.browser


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [c["file"] for c in part["chapters"]]
    return pages


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail("_build/html is missing: run `make book` first (make browser-test does)")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make browser-test does)")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield b
        b.close()


def open_page(browser, url):
    """Open url and record console errors, page errors, failed and non-local requests."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on(
        "response",
        lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None,
    )
    page.on(
        "request",
        lambda r: (
            problems.append(f"non-local request: {r.url}")
            if not r.url.startswith(("http://127.0.0.1", "data:", "blob:", "about:"))
            else None
        ),
    )
    page.goto(url, wait_until="networkidle")
    page.wait_for_timeout(300)
    return page, problems


# Every code block, text output, table, figure and plotly plot: wider than the article column, or
# wider inside than its own box (a scroll bar), is "too wide". Returns a description of each.
TOO_WIDE = """() => {
  const column = (document.querySelector('article.bd-article') || document.querySelector('main')).getBoundingClientRect();
  const blocks = document.querySelectorAll('article div.cell_input pre, article div.cell_output pre, article div.highlight pre, '
    + 'article div.cell_output table, article div.cell_output img, article .vitbook-plotly, article table.vitbook-table');
  const bad = [];
  for (const el of blocks) {
    const r = el.getBoundingClientRect();
    if (r.width === 0) continue;
    if (r.right > column.right + 1 || r.left < column.left - 1 || el.scrollWidth > el.clientWidth + 1) {
      const what = (el.tagName === 'IMG' ? 'img ' + el.src.slice(-30) : el.tagName + ' ' + el.textContent.trim().slice(0, 50));
      bad.push(`${what} (${Math.round(el.scrollWidth)} px in a ${Math.round(column.width)} px column)`);
    }
  }
  return bad;
}"""

# Every plotly figure drawn and no wider than its box.
SETTLED = """() => Array.from(document.querySelectorAll('article .vitbook-plotly')).every(
  el => el.querySelector('svg.main-svg') && el.scrollWidth <= el.clientWidth + 1)"""

# Text output whose lines the column wraps: a printout that should have been a table or a figure.
# Each output block is measured against a copy of itself that may not wrap.
WRAPPED = """() => {
  const bad = [];
  for (const el of document.querySelectorAll('article div.cell_output pre, article div.output pre')) {
    if (!el.textContent.trim() || el.getBoundingClientRect().width === 0) continue;
    if (el.closest('.vitbook-source')) continue;  // code listings wrap by design, indentation kept
    const copy = el.cloneNode(true);
    copy.style.cssText = 'white-space: pre; position: absolute; visibility: hidden; width: auto; max-width: none';
    el.parentNode.appendChild(copy);
    const wraps = el.getBoundingClientRect().height > copy.getBoundingClientRect().height + 2;
    copy.remove();
    if (wraps) {
      const longest = el.textContent.split('\\n').reduce((a, b) => (b.length > a.length ? b : a), '');
      bad.push(longest.trim().slice(0, 70));
    }
  }
  return bad;
}"""

# Widgets saved hidden (a progress bar that closed itself) that still take room on the page.
BLANK_WIDGETS = """() => Array.from(document.querySelectorAll('.widget-subarea')).filter(s =>
  s.getBoundingClientRect().height > 0 && s.children.length > 0
  && Array.from(s.children).every(c => getComputedStyle(c).visibility === 'hidden')).length"""

# Is the element (a selector) drawn on top at its corners and centre, i.e. not covered by another?
COVERED = """(selector) => {
  const el = document.querySelector(selector);
  const r = el.getBoundingClientRect();
  const points = [[r.left + 3, r.top + 3], [r.right - 3, r.top + 3], [r.left + 3, r.bottom - 3],
                  [r.right - 3, r.bottom - 3], [(r.left + r.right) / 2, (r.top + r.bottom) / 2]];
  return points.filter(([x, y]) => document.elementFromPoint(x, y) !== el).map(p => p.map(Math.round).join(','));
}"""


@pytest.mark.parametrize("doc", toc_pages())
def test_page_loads_offline_with_no_errors_and_every_figure_drawn(browser, server, doc):
    html = doc + ".html"
    page, problems = open_page(browser, f"{server}/{html}")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{Path(doc).name}.png"), full_page=True)
    assert problems == [], "\n".join(problems)
    plots = page.locator(".vitbook-plotly")
    if plots.count():
        assert page.evaluate("typeof window.Plotly") == "object", (
            "plotly.js did not load (captured by require.js?)"
        )
        for i in range(plots.count()):
            assert plots.nth(i).locator("svg.main-svg").count() > 0, (
                f"plotly figure {i} did not draw"
            )
    if doc.startswith("book/0") or doc.startswith("book/1"):
        # matplotlib figures came through as images, and they loaded
        imgs = page.locator("div.cell_output img")
        drawn = page.locator(".vbd canvas").count()  # chapter 14's widget draws on canvases
        assert imgs.count() > 0 or drawn > 0, "no figure in a chapter page"
        assert page.evaluate(
            "Array.from(document.querySelectorAll('div.cell_output img')).every(i => i.complete && i.naturalWidth > 0)"
        )
        # the Colab launch button points at this notebook
        hrefs = page.eval_on_selector_all(
            "a[href*='colab.research.google.com']", "els => els.map(e => e.href)"
        )
        assert f"{REPO}{doc}.ipynb" in hrefs, hrefs
        # no stray object reprs, and the chapter ends with what a learner takes away
        text = page.inner_text("main")
        assert "<torch._C.Generator" not in text, "a seed call's return value is on the page"
        # an exception in a display formatter leaves a traceback on the page, not a failed build
        assert "Traceback (most recent call last)" not in text, "a traceback is on the page"
        headings = page.eval_on_selector_all("main h2", "els => els.map(e => e.textContent)")
        for section in ("Key takeaways", "Exercises", "References"):
            assert any(section in h for h in headings), f"no '{section}' section: {headings}"
        # every measured number a takeaway quotes was computed on this page
        takeaways = page.inner_text("section#key-takeaways")
        outputs = "\n".join(
            page.eval_on_selector_all("div.cell_output", "els => els.map(e => e.innerText)")
        )
        unbacked = exercise_tools.unbacked_numbers(takeaways, outputs)
        assert unbacked == [], f"takeaway numbers no output of the page shows: {unbacked}"
        external = page.eval_on_selector_all(
            "main a[href^='https://']:not([href*='colab.research.google.com'])",
            "els => els.length",
        )
        assert external > 0, "no external link (the References link the papers)"
    blank = page.evaluate(BLANK_WIDGETS)
    assert blank == 0, f"{blank} hidden widget(s) leave a blank strip on the page"
    try:  # plotly figures fit their box once the page's scripts have run: give them the time
        page.wait_for_function(SETTLED, timeout=3000)
    except Exception:
        pass  # still too wide: reported below
    too_wide = page.evaluate(TOO_WIDE)
    assert too_wide == [], "blocks wider than the column:\n" + "\n".join(too_wide)
    wrapped = page.evaluate(WRAPPED)
    assert wrapped == [], "printouts whose lines wrap (make them tables or figures):\n" + "\n".join(
        wrapped
    )
    if doc == "book/09_clustering":
        image = page.locator(".vitbook-hover-image").first
        image.scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        hidden = page.evaluate(COVERED, ".vitbook-hover-image")
        assert hidden == [], f"the hover image is covered on load at {hidden}"
    page.close()


def test_attention_explorer_shows_every_head_and_takes_any_query(browser, server):
    doc = "book/06_attention_maps"
    if doc not in toc_pages():
        pytest.skip("chapter 6 is not in the book yet")
    page, problems = open_page(browser, f"{server}/{doc}.html")
    box = page.locator(".vitbook-explorer-controls").first
    box.scroll_into_view_if_needed()
    plot_id = box.get_attribute("id").removesuffix("-controls")
    figure = page.locator(f"#{plot_id}")
    page.wait_for_function(
        f"document.getElementById('{plot_id}-controls').getAttribute('data-state') !== null"
    )
    meta = page.evaluate(
        f"(() => {{ const M = document.getElementById('{plot_id}').layout.meta; return {{heads: M.heads, traces: M.heat_traces}}; }})()"
    )
    assert len(meta["traces"]) == meta["heads"] + 2 >= 3, (
        meta
    )  # every head at once, their mean, the rollout

    def heat():
        return page.evaluate(
            f"JSON.stringify(document.getElementById('{plot_id}').data.map(t => t.z))"
        )

    SHOTS.mkdir(parents=True, exist_ok=True)
    figure.screenshot(path=str(SHOTS / "explorer_before.png"))
    before = heat()
    box.locator('select[data-role="query"]').select_option("6")  # patch (row 1, col 1)
    page.wait_for_timeout(300)
    title = page.evaluate(f"document.getElementById('{plot_id}').layout.title.text")
    assert box.get_attribute("data-state").endswith("-6") and "patch (row 1, col 1)" in title, title
    assert heat() != before, "choosing another query did not change the maps"
    # a click on a panel picks the patch under the pointer as the query
    panel = page.locator(f"#{plot_id} .nsewdrag[data-subplot='x3y3']").first
    panel.click(
        position={
            "x": panel.bounding_box()["width"] * 0.62,
            "y": panel.bounding_box()["height"] * 0.15,
        }
    )
    page.wait_for_timeout(300)
    query = int(box.locator('select[data-role="query"]').input_value())
    assert query not in (0, 6) and box.get_attribute("data-state").endswith(f"-{query}"), query
    # ... and so does a click on the image panel (it used to ignore clicks)
    image_panel = page.locator(f"#{plot_id} .nsewdrag[data-subplot='xy']").first
    bb = image_panel.bounding_box()
    image_panel.click(position={"x": bb["width"] * 0.1, "y": bb["height"] * 0.9})
    page.wait_for_timeout(300)
    from_image = int(box.locator('select[data-role="query"]').input_value())
    assert from_image != query and box.get_attribute("data-state").endswith(f"-{from_image}"), (
        from_image
    )
    query = from_image
    figure.screenshot(path=str(SHOTS / "explorer_after.png"))
    box.locator('select[data-role="image"]').select_option("5")
    box.locator('select[data-role="layer"]').select_option("0")
    page.wait_for_timeout(300)
    assert box.get_attribute("data-state") == f"5-0-{query}"
    # one colour scale for every frame
    scale = page.evaluate(f"document.getElementById('{plot_id}').layout.coloraxis.cmax")
    assert scale == page.evaluate(f"document.getElementById('{plot_id}').layout.meta.zmax") > 0
    # ... or each panel on its own scale, on request; and the class token's weight as a bar
    box.locator('select[data-role="scale"]').select_option("panel")
    page.wait_for_timeout(300)
    own = page.evaluate(
        f"(() => {{ const gd = document.getElementById('{plot_id}'); return gd.layout.meta.heat_traces.map(i => [gd.data[i].coloraxis || null, gd.data[i].zmax]); }})()"
    )
    assert all(c is None and z > 0 for c, z in own) and len({z for _, z in own}) > 1, own
    bars = page.evaluate(
        f"(() => {{ const gd = document.getElementById('{plot_id}'); return gd.layout.meta.cls_shapes.map(i => gd.layout.shapes[i].x1); }})()"
    )
    titles = page.evaluate(
        f"(() => {{ const gd = document.getElementById('{plot_id}'); return gd.layout.annotations.slice(1, 1 + gd.layout.meta.heads + 2).map(a => a.text); }})()"
    )
    assert all(
        abs(b - float(t.split("to class token ")[1])) < 0.006 for b, t in zip(bars, titles)
    ), (bars, titles)
    box.locator('select[data-role="scale"]').select_option("shared")
    page.wait_for_timeout(200)
    # the live widget's place holds its still and a note, not controls that cannot redraw
    assert page.locator("div.vitbook-widget-still img").count() == 1
    assert (
        page.locator("div.cell_output .widget-dropdown, div.cell_output .widget-slider").count()
        == 0
    )
    assert problems == [], "\n".join(problems)
    page.close()


def test_the_index_lists_the_books_terms(browser, server):
    page, problems = open_page(browser, f"{server}/genindex.html")
    entries = page.eval_on_selector_all("table.indextable a", "els => els.map(e => e.textContent)")
    assert len(entries) >= 30, entries  # the glossary's terms
    assert any("attention rollout" in e for e in entries), entries
    assert problems == [], "\n".join(problems)
    page.close()


def test_the_wrap_check_finds_a_printout_that_wraps(browser):
    # the negative control: a page with one long printed line in a narrow column, one short one
    page = browser.new_page(viewport={"width": 800, "height": 600})
    long_line = "encoder " + "  ".join(f"{v:6.2f}%" for v in range(14))
    page.set_content(
        "<article style='width:400px'><div class='cell_output'><pre style='white-space:pre-wrap'>"
        f"{long_line}</pre></div><div class='cell_output'><pre style='white-space:pre-wrap'>"
        "short line\nand another</pre></div></article>"
    )
    found = page.evaluate(WRAPPED)
    page.close()
    assert len(found) == 1 and found[0].startswith("encoder"), found
