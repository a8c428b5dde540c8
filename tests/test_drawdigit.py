"""The draw-a-digit widget's Python side: the weights it carries are the model's, bit for bit; the
page it makes is under 1 MB and loads nothing from the network; a model the page cannot run is
refused with what to pass. (The JavaScript forward pass is checked against torch in
tests/test_browser_draw.py, in a real browser.)"""

import re

import pytest
import torch
from conftest import tiny_config

from vitbook import drawdigit
from vitbook.distill import DistilledViT
from vitbook.model import ViT


def test_the_weights_travel_bit_for_bit():
    model = ViT(tiny_config())
    payload = drawdigit.payload(model)
    back = drawdigit.decode_weights(payload)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_the_page_is_small_self_contained_and_carries_its_starters():
    model = ViT(tiny_config(dim=64, mlp_dim=128, depth=3))
    starters = [(torch.rand(1, 28, 28), d) for d in range(10)]
    widget = drawdigit.Widget(model, starters)
    html = widget.html()
    assert widget.page_bytes() < 1_000_000
    assert not re.search(r"(src|href)=[\"']?https?://", html), "nothing may load from the network"
    assert "VitbookDraw.mount(" in html and len(widget.payload["starters"]) == 10
    assert widget._repr_html_() == html


@pytest.mark.parametrize(
    "model, why",
    [
        (ViT(tiny_config(pos_embed="sincos")), "pos_embed='sincos'"),
        (ViT(tiny_config(pool="mean")), "class token"),
        (DistilledViT(tiny_config()), "DistilledViT"),
        (ViT(tiny_config(in_channels=3)), "3 channels"),
    ],
)
def test_a_model_the_page_cannot_run_is_refused_with_what_to_pass(model, why):
    with pytest.raises(ValueError, match=why) as e:
        drawdigit.Widget(model)
    assert "zoo.get('mnist-vit')" in str(e.value)
