import json
import re

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_config  # noqa: E402

from vitbook import attention, explorer, show, train, viz, webfig  # noqa: E402
from vitbook.model import ViT  # noqa: E402


@pytest.fixture(scope="module")
def explorer_inputs():
    torch.manual_seed(0)
    model = ViT(tiny_config(depth=3))
    x = torch.rand(3, 1, 28, 28)
    maps = attention.attention_maps(model, x)  # (3, 3, 4, 17, 17)
    return x, maps, attention.rollout(maps)


def test_explorer_figure_shows_every_head_of_a_layer_for_the_chosen_query(explorer_inputs):
    x, maps, roll = explorer_inputs
    fig = explorer.attention_explorer_figure(x, maps, roll, patch_size=7, layer=1, query=6)
    M = fig.layout.meta
    assert len(M["heat_traces"]) == 4 + 2  # every head, their mean, the rollout
    for h in range(4):  # the panels hold query 6's row of layer 1, over the 4x4 patches
        z = np.asarray(fig.data[M["heat_traces"][h]].z)
        np.testing.assert_allclose(z, maps[1, 0, h, 6, 1:].reshape(4, 4).numpy(), atol=1e-3)
    np.testing.assert_allclose(
        np.asarray(fig.data[M["heat_traces"][5]].z), roll[0, 6, 1:].reshape(4, 4).numpy(), atol=1e-3
    )
    marker = fig.data[M["marker_traces"][0]]
    assert (marker.x[0], marker.y[0]) == (
        1 * 7 + 3,
        1 * 7 + 3,
    )  # patch 5 = row 1, col 1, its centre in pixels
    # every weight rides along for the page's JavaScript, in the order it indexes them
    attn = np.asarray(M["attn"]).reshape(3, 3, 4, 17, 17)  # (B, L, nh, T, T)
    np.testing.assert_allclose(attn[2, 1, 3] / 1000, maps[1, 2, 3].numpy(), atol=1e-3)
    np.testing.assert_allclose(
        np.asarray(M["rollout"]).reshape(3, 17, 17)[1] / 1000, roll[1].numpy(), atol=1e-3
    )
    # one colour scale for every frame, and every heat map uses it
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == M["zmax"] > 0
    assert all(fig.data[i].coloraxis == "coloraxis" for i in M["heat_traces"])


def test_explorer_scale_covers_nearly_every_weight_it_shows(explorer_inputs):
    _, maps, roll = explorer_inputs
    top = explorer.explorer_scale(maps, roll)
    shown = torch.cat([maps[..., 1:].flatten(), roll[..., 1:].flatten()])
    assert (shown <= top).float().mean() >= 0.98 and top <= shown.max() + 0.05


def test_explorer_refuses_maps_that_do_not_match(explorer_inputs):
    x, maps, roll = explorer_inputs
    with pytest.raises(ValueError, match="attention.attention_maps"):
        explorer.attention_explorer_figure(x, maps[0], roll, 7)
    with pytest.raises(ValueError, match="attention.rollout"):
        explorer.attention_explorer_figure(x, maps, roll[:, 0], 7)
    with pytest.raises(ValueError, match="3 images"):
        explorer.attention_explorer_figure(x[:2], maps, roll, 7)


def test_explorer_html_has_image_layer_query_and_scale_controls_and_no_plotly_library(
    explorer_inputs,
):
    x, maps, roll = explorer_inputs
    fig = explorer.attention_explorer_figure(x, maps, roll, 7)
    html = explorer.attention_explorer_html(fig)
    assert html.count("<select") == 4 and 'data-role="query"' in html and "plotly_click" in html
    assert (
        'data-role="scale"' in html and 'value="panel"' in html
    )  # shared or per-panel colour scale
    assert html.count("<option") == 3 + 3 + 17 + 2  # images, layers, every token as a query, scales
    assert len(fig.layout.meta["cls_shapes"]) == 4 + 2  # a class-token bar under every heat panel
    assert len(html) < 400_000  # the page's own plotly.js draws it: no 4.8 MB copy inline


def test_live_explorer_redraws_when_a_control_changes(explorer_inputs):
    x, maps, roll = explorer_inputs
    ex = explorer.AttentionExplorer(x, maps, roll)
    assert ex.drawn == (0, 2, 0) and ex.draw_count == 1
    ex.layer.value = 1
    assert ex.drawn == (0, 1, 0) and ex.draw_count == 2
    ex.query.value = 7
    ex.image.value = 2
    assert ex.drawn == (2, 1, 7)
    shown = ex.current_maps()  # 4 heads, their mean, the rollout
    torch.testing.assert_close(shown[3], maps[1, 2, 3, 7, 1:].reshape(4, 4))
    torch.testing.assert_close(shown[4], maps[1, 2, :, 7, 1:].mean(0).reshape(4, 4))
    torch.testing.assert_close(shown[5], roll[2, 7, 1:].reshape(4, 4))


def test_live_explorer_offers_a_per_panel_scale_and_a_class_token_bar_under_each_panel(
    explorer_inputs,
):
    x, maps, roll = explorer_inputs
    ex = explorer.AttentionExplorer(x, maps, roll)
    ex.layer.value, ex.query.value = 0, 5
    torch.testing.assert_close(
        ex.class_token_shares(),
        torch.cat([maps[0, 0, :, 5, 0], maps[0, 0, :, 5, 0].mean(0, keepdim=True), roll[0, 5, :1]]),
    )
    shared = ex.figure()
    assert len(shared.axes) == 1 + 6 + 1  # image, six panels, one colour bar
    assert all(len(ax.child_axes) == 1 for ax in shared.axes[1:7])  # a bar under every panel
    bar = shared.axes[1].child_axes[0]
    assert bar.patches[1].get_width() == pytest.approx(float(ex.class_token_shares()[0]))
    draws = ex.draw_count
    ex.scale.value = "panel"
    assert ex.draw_count == draws + 1  # the toggle redraws
    own = ex.figure()
    assert len(own.axes) == 1 + 6  # no shared colour bar: each panel has its own scale
    heats = ex.current_maps()
    for ax, heat in zip(own.axes[1:7], heats):
        assert ax.images[-1].get_clim()[1] == pytest.approx(float(heat.max()))
        assert f"max {float(heat.max()):.2f}" in ax.get_title()


def test_live_explorer_offers_a_still_with_a_note_beside_the_widget(explorer_inputs):
    x, maps, roll = explorer_inputs
    bundle = explorer.AttentionExplorer(x, maps, roll)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert (
        "data:image/png;base64," in bundle["text/html"] and "running kernel" in bundle["text/html"]
    )


def test_plotly_html_draws_with_the_pages_plotly_and_falls_back_to_the_cdn():
    import plotly.graph_objects as go

    html = webfig.plotly_html(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), div_id="abc")
    assert 'id="abc"' in html and "window.Plotly" in html and "cdn.plot.ly" in html
    payload = html.split("var fig = ", 1)[1].split(";\n", 1)[0]
    assert json.loads(payload)["data"][0]["y"] == [3, 4]


def test_history_and_grad_flow_plots_draw(tmp_path):
    from vitbook import data

    model = ViT(tiny_config())
    h = train.fit(
        model,
        data.mnist("test").subset(range(256)),
        data.mnist("test").subset(range(256, 384)),
        dict(epochs=2, batch_size=64, grad_norm_every=1),
        progress=False,
    )
    for fig in (viz.plot_history(h), viz.plot_grad_flow(h)):
        fig.savefig(tmp_path / "f.png")
        assert len(fig.axes) >= 2


def test_confusion_matrix_counts_pairs():
    cm = viz.confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_show_returns_the_packages_own_code_highlighted():
    from vitbook.model import Attention, Block

    code = show.source(Attention, Block)
    assert "class Attention(nn.Module):" in code.data and "class Block(nn.Module):" in code.data
    assert "highlight" in code._repr_html_()


def test_show_can_drop_docstrings_and_refuses_an_instance():
    import pytest

    from vitbook.train import lr_at

    code = show.source(lr_at, skip_docstring=True)
    assert code.data.startswith("def lr_at(") and '"""' not in code.data and "return" in code.data
    with pytest.raises(TypeError, match="classes and functions"):
        show.source(3)


def test_table_is_html_with_every_row_and_column_escaped():
    html = show.table(
        {"clean": {"real": "99.1%", "a<b": 1}, "noise 0.2": {"real": "97.0%"}},
        index="condition",
        caption="x & y",
    ).data
    assert (
        html.count("<tr>") == 3
        and "<th>condition</th>" in html
        and "a&lt;b" in html
        and "x &amp; y" in html
    )
    assert html.split("noise 0.2</th>")[1].startswith(
        "<td>97.0%</td><td></td>"
    )  # a missing cell stays empty
    with pytest.raises(ValueError, match="at least one row"):
        show.table({})


def test_group_colors_are_stable_and_distinct():
    colors = viz.group_colors(["3", "8", "3", "unknown"])
    assert list(colors) == ["3", "8", "unknown"] and len(set(colors.values())) == 3
    assert viz.group_colors(["3", "8", "unknown"]) == colors


def test_source_on_the_page_keeps_each_lines_indentation_when_it_wraps():
    from vitbook import model, show

    html = show.source(model.Block)._repr_html_()
    lines = re.findall(
        r'<span class="vb-line" style="display:block;padding-left:(\d+)ch;text-indent:-(\d+)ch',
        html,
    )
    code = repr(show.source(model.Block)).split("\n")
    assert len(lines) == len(code)
    for (pad, hang), text in zip(lines, code):
        indent = len(text) - len(text.lstrip(" "))
        assert int(pad) == int(hang) == indent + 4  # a wrapped line continues 4 deeper than its own


def test_zoo_messages_fit_the_column(capsys):
    from vitbook import show, zoo

    zoo._print("zoo: " + "a long message about a model " * 10)
    assert all(len(line) <= show.COLUMN for line in capsys.readouterr().out.splitlines())


def test_printouts_fold_to_the_column():
    from vitbook import show

    long = "ValueError: " + "word " * 40
    lines = show.wrapped(long).split("\n")
    assert len(lines) > 1 and all(len(line) <= show.COLUMN for line in lines)
    assert show.wrapped("a\nb") == "a\nb"  # its own line breaks are kept


def test_folded_printouts_keep_short_lines_and_fold_long_ones():
    import io

    from vitbook import show

    out = io.StringIO()
    stream = show._FoldingStream(out)
    print("short line", file=stream)
    print("x " * 60, file=stream, end="")
    assert out.getvalue() == "short line\n"  # the long line waits for its newline or a flush
    stream.flush()
    print("a " * 60, file=stream)
    lines = out.getvalue().split("\n")
    assert all(len(line) <= show.COLUMN for line in lines[2:]) and len(lines) > 3
