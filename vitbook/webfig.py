"""Figures for the static page: plotly figures that draw with the page's own plotly.js (no CDN,
no kernel), PNG data URIs, and the chapter-9 embedding scatter with its hover images. The
attention explorer of chapter 6 is `vitbook.explorer`; static matplotlib figures are
`vitbook.viz`.
"""

from __future__ import annotations

import numpy as np

from .viz import _image2d, _np, group_colors

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
  function draw() {{
    // drawn before the page's styles settle, a plot can come out wider than its box: fit it
    // again once the page has loaded (and at once if it already has)
    window.Plotly.newPlot("{div_id}", fig).then(function(gd) {{
      function fit() {{ window.Plotly.Plots.resize(gd); }}
      if (document.readyState === "complete") {{ fit(); }} else {{ window.addEventListener("load", fit); }}
      setTimeout(fit, 300);  // and once more after the page's own scripts have run
    }});
  }}
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


def png_data_uri_figure(fig, dpi: int = 144) -> str:
    """A matplotlib figure as a PNG data URI."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


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


def embedding_scatter(
    points, groups, images, title: str, group_order=None, symbols=None, colors=None
):
    """A plotly scatter of 2D points coloured by group; ``images`` (one per point) are shown
    above the plot when a point is hovered or clicked (see `embedding_scatter_html`).
    ``colors`` maps each group to a colour: pass `viz.group_colors(...)`, as the matplotlib
    figures of the same groups do, so that a group has one colour on the page."""
    import plotly.graph_objects as go

    pts = _np(points)
    groups = list(groups)
    if len(groups) != len(pts) or len(images) != len(pts):
        raise ValueError(
            f"one group and one image per point: {len(pts)} points, {len(groups)} groups, {len(images)} images"
        )
    order = group_order or list(dict.fromkeys(groups))
    colors = colors or group_colors(order)
    fig = go.Figure()
    for g in order:
        idx = [i for i, gg in enumerate(groups) if gg == g]
        sym = (symbols or {}).get(g, "circle")  # crosses larger than dots, or they read as dots
        fig.add_trace(
            go.Scattergl(
                x=pts[idx, 0], y=pts[idx, 1], mode="markers", name=str(g), customdata=idx,
                marker=dict(size=5 if sym == "circle" else 9, opacity=0.75, color=colors[g], symbol=sym),
                hovertemplate=f"{g}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_layout(
        title=title,
        height=500,
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(
            itemsizing="constant", orientation="h", yanchor="top", y=-0.02, x=0, font_size=12
        ),
        xaxis=dict(showticklabels=False),
        yaxis=dict(showticklabels=False),
    )
    fig.layout.meta = {"images": [png_data_uri(im) for im in images]}
    return fig


def embedding_scatter_html(fig) -> str:
    """The scatter with an image panel above it (never under the legend or the plot, at any
    width): hovering or clicking a point shows its image and group there."""
    import json
    import uuid

    images = fig.layout.meta["images"]
    fig = go_copy_without_meta(fig)
    div_id = f"vitbook-scatter-{uuid.uuid4().hex[:10]}"
    first = next(
        (t.name for t in fig.data if t.customdata is not None and 0 in list(t.customdata)),
        "point 0",
    )
    panel = f"""<div class="vitbook-hover-panel" style="display:flex;align-items:center;gap:12px;margin:0.3em 0;font-size:0.9em">
<img id="{div_id}-img" class="vitbook-hover-image" alt="the hovered point's image" src="{images[0]}" style="width:84px;height:84px;image-rendering:pixelated;border:1px solid #ccc;background:#000;flex:none"/>
<div><div id="{div_id}-caption" style="font-weight:bold">{first}</div><div>hover over or click a point to see its image here</div></div></div>
{plotly_html(fig, div_id=div_id)}"""  # starts on point 0
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
