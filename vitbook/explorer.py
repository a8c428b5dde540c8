"""The attention explorer of chapter 6: a plotly "model view" that works in the static page (every
head of a layer side by side, for any image, layer and query token, with no kernel) and its live
twin in ipywidgets. Plotly embedding and the hover scatter are `vitbook.webfig`; static
matplotlib figures are `vitbook.viz`.
"""

from __future__ import annotations

import importlib.resources
import math

import numpy as np
import torch

from .viz import _image2d, overlay
from .webfig import plotly_html, png_data_uri_figure

# ---------------------------------------------------------------------------------------------
# Attention figures and explorers
#
# The explorer is a "model view" in the manner of BertViz: every head of one layer side by side,
# with the mean of the heads and the rollout beside them, for any query token (the class token or
# any patch). All the attention weights travel with the figure (layout.meta), so the page's
# JavaScript picks the image, layer and query with no kernel; the colour scale is one for all.


def explorer_scale(maps: torch.Tensor, rollouts: torch.Tensor, prefix: int = 1) -> float:
    """The explorer's one colour scale: the 99th percentile of every weight it can show on the
    patch grid (each head, the mean of the heads and the rollout, for every query), rounded up
    to 0.05. Frames are comparable; the rare weights above it saturate."""
    heads = maps[..., prefix:].flatten()
    means = maps.mean(2)[..., prefix:].flatten()
    rolls = rollouts[..., prefix:].flatten()
    values = torch.cat([heads, means, rolls]).float()
    if values.numel() > 1_000_000:  # torch.quantile's limit: an even subsample is as good
        values = values[:: values.numel() // 1_000_000 + 1]
    q = torch.quantile(values, 0.99).item()
    return max(0.05, math.ceil(q * 20) / 20)


def _panel_titles(rows) -> list[str]:
    """Each panel's title: what it shows, and the weight its query gives to the prefix tokens
    (the class token), which have no place on the patch grid. rows: (nh + 2, T) per panel."""
    H = len(rows) - 2
    names = [f"head {h}" for h in range(H)] + ["mean of heads", "rollout (all layers)"]
    return ["the image<br>click a patch to query it"] + [
        f"{name}<br>to class token {float(to_prefix):.2f}" for name, to_prefix in zip(names, rows)
    ]


def _query_name(q: int, prefix: int, grid: int) -> str:
    if q < prefix:
        return "class token" if q == 0 else f"prefix token {q}"
    r, c = divmod(q - prefix, grid)
    return f"patch (row {r}, col {c})"


def attention_explorer_figure(
    images,
    maps,
    rollouts,
    patch_size: int,
    labels=None,
    prefix: int = 1,
    layer: int | None = None,
    query: int = 0,
):
    """The explorer's plotly figure: the image, then every head of one layer, the mean of the
    heads and the rollout, each a map over the patch grid of the chosen query token's attention,
    drawn over the image on one fixed colour scale.

    images: (B, C, H, W); maps: (L, B, nh, T, T) from `attention.attention_maps`; rollouts:
    (B, T, T) from `attention.rollout`. The figure shows image 0, the last layer and query
    ``query`` (0, the class token, by default); every weight rides along in ``layout.meta``
    (thousandths, as integers), which `attention_explorer_html` reads to move to another
    image, layer or query in the page, without a kernel."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    maps, rollouts = (
        torch.as_tensor(maps).detach().cpu().float(),
        torch.as_tensor(rollouts).detach().cpu().float(),
    )
    if maps.ndim != 5 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(
            f"maps must be (layers, images, heads, tokens, tokens) from attention.attention_maps, got {tuple(maps.shape)}"
        )
    L, B, H, T, _ = maps.shape
    if tuple(rollouts.shape) != (B, T, T):
        raise ValueError(
            f"rollouts must be (images, tokens, tokens) = {(B, T, T)} to match maps, got {tuple(rollouts.shape)}: pass attention.rollout(maps)"
        )
    if len(images) != B:
        raise ValueError(
            f"{len(images)} images for attention maps of {B} images: pass the images the maps were computed on"
        )
    grid = math.isqrt(T - prefix)
    if grid * grid != T - prefix:
        raise ValueError(
            f"{T} tokens minus {prefix} prefix token(s) is not a square patch grid: is prefix right?"
        )
    layer = L - 1 if layer is None else layer
    size = images.shape[-1]
    digits = [np.round(_image2d(images[b]) * 255).astype(int).tolist() for b in range(B)]
    zmax = explorer_scale(maps, rollouts, prefix)

    panels = 1 + H + 2
    cols = min(panels, 4)
    rows = math.ceil(panels / cols)
    first_rows = [maps[layer, 0, h, query] for h in range(H)]
    first_rows += [maps[layer, 0, :, query].mean(0), rollouts[0, query]]
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=_panel_titles([r[:prefix].sum() for r in first_rows]),
        horizontal_spacing=0.03,
        vertical_spacing=0.16,
    )
    half = (patch_size - 1) / 2
    digit_traces, heat_traces, marker_traces = [], [], []
    where = [[f"row {r}, col {c}" for c in range(grid)] for r in range(grid)]  # hover text

    def grid_of(row):  # (T,) weights of one query -> (g, g) over the patches
        return np.round(row[prefix:].reshape(grid, grid).numpy(), 3)

    for i in range(panels):
        r, c = divmod(i, cols)
        fig.add_trace(
            go.Heatmap(
                z=digits[0],
                colorscale="Greys",
                reversescale=True,
                showscale=False,
                zmin=0,
                zmax=255,
                hoverinfo="none",  # no tooltip, but clicks count: "skip" made the image panel deaf
            ),
            row=r + 1,
            col=c + 1,
        )
        digit_traces.append(len(fig.data) - 1)
        if i > 0:
            fig.add_trace(go.Heatmap(
                z=grid_of(first_rows[i - 1]), x0=half, dx=patch_size, y0=half, dy=patch_size,
                coloraxis="coloraxis", opacity=0.65, customdata=where,
                hovertemplate="key patch %{customdata}<br>weight %{z:.3f}<extra></extra>",
            ), row=r + 1, col=c + 1)  # fmt: skip
            heat_traces.append(len(fig.data) - 1)
        mx, my = (
            ([None], [None])
            if query < prefix
            else (
                [((query - prefix) % grid) * patch_size + half],
                [((query - prefix) // grid) * patch_size + half],
            )
        )
        fig.add_trace(go.Scatter(x=mx, y=my, mode="markers", hoverinfo="skip", showlegend=False,
                                 marker=dict(symbol="square-open", size=16, color="#00e5ff", line=dict(width=2.5))),
                      row=r + 1, col=c + 1)  # fmt: skip
        marker_traces.append(len(fig.data) - 1)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        fig.update_xaxes(
            visible=False, range=[-0.5, size - 0.5], constrain="domain", row=r + 1, col=c + 1
        )
        fig.update_yaxes(
            visible=False,
            range=[size - 0.5, -0.5],
            constrain="domain",
            scaleanchor=f"x{i + 1 if i else ''}",
            row=r + 1,
            col=c + 1,
        )
    # The class token has no place on the patch grid: a bar under each panel shows its weight,
    # 0 to 1 across the panel's width (the page's script moves it with the query).
    cls_shapes = []
    for i in range(1, panels):
        k = i + 1
        ref = dict(xref=f"x{k} domain", yref=f"y{k} domain")
        fig.add_shape(type="rect", x0=0, x1=1, y0=-0.09, y1=-0.03, fillcolor="#e6e6e6",
                      line_width=0, layer="below", **ref)  # fmt: skip
        fig.add_shape(type="rect", x0=0, x1=float(first_rows[i - 1][:prefix].sum()), y0=-0.09,
                      y1=-0.03, fillcolor="#1f77b4", line_width=0, **ref)  # fmt: skip
        cls_shapes.append(len(fig.layout.shapes) - 1)
    fig.update_annotations(font_size=11)
    fig.update_layout(
        height=185 * rows + 80, plot_bgcolor="white", margin=dict(l=5, r=5, t=80, b=5), showlegend=False,
        coloraxis=dict(colorscale="Inferno", cmin=0, cmax=zmax,
                       colorbar=dict(title=dict(text="weight", side="right"), len=0.8, thickness=12)),
        title=dict(text=f"image 0, layer {layer}, query: {_query_name(query, prefix, grid)}", font_size=14, y=0.98, yref="container", yanchor="top"),
    )  # fmt: skip
    attn = np.round(maps.permute(1, 0, 2, 3, 4).numpy() * 1000).astype(int)  # (B, L, nh, T, T)
    roll = np.round(rollouts.numpy() * 1000).astype(int)  # (B, T, T)
    fig.layout.meta = {
        "images": B, "layers": L, "heads": H, "tokens": T, "prefix": prefix, "grid": grid,
        "patch": patch_size, "zmax": zmax, "labels": [str(v) for v in (labels or range(B))],
        "attn": attn.flatten().tolist(), "rollout": roll.flatten().tolist(), "digits": digits,
        "digit_traces": digit_traces, "heat_traces": heat_traces, "marker_traces": marker_traces,
        "cls_shapes": cls_shapes,
    }  # fmt: skip
    return fig


def attention_explorer_html(fig) -> str:
    """The explorer for the static page: drop-downs for the image, the layer and the query token
    (a click on any panel picks that patch as the query), redrawn by the page's JavaScript from
    the weights in the figure. Works in the built book and in Colab, with no kernel."""
    import uuid

    M = fig.layout.meta
    B, L, T, P, g = M["images"], M["layers"], M["tokens"], M["prefix"], M["grid"]
    div_id = f"vitbook-explorer-{uuid.uuid4().hex[:10]}"
    img_opts = "".join(f'<option value="{b}">{b}: {M["labels"][b]}</option>' for b in range(B))
    layer_opts = "".join(
        f'<option value="{i}"{" selected" if i == L - 1 else ""}>{i}</option>' for i in range(L)
    )
    query_opts = "".join(f'<option value="{q}">{_query_name(q, P, g)}</option>' for q in range(T))
    controls = f"""<div class="vitbook-explorer-controls" id="{div_id}-controls" style="margin:0.5em 0;font-size:0.9em">
<label>image <select data-role="image">{img_opts}</select></label>
<label style="margin-left:1em">layer <select data-role="layer">{layer_opts}</select></label>
<label style="margin-left:1em">query <select data-role="query">{query_opts}</select></label>
<label style="margin-left:1em">scale <select data-role="scale"><option value="shared">shared: 0 to {M["zmax"]:.2f}</option><option value="panel">per panel</option></select></label>
<div style="color:#555;margin-top:0.2em">the blue bar under a panel: the weight that goes to the class token (0 to 1)</div>
</div>"""
    js = importlib.resources.files(__package__).joinpath("web", "attention_explorer.js").read_text()
    script = '<script type="text/javascript">' + js.replace("__ID__", div_id) + "</script>"
    return controls + plotly_html(fig, div_id=div_id) + script


def show_attention_explorer(fig) -> None:
    """Display the no-kernel explorer (works in the static HTML book and in Colab)."""
    from IPython.display import HTML, display

    display(HTML(attention_explorer_html(fig)))


class AttentionExplorer:
    """The live explorer for a running kernel (Jupyter, Colab): ipywidgets for the image, the
    layer and the query token that redraw, with matplotlib, every head of the layer, the mean of
    the heads and the rollout, on one colour scale shared by every panel (so that panels compare)
    or on each panel's own (so that a faint map such as layer 0's shows its shape), with a bar
    under each panel for the weight that goes to the class token.

    ``explorer.widget`` is the widget; ``explorer.drawn`` says what is on screen now, as
    ``(image, layer, query)``: the tests set the controls in Python and read it back. Displayed
    (as a cell's last value) it offers both the live widget and a picture of its present state
    with a note, so a page built without a kernel shows the picture, not controls that cannot
    redraw."""

    def __init__(self, images, maps, rollouts, labels=None, prefix: int = 1):
        import ipywidgets as W

        self.images, self.maps, self.rollouts, self.prefix = (
            images,
            maps.detach().cpu(),
            rollouts.detach().cpu(),
            prefix,
        )
        L, B, H, T, _ = self.maps.shape
        self.grid = math.isqrt(T - prefix)
        self.vmax = explorer_scale(self.maps, self.rollouts, prefix)
        labels = labels or [str(b) for b in range(B)]
        self.image = W.Dropdown(
            options=[(f"{b}: {labels[b]}", b) for b in range(B)], value=0, description="image"
        )
        self.layer = W.IntSlider(value=L - 1, min=0, max=L - 1, description="layer")
        self.query = W.Dropdown(
            options=[(_query_name(q, prefix, self.grid), q) for q in range(T)],
            value=0,
            description="query",
        )
        self.scale = W.ToggleButtons(
            options=[(f"shared (0 to {self.vmax:.2f})", "shared"), ("per panel", "panel")],
            value="shared",
            description="scale",
        )
        self.out = W.Output()
        self.drawn = None
        self.draw_count = 0
        for control in (self.image, self.layer, self.query, self.scale):
            control.observe(lambda change: self.redraw(), names="value")
        self.widget = W.VBox([W.HBox([self.image, self.layer, self.query]), self.scale, self.out])
        self.redraw()

    def _query_rows(self) -> torch.Tensor:
        """(nh + 2, T): each head's attention row for the query, the heads' mean, the rollout's."""
        b, layer, q = self.image.value, self.layer.value, self.query.value
        heads = self.maps[layer, b, :, q]
        return torch.cat([heads, heads.mean(0, keepdim=True), self.rollouts[b, q][None]])

    def current_maps(self) -> torch.Tensor:
        """(nh + 2, g, g): each head's, the heads' mean and the rollout's row for the query."""
        return self._query_rows()[:, self.prefix :].reshape(-1, self.grid, self.grid)

    def class_token_shares(self) -> torch.Tensor:
        """(nh + 2,): the weight each panel's query row gives the class (prefix) tokens, 0 to 1."""
        return self._query_rows()[:, : self.prefix].sum(-1)

    def figure(self):
        """The present state as a matplotlib ``Figure`` (not one pyplot keeps: nothing is left
        open for the notebook to show again), 6.8 inches wide, on the explorer's one scale."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        b, layer, q = self.image.value, self.layer.value, self.query.value
        heats, shares = self.current_maps(), self.class_token_shares()
        shared = self.scale.value == "shared"
        titles = [f"head {h}" for h in range(len(heats) - 2)] + ["mean", "rollout"]
        fig = Figure(figsize=(6.8, 2.0), layout="constrained")
        FigureCanvasAgg(fig)  # a canvas of its own: the figure draws without pyplot
        axes = fig.subplots(1, len(heats) + 1)
        axes[0].imshow(_image2d(self.images[b]), cmap="gray")
        axes[0].set_title("image", fontsize=9)
        axes[0].axis("off")
        for ax, heat, title, share in zip(axes[1:], heats, titles, shares.tolist()):
            top = self.vmax if shared else max(float(heat.max()), 1e-6)
            im = overlay(
                ax, self.images[b], heat, title if shared else f"{title}\nmax {top:.2f}", vmax=top
            )
            bar = ax.inset_axes((0.0, -0.16, 1.0, 0.09))  # the class token's share, 0 to 1
            bar.barh(0, 1.0, color="#e6e6e6", height=1.0)
            bar.barh(0, share, color="#1f77b4", height=1.0)
            bar.set_xlim(0, 1)
            bar.axis("off")
        if shared:
            fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01).ax.tick_params(labelsize=9)
        fig.suptitle(
            f"image {b}, layer {layer}, query: {_query_name(q, self.prefix, self.grid)}\n"
            f"{'one colour scale' if shared else 'each panel on its own scale'}; "
            "blue bars: the weight that goes to the class token (0 to 1)",
            fontsize=9,
        )
        return fig

    def redraw(self):
        from IPython.display import display

        with self.out:
            self.out.clear_output(wait=True)
            display(self.figure())
        self.drawn = (self.image.value, self.layer.value, self.query.value)
        self.draw_count += 1

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        uri = png_data_uri_figure(self.figure(), dpi=200)
        bundle["text/html"] = (
            '<div class="vitbook-widget-still"><img alt="the live explorer as this cell left it" '
            f'src="{uri}" width="680" style="max-width:100%;height:auto"/><p style="font-size:0.9em;color:#555">A still of the '
            "live explorer, as the cell left it: its controls need a running kernel. Open the chapter "
            "in Colab (the badge at the top) to move them, or use the explorer above, which works "
            "in this page.</p></div>"
        )
        return bundle
