"""Figures that read at page width: every figure the package draws puts its smallest text on
the page at 8.5 points or more, measured by drawing it (vitbook.figstyle)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vitbook import figstyle, viz  # noqa: E402
from vitbook.runs import History  # noqa: E402

figstyle.book_style()


def history():
    h = History()
    h.steps_per_epoch = 10
    h.step_loss = list(np.linspace(2, 0.1, 40))
    h.epochs = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 0.9, "val_acc": 0.91}
        for e in range(1, 5)
    ]
    h.grad_steps = list(range(0, 40, 5))
    h.grad_norms = {
        n: list(np.linspace(1, 0.1, 8))
        for n in ["patch_embed", "blocks.0", "blocks.1", "blocks.2", "head"]
    }
    return h


FIGURES = {
    "images, 16 with captions": lambda: viz.show_images(
        torch.rand(16, 1, 28, 28), [f"trouser{i}" for i in range(16)], ncols=16, size=0.7, title="t"
    ),
    "images, 32 without captions": lambda: viz.show_images(
        torch.rand(32, 1, 28, 28), ncols=16, size=0.5
    ),
    "patch grid, 4x4": lambda: viz.show_patch_grid(torch.rand(1, 28, 28), 7),
    "patch grid, 7x7": lambda: viz.show_patch_grid(torch.rand(1, 28, 28), 4),
    "history": lambda: viz.plot_history(history()),
    "gradient flow": lambda: viz.plot_grad_flow(history()),
    "confusion, 10 classes": lambda: viz.plot_confusion(
        np.random.default_rng(0).integers(0, 900, (10, 10))
    ),
    "attention heads": lambda: viz.plot_attention_heads(torch.rand(4, 17, 17).softmax(-1)),
    "class-token grid": lambda: viz.plot_cls_attention_grid(
        torch.rand(1, 28, 28), torch.rand(3, 4, 4, 4)
    ),
    "position similarity, 4x4": lambda: viz.plot_position_similarity(torch.rand(16, 4, 4)),
    "position similarity, 14x14": lambda: viz.plot_position_similarity(
        torch.rand(196, 14, 14), size=0.2
    ),
}


@pytest.mark.parametrize("name", FIGURES)
def test_every_package_figure_reads_at_page_width(name):
    fig = FIGURES[name]()
    size, text = figstyle.text_on_page(fig)
    plt.close(fig)
    assert size >= figstyle.MIN_TEXT_PT, f"{name}: '{text}' lands at {size:.1f} pt"


def test_small_text_on_a_wide_figure_is_caught():  # the negative control
    fig, ax = plt.subplots(figsize=(12, 3))
    ax.plot([0, 1])
    ax.set_title("a title at 9 pt", fontsize=9)  # 9 pt on 12 inches: scaled down to 5.4 pt
    size, text = figstyle.text_on_page(fig)
    plt.close(fig)
    assert size < figstyle.MIN_TEXT_PT and text, (size, text)


def test_hidden_tick_labels_do_not_count():
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(np.zeros((4, 4)))
    ax.axis("off")
    ax.set_title("only this", fontsize=10)
    size, text = figstyle.text_on_page(fig)
    plt.close(fig)
    assert text == "only this"


def test_a_figure_made_without_pyplot_is_measured_too():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))  # no pyplot, no canvas that draws: how the live explorer draws
    fig.subplots().set_title("a bare figure", fontsize=10)
    size, text = figstyle.text_on_page(fig)
    assert (
        text == "0.0" and size >= figstyle.MIN_TEXT_PT
    )  # its tick labels, 9 pt, are its smallest text


def test_the_live_explorers_still_reads_at_page_width():
    from conftest import tiny_config

    from vitbook import attention, explorer
    from vitbook.model import ViT

    torch.manual_seed(0)
    x = torch.rand(2, 1, 28, 28)
    maps = attention.attention_maps(ViT(tiny_config(depth=2)), x)
    live = explorer.AttentionExplorer(x, maps, attention.rollout(maps))
    size, text = figstyle.text_on_page(live.figure())
    assert size >= figstyle.MIN_TEXT_PT, (size, text)


@pytest.mark.parametrize("name", FIGURES)
def test_no_package_figure_has_text_that_collides(name):
    fig = FIGURES[name]()
    try:
        assert figstyle.overlapping_text(fig) == []
    finally:
        plt.close(fig)


def test_the_collision_check_finds_captions_that_run_together_and_labels_that_overlap():
    # the negative control: chapter 8's old captions, side by side at 9 pt in 1-inch cells
    fig, axes = plt.subplots(1, 6, figsize=(6, 1.25))
    for a in axes:
        a.set_title("unknown (train)", fontsize=9)
        a.axis("off")
    found = figstyle.overlapping_text(fig)
    plt.close(fig)
    assert len(found) == 5 and "overlaps" in found[0]
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.text(0.1, 0.5, "clipped label far outside", clip_on=True, transform=ax.transData)
    ax.set_xlim(0.5, 1)
    assert any("cut by its axes" in c for c in figstyle.overlapping_text(fig))
    plt.close(fig)


def test_long_captions_wrap_instead_of_colliding():
    fig = viz.show_images(torch.rand(6, 1, 28, 28), ["unknown (train)"] * 6, ncols=6, size=1.0)
    assert figstyle.overlapping_text(fig) == []
    assert viz.wrap_caption("unknown (train)", 1.0) == "unknown\n(train)"
    plt.close(fig)


def test_a_long_name_breaks_where_its_words_join_not_mid_word():
    # chapter 13's font names: "STIXGeneralItalic" broke as "STIXGeneralItali" / "c"
    assert viz.wrap_caption("STIXGeneralItalic", 1.0) == "STIXGeneral\nItalic"
    assert viz.wrap_caption("STIXGeneralItalic", 0.85) == "STIX\nGeneral\nItalic"
    assert viz.wrap_caption("DejaVuSerif-BoldItalic", 1.6) == "DejaVuSerif-Bold\nItalic"
    assert viz.wrap_caption("abcdefghijklmnopqrstuvwxyz", 0.85) == "abcdefghi\njklmnopqr\nstuvwxyz"
    for text in ("STIXGeneralItalic", "DejaVuSansMono-BoldOblique", "synthetic 4", "cmr10"):
        for width in (0.85, 1.0, 1.6):
            lines = viz.wrap_caption(text, width).split("\n")
            assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing lost
            assert max(map(len, lines)) <= max(4, int(width * 72 / (0.62 * 9)) - 1)
