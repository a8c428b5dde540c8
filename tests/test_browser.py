"""The built book in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by
Playwright opens every page of _build/html from a local HTTP server. Run by `make browser-test`
after `make book`; screenshots land in _build/screenshots/."""

import functools
import http.server
import re
import threading
from pathlib import Path

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
        assert imgs.count() > 0, "no figure in a chapter page"
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
        headings = page.eval_on_selector_all("main h2", "els => els.map(e => e.textContent)")
        for section in ("Key takeaways", "Exercises", "References"):
            assert any(section in h for h in headings), f"no '{section}' section: {headings}"
        external = page.eval_on_selector_all(
            "main a[href^='https://']:not([href*='colab.research.google.com'])",
            "els => els.length",
        )
        assert external > 0, "no external link (the References link the papers)"
    page.close()


def test_attention_explorer_responds_to_a_click(browser, server):
    doc = "book/06_attention_maps"
    if doc not in toc_pages():
        pytest.skip("chapter 6 is not in the book yet")
    page, problems = open_page(browser, f"{server}/{doc}.html")
    box = page.locator(".vitbook-explorer-controls").first
    box.scroll_into_view_if_needed()
    plot_id = box.get_attribute("id").removesuffix("-controls")
    figure = page.locator(f"#{plot_id}")
    before_z = page.evaluate(f"JSON.stringify(document.getElementById('{plot_id}').data[1].z)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    figure.screenshot(path=str(SHOTS / "explorer_before.png"))
    box.locator('select[data-role="head"]').select_option("2")
    page.wait_for_function(
        f"document.getElementById('{plot_id}-controls').getAttribute('data-frame') !== null"
    )
    page.wait_for_timeout(300)
    after_z = page.evaluate(f"JSON.stringify(document.getElementById('{plot_id}').data[1].z)")
    title = page.evaluate(f"document.getElementById('{plot_id}').layout.title.text")
    figure.screenshot(path=str(SHOTS / "explorer_after.png"))
    assert box.get_attribute("data-frame").endswith("-2")
    assert after_z != before_z, "choosing another head did not change the map"
    assert re.search(r"head 2", title), title
    box.locator('select[data-role="image"]').select_option("5")
    box.locator('select[data-role="head"]').select_option("rollout")
    page.wait_for_timeout(300)
    assert box.get_attribute("data-frame") == "attn-5-rollout"
    assert problems == [], "\n".join(problems)
    page.close()
