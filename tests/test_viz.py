import json

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_config  # noqa: E402

from vitbook import attention, explorer, train, viz  # noqa: E402
from vitbook.model import ViT  # noqa: E402


@pytest.fixture(scope="module")
def explorer_inputs():
    torch.manual_seed(0)
    model = ViT(tiny_config(depth=3))
    x = torch.rand(3, 1, 28, 28)
    maps = attention.attention_maps(model, x)
    cls = attention.cls_attention(maps, 4)
    roll = attention.rollout(maps)[:, 0, 1:].reshape(3, 4, 4)
    return x, cls, roll


def test_explorer_figure_has_one_frame_per_image_layer_and_head(explorer_inputs):
    x, cls, roll = explorer_inputs
    fig = explorer.attention_explorer_figure(x, cls, roll, patch_size=7)
    names = [f.name for f in fig.frames]
    L, B, H = 3, 3, 4
    assert (
        len([n for n in names if n.startswith("attn-") and n.split("-")[-1].isdigit()]) == B * L * H
    )
    assert len([n for n in names if n.endswith("-mean")]) == B * L
    assert len([n for n in names if n.endswith("-rollout")]) == B
    assert len([n for n in names if n.startswith("digit-")]) == B
    assert len(set(names)) == len(names)
    frame = next(f for f in fig.frames if f.name == "attn-1-2-3")
    np.testing.assert_allclose(np.asarray(frame.data[0].z), cls[2, 1, 3].numpy(), atol=1e-4)


def test_explorer_html_has_controls_and_no_plotly_library(explorer_inputs):
    x, cls, roll = explorer_inputs
    html = explorer.attention_explorer_html(explorer.attention_explorer_figure(x, cls, roll, 7))
    assert html.count("<select") == 3 and "rollout" in html and "Plotly.animate" in html
    assert len(html) < 200_000  # the page's own plotly.js draws it: no 4.8 MB copy inline


def test_live_explorer_redraws_when_a_control_changes(explorer_inputs):
    x, cls, roll = explorer_inputs
    ex = explorer.AttentionExplorer(x, cls, roll)
    assert ex.drawn == (0, 2, 0) and ex.draw_count == 1
    ex.layer.value = 1
    assert ex.drawn == (0, 1, 0) and ex.draw_count == 2
    ex.head.value = "rollout"
    assert ex.drawn == (0, 1, "rollout")
    torch.testing.assert_close(ex.current_map(), roll[0])
    ex.image.value = 2
    ex.head.value = "mean"
    assert ex.drawn == (2, 1, "mean")
    torch.testing.assert_close(ex.current_map(), cls[1, 2].mean(0))


def test_plotly_html_draws_with_the_pages_plotly_and_falls_back_to_the_cdn():
    import plotly.graph_objects as go

    html = explorer.plotly_html(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), div_id="abc")
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


def test_show_source_returns_the_packages_own_code_highlighted():
    from vitbook import viz
    from vitbook.model import Attention, Block

    code = viz.show_source(Attention, Block)
    assert "class Attention(nn.Module):" in code.data and "class Block(nn.Module):" in code.data
    assert "highlight" in code._repr_html_()


def test_show_source_can_drop_docstrings_and_refuses_an_instance():
    import pytest

    from vitbook import viz
    from vitbook.train import lr_at

    code = viz.show_source(lr_at, skip_docstring=True)
    assert code.data.startswith("def lr_at(") and '"""' not in code.data and "return" in code.data
    with pytest.raises(TypeError, match="classes and functions"):
        viz.show_source(3)
