"""Figures: matplotlib for static plots, plotly where a reader wants to hover or pick, and
ipywidgets for live exploration in a kernel.

Every function returns its figure (matplotlib ``Figure`` or plotly ``go.Figure``) and draws
nothing else, so a notebook decides what to show. Plotly figures are shown with `show_plotly`,
which emits HTML that uses the plotly.js the book serves itself: the figure works in the static
HTML with no kernel and no network.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from .patches import patchify
from .show import wrap_caption  # noqa: F401  (captions: viz.wrap_caption, as chapter 7 calls it)

CMAP_ATTN = "inferno"
GROUP_PALETTE = (  # matplotlib's tab10
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def group_colors(groups) -> dict:
    """One colour per group, in the order given (matplotlib's tab10): the static and the
    interactive figures of the same groups take their colours from here, so they agree."""
    names = list(dict.fromkeys(groups))
    return {g: GROUP_PALETTE[i % len(GROUP_PALETTE)] for i, g in enumerate(names)}


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def _image2d(img) -> np.ndarray:
    """(1, H, W), (H, W) or (3, H, W) tensor -> array for imshow."""
    a = _np(img)
    if a.ndim == 3 and a.shape[0] == 1:
        return a[0]
    if a.ndim == 3:
        return np.clip(a.transpose(1, 2, 0), 0, 1)
    return a


# ---------------------------------------------------------------------------------------------
# Images and patches


def show_images(
    images, labels=None, ncols: int = 8, size: float = 1.2, title: str | None = None, cmap="gray"
):
    """A grid of images with optional captions (labels can be ints or strings), at most
    ``ncols`` a row and as many rows as it takes for the grid to fit the book's column with
    captions that can be read: cells are ``size`` inches, at least 0.85 with captions."""
    n = len(images)
    size = max(size, 0.85 if labels is not None else 0.5)
    ncols = max(1, min(ncols, n, int(6.8 // size)))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(
            ncols * size,
            nrows * size * (1.25 if labels is not None else 1.05) + (0.3 if title else 0),
        ),
        squeeze=False,
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_image2d(images[i]), cmap=cmap, vmin=0, vmax=1)
            if labels is not None:
                ax.set_title(wrap_caption(str(labels[i]), size), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_patch_grid(image, patch_size: int, title: str | None = None):
    """The image with its patch grid drawn on it, next to the patches laid out as the sequence
    of tokens the transformer reads (row by row)."""
    img = _image2d(image)
    H = img.shape[0]
    g = H // patch_size
    x = torch.as_tensor(np.asarray(img, dtype=np.float32)).reshape(1, 1, H, H)
    patches = patchify(x, patch_size)[0].reshape(-1, patch_size, patch_size)  # (N, P, P)
    fig = plt.figure(figsize=(6.8, 2.6))
    ax = fig.add_axes([0.01, 0.04, 0.3, 0.82])
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    for k in range(1, g):
        ax.axhline(k * patch_size - 0.5, color="tab:orange", lw=1)
        ax.axvline(k * patch_size - 0.5, color="tab:orange", lw=1)
    for r in range(g):
        for c in range(g):
            ax.text(
                c * patch_size + 1,
                r * patch_size + 2.5,
                str(r * g + c),
                color="#ffd54f",
                fontsize=9,
                bbox=dict(boxstyle="round,pad=0.15", fc="black", ec="none", alpha=0.75),
            )  # on a dark box: readable over the white strokes too
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{g}x{g} grid of {patch_size}x{patch_size} patches")
    n = len(patches)
    per_row = min(n, 8)
    rows = math.ceil(n / per_row)
    w = 0.62 / per_row
    for i, p in enumerate(patches):
        r, c = divmod(i, per_row)
        a = fig.add_axes([0.36 + c * w, 0.62 - r * (w * 2.6 + 0.1), w * 0.9, w * 2.6 * 0.9])
        a.imshow(_np(p), cmap="gray", vmin=0, vmax=1)
        a.set_xticks([])
        a.set_yticks([])
        if rows <= 4 and (c == 0 or c == per_row - 1):
            a.set_title(str(i), fontsize=9, pad=2)
    fig.text(0.67, 0.0, f"the sequence, row by row: {n} patches -> {n} tokens", ha="center")
    return fig


# ---------------------------------------------------------------------------------------------
# Training


def plot_history(history, ax=None):
    """Loss per step (smoothed) and per-epoch train/validation loss and accuracy."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6.8, 3.0))
    loss = np.asarray(history.step_loss)
    spe = max(1, history.steps_per_epoch)
    steps = np.arange(len(loss)) / spe
    ax1.plot(steps, loss, color="0.75", lw=0.6, label="training, per step")
    k = max(1, len(loss) // 50)
    if len(loss) > k:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax1.plot(steps[k - 1 :], smooth, color="tab:blue", label=f"training, mean of {k} steps")
    ep = [e["epoch"] for e in history.epochs]
    if any(e.get("val_loss") is not None for e in history.epochs):
        ax1.plot(
            ep,
            [e.get("val_loss") for e in history.epochs],
            "o-",
            color="tab:orange",
            label="test (plain cross-entropy)",
        )
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend(fontsize=9, loc="upper right")
    smoothing = history.recipe.get("label_smoothing") if history.recipe else None
    ax1.set_title(
        "loss" + (f" (training: label smoothing {smoothing:g})" if smoothing else ""), fontsize=9.5
    )
    if any(e.get("train_acc") is not None for e in history.epochs):
        ax2.plot(
            ep, [100 * e["train_acc"] for e in history.epochs], "o-", label="train (augmented)"
        )
    if any(e.get("val_acc") is not None for e in history.epochs):
        ax2.plot(ep, [100 * e["val_acc"] for e in history.epochs], "o-", label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.legend()
    ax2.grid(alpha=0.3)
    ax2.set_title("accuracy")
    fig.tight_layout()
    return fig


def plot_grad_flow(history):
    """Gradient flow: the gradient norm of every layer over training, as a heat map (layers
    top to bottom in forward order) and as lines for the first, middle and last layers."""
    names = list(history.grad_norms)
    norms = np.array([history.grad_norms[n] for n in names])  # (layers, records)
    steps = np.asarray(history.grad_steps) / max(1, history.steps_per_epoch)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6.8, 3.2), gridspec_kw={"width_ratios": [1.3, 1]})
    im = ax1.imshow(
        np.log10(norms + 1e-12),
        aspect="auto",
        cmap="viridis",
        extent=[steps[0], steps[-1], len(names) - 0.5, -0.5],
    )
    ax1.set_yticks(range(len(names)))
    ax1.set_yticklabels(names, fontsize=9)
    ax1.set_xlabel("epoch")
    ax1.set_title("gradient norm per layer")
    fig.colorbar(im, ax=ax1, label="log10 norm")
    picks = sorted({0, len(names) // 2, len(names) - 1})
    for i in picks:
        ax2.plot(steps, norms[i], label=names[i], lw=0.8)
    ax2.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("gradient norm")
    ax2.legend()
    ax2.set_title("first, middle, last")
    fig.tight_layout()
    return fig


def confusion_matrix(predictions, labels, num_classes: int | None = None) -> np.ndarray:
    """Counts (true class, predicted class)."""
    p, y = _np(predictions).astype(int), _np(labels).astype(int)
    k = num_classes or int(max(p.max(), y.max()) + 1)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y, p), 1)
    return cm


def plot_confusion(cm, class_names=None, title="confusion matrix (test set)"):
    """A confusion matrix with counts; the diagonal is dimmed so the errors stand out."""
    cm = np.asarray(cm)
    k = len(cm)
    names = class_names or [str(i) for i in range(k)]
    off = cm.copy().astype(float)
    np.fill_diagonal(off, np.nan)
    fig, ax = plt.subplots(figsize=(min(6.8, 0.45 * k + 2.4), min(6.0, 0.45 * k + 1.6)))
    im = ax.imshow(off, cmap="Reds", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="errors (off the diagonal)")
    top = np.nanmax(off) if np.isfinite(off).any() else 1
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                dark = i != j and off[i, j] > 0.55 * top  # light text on dark red, dark on light
                ax.text(
                    j,
                    i,
                    cm[i, j],
                    ha="center",
                    va="center",
                    fontsize=9 if k <= 10 else 8,
                    color="0.45" if i == j else ("white" if dark else "black"),
                )
    ax.set_xticks(range(k))
    ax.set_xticklabels(
        names,
        rotation=45 if max(len(n) for n in names) > 2 else 0,
        ha="right" if max(len(n) for n in names) > 2 else "center",
    )
    ax.set_yticks(range(k))
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Attention


def plot_attention_heads(attn, tokens=None, title="attention weights, one map per head"):
    """One heat map per head of a single (H, T, T) attention tensor."""
    a = _np(attn)
    h = a.shape[0]
    fig, axes = plt.subplots(
        1, h, figsize=(min(6.8, 1.55 * h + 0.9), 2.3), squeeze=False, layout="constrained"
    )
    vmax = float(a.max())  # one scale for every head, so the maps compare
    for i, ax in enumerate(axes[0]):
        im = ax.imshow(a[i], cmap=CMAP_ATTN, vmin=0, vmax=vmax)
        ax.set_title(f"head {i}", fontsize=9)
        ax.set_xlabel("key")
        if i == 0:
            ax.set_ylabel("query")
        if tokens is not None and len(tokens) <= 8:
            ax.set_xticks(range(len(tokens)))
            ax.set_xticklabels(tokens, fontsize=9, rotation=90)
            ax.set_yticks(range(len(tokens)))
            ax.set_yticklabels(tokens if i == 0 else [], fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.04, label="weight")
    fig.suptitle(title)
    return fig


def overlay(ax, image, heat, title=None, alpha=0.6, vmin=0.0, vmax=None):
    """Draw a grey image with a heat map (patch grid or full size) stretched over it, on the scale
    ``vmin``..``vmax`` (``vmax=None``: this map's maximum). Returns the heat map's image, for a
    colour bar (``fig.colorbar(im, ax=...)``); pass one ``vmax`` to maps that are compared."""
    img = _image2d(image)
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    h = _np(heat)
    im = ax.imshow(
        h,
        cmap=CMAP_ATTN,
        alpha=alpha,
        vmin=vmin,
        vmax=vmax,
        extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5),
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return im


def plot_cls_attention_grid(
    image, cls_maps, title="class-token attention, every layer (rows) and head (columns)"
):
    """A grid of overlays: rows are layers, columns heads. cls_maps: (L, nh, g, g) for one image."""
    L, H = cls_maps.shape[:2]
    fig, axes = plt.subplots(
        L,
        H + 1,
        figsize=(min(6.3, 1.2 * (H + 1) + 0.7), 1.3 * L + 0.5),
        squeeze=False,
        layout="constrained",
    )
    vmax = float(_np(cls_maps).max())  # one scale for all the maps
    im = None
    for layer in range(L):
        axes[layer, 0].imshow(_image2d(image), cmap="gray")
        axes[layer, 0].set_ylabel(f"layer {layer}")
        axes[layer, 0].set_xticks([])
        axes[layer, 0].set_yticks([])
        for head in range(H):
            im = overlay(
                axes[layer, head + 1],
                image,
                cls_maps[layer, head],
                f"head {head}" if layer == 0 else None,
                vmax=vmax,
            )
    fig.colorbar(im, ax=axes, fraction=0.04, label="attention weight")
    fig.suptitle(title)
    return fig


def plot_position_similarity(
    sim, title="cosine similarity of position embeddings", vmin=-1, size=0.55
):
    """The paper's Fig. 7 (centre): one small map per patch position, showing how similar its
    position embedding is to every other position's. sim: (g*g, g, g)."""
    s = _np(sim)
    g = s.shape[1]
    fig, axes = plt.subplots(g, g, figsize=(g * size * 1.9 + 1.2, g * size * 1.9), squeeze=False)
    im = None
    for i in range(g * g):
        ax = axes[i // g, i % g]
        im = ax.imshow(s[i], cmap="viridis", vmin=vmin, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if i // g == g - 1:
            ax.set_xlabel(str(i % g + 1), fontsize=9)
        if i % g == 0:
            ax.set_ylabel(str(i // g + 1), fontsize=9)
    fig.supxlabel("input patch column", fontsize=10)
    fig.supylabel("input patch row", fontsize=10)
    fig.suptitle(title)
    fig.colorbar(im, ax=axes, fraction=0.03, label="cosine similarity")
    return fig


# The self-supervision chapters' table: its measures, and the figure of it
ENCODER_COLUMNS = {
    "probe_0.01": "probe, 1% labels", "knn_0.01": "10-NN, 1% labels", "finetune_0.01": "fine-tune, 1% labels",
    "probe_0.1": "probe, 10% labels", "knn_0.1": "10-NN, 10% labels", "finetune_0.1": "fine-tune, 10% labels",
}  # fmt: skip


def plot_encoder_table(table: dict, title: str = "one protocol, encoders of the same size"):
    """The self-supervision table as bars: a group per measure, a bar per encoder (a value an
    encoder lacks, such as the supervised reference's fine-tune, is left out)."""
    cols = [c for c in ENCODER_COLUMNS if any(c in row for row in table.values())]
    fig, ax = plt.subplots(figsize=(6.8, 3.9))
    n, x = len(table), np.arange(len(cols))
    for i, (enc, row) in enumerate(table.items()):
        ax.bar(
            x + (i - (n - 1) / 2) * 0.8 / n,
            [100 * row.get(c, np.nan) for c in cols],
            0.8 / n,
            label=enc,
        )
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([ENCODER_COLUMNS[c].replace(", ", "\n") for c in cols], fontsize=9)
    low = min(100 * r[c] for r in table.values() for c in cols if c in r)
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False, fontsize=9)
    ax.set_title(title)
    fig.tight_layout()
    return fig
