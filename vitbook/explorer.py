"""Interactive figures: plotly figures embedded in the static page (no CDN), the attention
explorer of chapter 6 (a live ipywidget, and its plotly twin that works without a kernel) and
the chapter-9 embedding scatter with its hover images. Static matplotlib figures are
`vitbook.viz`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .viz import _image2d, _np, overlay

PLOTLY_CDN = "https://cdn.plot.ly/plotly-{version}.min.js"


def plotly_html(fig, div_id: str | None = None) -> str:
    """HTML for a plotly figure that draws with the page's ``window.Plotly``.

    In the built book, plotly.js comes from the book's own _static (see _config.yml), so the
    figure draws offline and the page carries no copy of the library. Where the page has no
    plotly.js (Colab, classic Jupyter), the snippet loads it once from plotly's CDN."""
    import json
    import uuid

    import plotly

    div_id = div_id or f"vitbook-plot-{uuid.uuid4().hex[:12]}"
    spec = fig.to_plotly_json()
    payload = json.dumps(
        {
            "data": spec.get("data", []),
            "layout": spec.get("layout", {}),
            "frames": spec.get("frames", []),
            "config": {"displaylogo": False, "responsive": True, "typesetMath": False},
        },
        cls=plotly.utils.PlotlyJSONEncoder,
    )
    height = spec.get("layout", {}).get("height") or 450
    cdn = PLOTLY_CDN.format(version=plotly.offline.get_plotlyjs_version())
    return f"""<div id="{div_id}" class="vitbook-plotly" style="width:100%;height:{height}px;"></div>
<script type="text/javascript">
(function() {{
  var fig = {payload};
  function draw() {{ window.Plotly.newPlot("{div_id}", fig); }}
  if (window.Plotly) {{ draw(); return; }}
  var s = document.querySelector('script[data-vitbook-plotly]');
  if (!s) {{
    s = document.createElement("script");
    s.src = "{cdn}";
    s.setAttribute("data-vitbook-plotly", "1");
    document.head.appendChild(s);
  }}
  s.addEventListener("load", draw);
}})();
</script>"""


def show_plotly(fig) -> None:
    """Display a plotly figure so that it works everywhere: HTML that uses the page's plotly.js
    (the built book, Colab) and plotly's own JSON (JupyterLab renders that natively)."""
    from IPython.display import display

    display(
        {"text/html": plotly_html(fig), "application/vnd.plotly.v1+json": fig.to_plotly_json()},
        raw=True,
    )


# ---------------------------------------------------------------------------------------------
# Attention figures and explorers


def attention_explorer_figure(images, cls_maps, rollouts, patch_size: int):
    """A plotly figure with one frame per (image, layer, head), per (image, layer, "mean") and
    per (image, "rollout"), plus one frame per image for the digit itself. The controls around it
    (see `attention_explorer_html`) pick a frame; plotly draws it with no kernel.

    images: (B, 1, H, W); cls_maps: (L, B, nh, g, g); rollouts: (B, g, g)."""
    import plotly.graph_objects as go

    L, B, H, g, _ = cls_maps.shape
    size = images.shape[-1]
    digits = [np.round(_image2d(images[b]) * 255).astype(int) for b in range(B)]

    def heat(z):
        return go.Heatmap(
            z=np.round(_np(z), 4), x0=(patch_size - 1) / 2, dx=patch_size, y0=(patch_size - 1) / 2, dy=patch_size,
            colorscale="Inferno", opacity=0.6, zmin=0, showscale=True, colorbar=dict(title="weight", len=0.8),
            hovertemplate="patch row %{y:.0f}px, col %{x:.0f}px<br>weight %{z:.3f}<extra></extra>",
        )  # fmt: skip

    def digit(b):
        return go.Heatmap(
            z=digits[b],
            colorscale="Greys",
            reversescale=True,
            showscale=False,
            hoverinfo="skip",
            zmin=0,
            zmax=255,
        )

    frames = [go.Frame(name=f"digit-{b}", data=[digit(b)], traces=[0]) for b in range(B)]
    for b in range(B):
        for layer in range(L):
            for head in range(H):
                frames.append(
                    go.Frame(
                        name=f"attn-{b}-{layer}-{head}",
                        data=[heat(cls_maps[layer, b, head])],
                        traces=[1],
                    )
                )
            frames.append(
                go.Frame(
                    name=f"attn-{b}-{layer}-mean",
                    data=[heat(cls_maps[layer, b].mean(0))],
                    traces=[1],
                )
            )
        frames.append(go.Frame(name=f"attn-{b}-rollout", data=[heat(rollouts[b])], traces=[1]))
    fig = go.Figure(data=[digit(0), heat(cls_maps[L - 1, 0, 0])], frames=frames)
    fig.update_layout(
        height=420, width=470, margin=dict(l=10, r=10, t=40, b=10),
        title=f"class-token attention: image 0, layer {L - 1}, head 0",
        xaxis=dict(visible=False, range=[-0.5, size - 0.5], constrain="domain"),
        yaxis=dict(visible=False, range=[size - 0.5, -0.5], scaleanchor="x"),
    )  # fmt: skip
    fig.layout.meta = {"images": B, "layers": L, "heads": H}
    return fig


def attention_explorer_html(fig, labels=None) -> str:
    """The explorer for the static page: three drop-downs (image, layer, head or "mean" /
    "rollout") that animate the plotly figure to the chosen frame, all in the page's JavaScript."""
    import uuid

    meta = fig.layout.meta
    B, L, H = meta["images"], meta["layers"], meta["heads"]
    uid = uuid.uuid4().hex[:10]
    div_id = f"vitbook-explorer-{uid}"
    labels = labels or [str(b) for b in range(B)]
    img_opts = "".join(f'<option value="{b}">{b}: {labels[b]}</option>' for b in range(B))
    layer_opts = "".join(
        f'<option value="{layer}"{" selected" if layer == L - 1 else ""}>{layer}</option>'
        for layer in range(L)
    )
    head_opts = (
        "".join(f'<option value="{h}">head {h}</option>' for h in range(H))
        + '<option value="mean">mean of heads</option><option value="rollout">rollout (all layers)</option>'
    )
    controls = f"""<div class="vitbook-explorer-controls" id="{div_id}-controls" style="margin:0.5em 0;font-size:0.9em">
<label>image <select data-role="image">{img_opts}</select></label>
<label style="margin-left:1em">layer <select data-role="layer">{layer_opts}</select></label>
<label style="margin-left:1em">head <select data-role="head">{head_opts}</select></label>
</div>"""
    script = f"""<script type="text/javascript">
(function() {{
  var box = document.getElementById("{div_id}-controls");
  function pick(role) {{ return box.querySelector('select[data-role="' + role + '"]').value; }}
  function update() {{
    var b = pick("image"), l = pick("layer"), h = pick("head");
    var attn = h === "rollout" ? "attn-" + b + "-rollout" : "attn-" + b + "-" + l + "-" + h;
    var what = h === "rollout" ? "rollout" : ("layer " + l + ", " + (h === "mean" ? "mean of heads" : "head " + h));
    var gd = document.getElementById("{div_id}");
    window.Plotly.animate(gd, ["digit-" + b, attn], {{mode: "immediate", frame: {{duration: 0, redraw: true}}, transition: {{duration: 0}}}})
      .then(function() {{ window.Plotly.relayout(gd, {{"title.text": "class-token attention: image " + b + ", " + what}}); }});
    box.setAttribute("data-frame", attn);
  }}
  box.querySelectorAll("select").forEach(function(s) {{ s.addEventListener("change", update); }});
}})();
</script>"""
    return controls + plotly_html(fig, div_id=div_id) + script


def show_attention_explorer(fig, labels=None) -> None:
    """Display the no-kernel explorer (works in the static HTML book and in Colab)."""
    from IPython.display import HTML, display

    display(HTML(attention_explorer_html(fig, labels)))


class AttentionExplorer:
    """The live explorer for a running kernel (Jupyter, Colab): ipywidgets controls for image,
    layer and head (or "mean" / "rollout") that redraw a matplotlib overlay as they change.

    ``explorer.widget`` is what to display; ``explorer.drawn`` says what is on screen now, as
    ``(image, layer, head)``: the tests set the controls' values in Python and read it back."""

    def __init__(self, images, cls_maps, rollouts, labels=None):
        import ipywidgets as W

        self.images, self.cls_maps, self.rollouts = images, cls_maps, rollouts
        L, B, H = cls_maps.shape[:3]
        labels = labels or [str(b) for b in range(B)]
        self.image = W.Dropdown(
            options=[(f"{b}: {labels[b]}", b) for b in range(B)], value=0, description="image"
        )
        self.layer = W.IntSlider(value=L - 1, min=0, max=L - 1, description="layer")
        self.head = W.Dropdown(
            options=[(f"head {h}", h) for h in range(H)]
            + [("mean of heads", "mean"), ("rollout", "rollout")],
            value=0,
            description="head",
        )
        self.out = W.Output()
        self.drawn = None
        self.draw_count = 0
        for control in (self.image, self.layer, self.head):
            control.observe(lambda change: self.redraw(), names="value")
        self.widget = W.VBox([W.HBox([self.image, self.layer, self.head]), self.out])
        self.redraw()

    def current_map(self):
        b, layer, head = self.image.value, self.layer.value, self.head.value
        if head == "rollout":
            return self.rollouts[b]
        if head == "mean":
            return self.cls_maps[layer, b].mean(0)
        return self.cls_maps[layer, b, head]

    def redraw(self):
        b, layer, head = self.image.value, self.layer.value, self.head.value
        with self.out:
            self.out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(3.4, 3.4))
            what = (
                "rollout"
                if head == "rollout"
                else f"layer {layer}, {'mean' if head == 'mean' else f'head {head}'}"
            )
            overlay(ax, self.images[b], self.current_map(), what)
            plt.show()
            plt.close(fig)
        self.drawn = (b, layer, head)
        self.draw_count += 1


# ---------------------------------------------------------------------------------------------
# Embeddings


def png_data_uri(image, scale: int = 3) -> str:
    """A small grey image as a PNG data URI (for hover previews in static HTML)."""
    import base64
    import io

    from PIL import Image

    a = (np.clip(_image2d(image), 0, 1) * 255).astype(np.uint8)
    img = Image.fromarray(a, mode="L").resize(
        (a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def embedding_scatter(points, groups, images, title: str, group_order=None, symbols=None):
    """A plotly scatter of 2D points coloured by group; ``images`` (one per point) are shown
    beside the plot when a point is hovered or clicked (see `embedding_scatter_html`)."""
    import plotly.graph_objects as go

    pts = _np(points)
    groups = list(groups)
    order = group_order or sorted(set(groups), key=groups.index)
    fig = go.Figure()
    for g in order:
        idx = [i for i, gg in enumerate(groups) if gg == g]
        fig.add_trace(
            go.Scattergl(
                x=pts[idx, 0], y=pts[idx, 1], mode="markers", name=str(g), customdata=idx,
                marker=dict(size=5, opacity=0.75, symbol=(symbols or {}).get(g, "circle")),
                hovertemplate=f"{g}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_layout(
        title=title,
        height=460,
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(itemsizing="constant"),
        xaxis=dict(showticklabels=False),
        yaxis=dict(showticklabels=False),
    )
    fig.layout.meta = {"images": [png_data_uri(im) for im in images]}
    return fig


def embedding_scatter_html(fig) -> str:
    """The scatter plus an image panel: hovering or clicking a point shows its image."""
    import json
    import uuid

    images = fig.layout.meta["images"]
    fig = go_copy_without_meta(fig)
    div_id = f"vitbook-scatter-{uuid.uuid4().hex[:10]}"
    panel = f"""<div style="display:flex;align-items:flex-start;gap:12px">
<div style="flex:1;min-width:0">{plotly_html(fig, div_id=div_id)}</div>
<div style="width:100px;text-align:center;font-size:0.8em;padding-top:60px">
<img id="{div_id}-img" class="vitbook-hover-image" alt="hover a point" src="{images[0]}" style="width:84px;height:84px;image-rendering:pixelated;border:1px solid #ccc;background:#000"/>
<div id="{div_id}-caption">hover or click a point</div></div></div>"""  # starts on point 0
    script = f"""<script type="text/javascript">
(function() {{
  var images = {json.dumps(images)};
  function attach() {{
    var gd = document.getElementById("{div_id}");
    if (!gd || !gd.on) {{ return setTimeout(attach, 100); }}
    function show(ev) {{
      var p = ev.points[0];
      document.getElementById("{div_id}-img").src = images[p.customdata];
      document.getElementById("{div_id}-caption").textContent = p.data.name;
      gd.setAttribute("data-shown", p.customdata);
    }}
    gd.on("plotly_hover", show);
    gd.on("plotly_click", show);
  }}
  attach();
}})();
</script>"""
    return panel + script


def go_copy_without_meta(fig):
    import plotly.graph_objects as go

    out = go.Figure(fig)
    out.layout.meta = None
    return out


def show_embedding_scatter(fig) -> None:
    from IPython.display import HTML, display

    display(HTML(embedding_scatter_html(fig)))
