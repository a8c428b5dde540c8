"""Batch transforms on image tensors (B, C, H, W) in [0, 1]: training augmentation and test-time
corruptions. They work on a whole batch at once (no per-image Python loop), which is what makes
augmentation nearly free on a 2-core CPU.

Random transforms take their randomness as an argument, a (B, k) tensor of uniform numbers, so
that a training loop controls it exactly (the same numbers on one process or split across
several) and a run can be replayed bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def affine(x: torch.Tensor, angle_deg, translate_px, scale, shear_deg=0.0) -> torch.Tensor:
    """Rotate, scale, shear and shift each image of a batch about its centre (zeros fill in).

    Every argument is a number or a (B,) tensor; translate_px is a pair (dx, dy) in pixels."""
    B, _, H, W = x.shape

    def per_image(v):
        return torch.as_tensor(v, dtype=x.dtype, device=x.device).expand(B)

    a = per_image(angle_deg) * (math.pi / 180)
    sh = per_image(shear_deg) * (math.pi / 180)
    s = per_image(scale)
    dx, dy = (per_image(t) for t in translate_px)
    # affine_grid maps output coordinates to input ones, so build the inverse transform:
    # rotation by -a (with shear), scaled by 1/s, and the shift in normalised [-1, 1] units.
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.stack(
        [
            torch.stack([cos / s, (sin + torch.tan(sh) * cos) / s, -dx * 2 / W], dim=1),
            torch.stack([-sin / s, (cos - torch.tan(sh) * sin) / s, -dy * 2 / H], dim=1),
        ],
        dim=1,
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass
class DigitAugment:
    """Small random affine changes that keep a digit a digit: rotation up to ``degrees``, shift up
    to ``shift`` pixels, scale within ``1 +- scale``. No flips: a flipped 2 is not a 2."""

    degrees: float = 10.0
    shift: float = 2.0
    scale: float = 0.1
    num_random: int = 4  # uniform numbers used per image

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W); u: (B, 4) uniform in [0, 1)."""
        sym = 2 * u - 1  # uniform in [-1, 1)
        return affine(
            x,
            angle_deg=sym[:, 0] * self.degrees,
            translate_px=(sym[:, 1] * self.shift, sym[:, 2] * self.shift),
            scale=1 + sym[:, 3] * self.scale,
        )


def gaussian_blur(x: torch.Tensor, sigma) -> torch.Tensor:
    """Blur each image with its own Gaussian of standard deviation ``sigma`` pixels (a number
    or a (B,) tensor; 0 leaves the image as it is). Separable, 7x7 kernel, zero padding."""
    B, C, H, W = x.shape
    s = torch.as_tensor(sigma, dtype=x.dtype).expand(B).clamp_min(1e-3)
    r = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-(r[None] ** 2) / (2 * s[:, None] ** 2))
    k = k / k.sum(dim=1, keepdim=True)  # (B, 7)
    flat = x.reshape(1, B * C, H, W)
    kc = k.repeat_interleave(C, dim=0)  # (B*C, 7)
    flat = F.conv2d(flat, kc[:, None, None, :], padding=(0, 3), groups=B * C)  # along rows
    flat = F.conv2d(flat, kc[:, None, :, None], padding=(3, 0), groups=B * C)  # along columns
    return flat.reshape(B, C, H, W)


# Test-time corruptions for robustness tables: name -> (function of (x, severity, generator),
# the severities used). Each is deterministic for a generator and keeps the label.
def _rotate(x, s, g):
    return affine(x, angle_deg=s, translate_px=(0.0, 0.0), scale=1.0)


def _noise(x, s, g):
    return (x + torch.randn(x.shape, generator=g) * s).clamp(0, 1)


def _blur(x, s, g):
    return gaussian_blur(x, s)


def _shift(x, s, g):
    angle = torch.rand(x.shape[0], generator=g) * 2 * math.pi  # a random direction per image
    return affine(
        x, angle_deg=0.0, translate_px=(s * torch.cos(angle), s * torch.sin(angle)), scale=1.0
    )


def _dilate(x, s, g):
    """Thicker strokes: a grey-level dilation with a (2s+1)x(2s+1) square."""
    k = 2 * int(s) + 1
    return F.max_pool2d(x, k, stride=1, padding=int(s))


CORRUPTIONS = {
    "rotation": (_rotate, (15.0, 30.0)),  # degrees
    "noise": (_noise, (0.2, 0.4)),  # Gaussian, standard deviation
    "blur": (_blur, (1.0, 1.5)),  # Gaussian, sigma in pixels
    "shift": (_shift, (3.0, 5.0)),  # pixels, random direction
    "thick strokes": (_dilate, (1, 2)),  # dilation radius in pixels
}


def corrupt(x: torch.Tensor, kind: str, severity, seed: int = 0) -> torch.Tensor:
    """A corrupted copy of a batch of images in [0, 1]: ``kind`` one of `CORRUPTIONS`."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose from {list(CORRUPTIONS)}")
    g = torch.Generator().manual_seed(seed)
    return CORRUPTIONS[kind][0](x, severity, g).clamp(0, 1)
