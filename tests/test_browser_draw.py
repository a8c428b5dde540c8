"""Draw a digit (chapter 14) in a real browser: the page's forward pass against torch's, strokes
drawn with the mouse, the page with the network blocked, and the widget at a desktop's and a
phone's width. Run by `make browser-test` over the built book; the numbers land in
_build/screenshots/draw_a_digit.json and the pictures beside it."""

import json
import math

import pytest
import torch
from test_browser import SHOTS, browser, open_page, server  # noqa: F401  (fixtures)

from vitbook import attention, data, drawdigit
from vitbook.model import ViT, ViTConfig

pytestmark = pytest.mark.browser
DOC = "book/14_draw_a_digit"
# Strokes on the 280 x 280 pad, as data: lists of (x, y) points, one list per pen-down.
STROKES = {
    1: [[(140, 45), (141, 110), (142, 170), (143, 235)]],
    0: [[(140 + 62 * math.sin(t / 24 * 2 * math.pi), 140 - 92 * math.cos(t / 24 * 2 * math.pi)) for t in range(26)]],
    7: [[(70, 62), (140, 60), (212, 60), (170, 140), (128, 236)]],
}  # fmt: skip
RESULTS = {}


def widget(page):
    page.wait_for_function("window.vitbookDrawWidgets && window.vitbookDrawWidgets.length > 0")
    return page.locator(".vbd").first


def torch_model(page) -> ViT:
    """The ViT the page runs, rebuilt in torch from the weights the page carries."""
    payload = page.evaluate(
        "(() => { const s = document.querySelectorAll('script'); for (const x of s) { const m = x.textContent.match(/VitbookDraw\\.mount\\([^,]+, (\\{.*\\})\\);/s); if (m) return m[1]; } })()"
    )
    payload = json.loads(payload)
    cfg = ViTConfig(in_channels=1, pool="cls", fused_attn=False, **payload["cfg"])
    model = ViT(cfg).eval()
    model.load_state_dict(drawdigit.decode_weights(payload))
    return model


def page_forward(page, x: torch.Tensor) -> dict:
    out = page.evaluate(
        """(xs) => { const w = window.vitbookDrawWidgets[0].vitbook;
             return xs.map(x => { const r = w.forward(Float32Array.from(x)); return [r.logits, r.attn[1], r.lens]; }); }""",
        x.reshape(len(x), 784).tolist(),
    )
    return {
        "logits": torch.tensor([o[0] for o in out]),
        "attn": torch.tensor([o[1] for o in out]),  # (B, heads, T, T): layer index 1
        "lens": torch.tensor([o[2] for o in out]).transpose(0, 1),  # (blocks + 1, B, classes)
    }


def test_the_page_gives_torchs_logits_and_attention_and_a_perturbed_weight_does_not(
    browser,  # noqa: F811
    server,  # noqa: F811
):
    page, problems = open_page(browser, f"{server}/{DOC}.html")
    widget(page)
    model = torch_model(page)
    x = data.mnist("test").tensors()[0][:200]
    with torch.no_grad():
        logits, maps = model(x, return_attn=True)
    got = page_forward(page, x)
    logit_diff = (got["logits"] - logits).abs().max().item()
    attn_diff = (got["attn"] - maps[1]).abs().max().item()
    lens_diff = (got["lens"] - attention.logit_lens(model, x)).abs().max().item()
    RESULTS.update(
        logit_diff=logit_diff, attention_diff=attn_diff, lens_diff=lens_diff, digits=len(x)
    )
    assert logit_diff < 1e-4 and attn_diff < 1e-4 and lens_diff < 1e-4, RESULTS
    # the negative control: one weight of the page's model moved by 1e-2, the same check fails
    page.evaluate(
        "window.vitbookDrawWidgets[0].vitbook.perturb('blocks.1.attn.qkv.weight', 5, 0.01)"
    )
    perturbed = page_forward(page, x[:50])
    moved = (perturbed["logits"] - logits[:50]).abs().max().item()
    moved_attn = (perturbed["attn"] - maps[1][:50]).abs().max().item()
    RESULTS.update(perturbed_logit_diff=moved, perturbed_attention_diff=moved_attn)
    assert moved > 1e-4 and moved_attn > 1e-4, RESULTS
    assert problems == [], "\n".join(problems)
    page.close()


@pytest.mark.parametrize("digit", sorted(STROKES))
def test_strokes_drawn_with_the_mouse_are_read_as_the_digit(browser, server, digit):  # noqa: F811
    page, problems = open_page(browser, f"{server}/{DOC}.html")
    root = widget(page)
    root.locator("button", has_text="clear").click()
    pad = root.locator("canvas.vbd-pad")
    pad.scroll_into_view_if_needed()
    box = pad.bounding_box()
    k = box["width"] / 280
    for stroke in STROKES[digit]:
        page.mouse.move(box["x"] + stroke[0][0] * k, box["y"] + stroke[0][1] * k)
        page.mouse.down()
        for px, py in stroke[1:]:
            page.mouse.move(box["x"] + px * k, box["y"] + py * k, steps=6)
        page.mouse.up()
    page.wait_for_timeout(200)
    predicted = page.evaluate("window.vitbookDrawWidgets[0].vitbook.predict()")
    probs = page.evaluate(
        "(() => { const l = window.vitbookDrawWidgets[0].vitbook.state.result.logits; const m = Math.max(...l);"
        " const e = l.map(v => Math.exp(v - m)); const s = e.reduce((a, b) => a + b); return e.map(v => v / s); })()"
    )
    RESULTS[f"drawn {digit}"] = {"predicted": predicted, "probability": round(probs[predicted], 4)}
    SHOTS.mkdir(parents=True, exist_ok=True)
    root.screenshot(path=str(SHOTS / f"draw_a_digit_drawn_{digit}.png"))
    assert predicted == digit, RESULTS
    assert problems == [], "\n".join(problems)
    page.close()


def test_the_widget_works_offline_and_fits_a_desktop_and_a_phone(browser, server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    blocked = []

    def only_local(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server}/{DOC}.html", wait_until="load")
    root = widget(page)
    ms = page.evaluate("window.vitbookDrawWidgets[0].vitbook.benchmark(50)")
    bytes_ = page.evaluate(
        "(() => { for (const x of document.querySelectorAll('script')) if (x.textContent.includes('VitbookDraw.mount(')) return x.textContent.length; })()"
    )
    RESULTS.update(forward_ms=round(ms, 2), blocked_requests=len(blocked), payload_chars=bytes_)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 400):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(200)
        root.scroll_into_view_if_needed()
        root.screenshot(path=str(SHOTS / f"draw_a_digit_{width}.png"))
        cut = page.evaluate(
            """(w) => Array.from(document.querySelectorAll('.vbd, .vbd *')).filter(e => {
                 const r = e.getBoundingClientRect(); return r.width > 0 && (r.right > w + 1 || r.left < -1); })
               .map(e => e.className || e.tagName)""",
            width,
        )
        assert cut == [], f"cut off at {width} px: {cut}"
    (SHOTS / "draw_a_digit.json").write_text(json.dumps(RESULTS, indent=1))
    assert errors == [], errors
    context.close()
