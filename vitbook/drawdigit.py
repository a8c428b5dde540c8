"""Draw a digit: a trained ViT running in the page, with every layer and head on view.

``drawdigit.Widget(model, starters)`` is an HTML output (``_repr_html_``): a drawing pad, the
28 x 28 image the model sees (the drawing put through MNIST's own preprocessing), the class
probabilities, the prediction read after every block (a logit lens), and every head's
attention for any query token, with their mean and the rollout. The forward pass is plain
JavaScript (`vitbook/web/draw_digit.js`, shipped in the package) over the model's float32
weights, which the output carries as base64, so the same output works in the static book,
in Jupyter and in Colab: no kernel, no server, no network, no extra Python dependency.

It runs any plain `vitbook.model.ViT` with a class token, learned position embeddings, one
input channel and square images: the chapter-4 model (105k parameters, about 570 kB of page).
"""

from __future__ import annotations

import base64
import html
import importlib.resources
import json
import uuid

import numpy as np
import torch

from .model import ViT

WEB = "web"  # the package folder that holds the widget's script and styles


def _asset(name: str) -> str:
    return importlib.resources.files(__package__).joinpath(WEB, name).read_text()


def supported(model: ViT) -> None:
    """Raise a ValueError that says what the page's forward pass cannot run."""
    cfg = model.cfg
    problems = []
    if type(model) is not ViT:
        problems.append(f"a {type(model).__name__} (the page runs a plain ViT)")
    if cfg.pool != "cls" or model.num_prefix_tokens != 1:
        problems.append("no single class token to read")
    if cfg.pos_embed != "learned":
        problems.append(f"pos_embed={cfg.pos_embed!r} (the page adds learned position embeddings)")
    if cfg.in_channels != 1 or cfg.image_size != 28:
        problems.append(
            f"{cfg.in_channels} channels of {cfg.image_size} px (the pad draws 28 x 28 grey)"
        )
    if problems:
        raise ValueError(
            "drawdigit runs the chapter-4 kind of ViT in the page; this model has "
            + "; ".join(problems)
            + ". Pass zoo.get('mnist-vit') or a ViT(recipes.mnist_config(...)) with learned positions."
        )


def export_weights(model: ViT) -> dict:
    """The model's weights as one float32 buffer (base64) and a layout of (name, shape, offset)."""
    supported(model)
    parts, layout, offset = [], [], 0
    for name, tensor in model.state_dict().items():
        a = tensor.detach().cpu().float().contiguous().numpy()
        layout.append([name, list(a.shape), offset])
        parts.append(a.ravel())
        offset += a.size
    buffer = np.concatenate(parts).astype("<f4").tobytes()
    return {"weights": base64.b64encode(buffer).decode(), "layout": layout}


def decode_weights(payload: dict) -> dict[str, torch.Tensor]:
    """The inverse of `export_weights` (what the page decodes), for checking the round trip."""
    raw = np.frombuffer(base64.b64decode(payload["weights"]), dtype="<f4")
    out = {}
    for name, shape, offset in payload["layout"]:
        n = int(np.prod(shape)) if shape else 1
        out[name] = torch.from_numpy(raw[offset : offset + n].copy()).view(shape)
    return out


def payload(model: ViT, starters=()) -> dict:
    """Everything the page needs: configuration, weights and a few digits to start from
    (``starters``: (image (1, 28, 28) or (28, 28) in [0, 1], label) pairs)."""
    cfg = model.cfg
    keep = (
        "image_size",
        "patch_size",
        "dim",
        "depth",
        "heads",
        "mlp_dim",
        "num_classes",
        "norm_eps",
    )
    out = {"cfg": {k: getattr(cfg, k) for k in keep}, **export_weights(model), "starters": []}
    for image, label in starters:
        pixels = (torch.as_tensor(image).reshape(784).clamp(0, 1) * 255).round().to(torch.uint8)
        out["starters"].append({"pixels": pixels.tolist(), "label": int(label)})
    return out


class Widget:
    """The widget as a cell output: ``Widget(zoo.get("mnist-vit"), starters)``."""

    def __init__(self, model: ViT, starters=()):
        self.payload = payload(model.eval(), starters)
        self.id = f"vbd-{uuid.uuid4().hex[:10]}"

    def html(self) -> str:
        data = json.dumps(self.payload, separators=(",", ":"))
        return (
            f'<div id="{self.id}" class="vbd-root"></div>\n'
            f"<style>{_asset('draw_digit.css')}</style>\n"
            f"<script>{_asset('draw_digit.js')}</script>\n"
            f'<script>VitbookDraw.mount(document.getElementById("{self.id}"), {data});</script>'
        )

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        return html.unescape(f"<Draw-a-digit widget: {len(self.payload['layout'])} tensors>")

    def page_bytes(self) -> int:
        """What the widget adds to a page, in bytes."""
        return len(self.html().encode())
