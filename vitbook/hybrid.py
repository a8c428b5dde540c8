"""The paper's hybrid architecture: a small CNN in front of the Transformer.

Section 3.1 of the ViT paper ("Hybrid Architecture"): instead of raw image patches, the input
sequence can be formed from a CNN's feature map; the patch embedding projection E is then applied
to patches of that map, and "as a special case, the patches can have spatial size 1x1". That is
what `ConvStem` is: a few 3x3 convolutions (each followed by BatchNorm and a ReLU) whose strides
multiply to the patch size P, then E as a 1x1 convolution, so that the Transformer sees the same
(H/P) x (W/P) grid of tokens as the plain ViT with P x P patches. Everything after the patch
embedding (class token, positions, blocks, head) is `vitbook.model.ViT` unchanged.

The paper used a ResNet for this; a stem of a few plain convolutions is the variant studied in
"Early Convolutions Help Transformers See Better" (Xiao et al., 2021, arXiv:2106.14881), which
found it makes ViTs train faster and less sensitively to the recipe. The benchmark's hybrid
best-accuracy run (`python -m vitbook.bench --only best-hybrid`) uses it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .model import ViT, ViTConfig

# (output channels, stride) of each 3x3 convolution: 28x28 digits -> 28x28 -> 14x14 -> 7x7.
DEFAULT_STEM = ((32, 1), (64, 2), (96, 2))


class ConvStem(nn.Module):
    """3x3 convolutions + BatchNorm + ReLU, then E as a 1x1 convolution to D channels.

    ``stem`` lists (channels, stride) per convolution; the strides (each 1 or 2) must multiply to
    ``cfg.patch_size`` so that the token grid is the plain ViT's."""

    def __init__(self, cfg: ViTConfig, stem=DEFAULT_STEM):
        super().__init__()
        stem = tuple((int(c), int(s)) for c, s in stem)
        if not stem:
            raise ValueError("the stem needs at least one convolution, as (channels, stride) pairs")
        strides = [s for _, s in stem]
        if any(s not in (1, 2) for s in strides):
            raise ValueError(f"each stem stride must be 1 or 2, got strides {strides}")
        total = math.prod(strides)
        if total != cfg.patch_size:
            raise ValueError(
                f"the stem's strides {strides} shrink the image {total}x, but patch_size is "
                f"{cfg.patch_size}: the token grid would not be the ViT's "
                f"{cfg.grid_size}x{cfg.grid_size}. Use stride-2 convolutions that multiply to "
                f"{cfg.patch_size} (patch_size must be a power of two)."
            )
        layers, c_in = [], cfg.in_channels
        for c_out, s in stem:
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, cfg.dim, kernel_size=1)  # E on 1x1 patches of the feature map
        self.patch_size = cfg.patch_size
        self.stem = stem

    @torch.no_grad()
    def reset_parameters(self):
        """He (Kaiming) init for the 3x3 convolutions, identity BatchNorms, and Xavier for E (the
        1x1 projection, as `PatchEmbed` does); `ViT` calls it when it initialises itself."""
        for m in self.convs.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.convs(x))  # (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class HybridViT(ViT):
    """`ViT` whose patch embedding is a `ConvStem`; same tokens, same blocks, same head."""

    def __init__(self, cfg: ViTConfig, stem=DEFAULT_STEM):
        super().__init__(cfg, patch_embed=ConvStem(cfg, stem))
