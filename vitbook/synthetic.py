"""Procedurally rendered digits: fonts that ship with matplotlib (no download), drawn with
PIL at several stroke widths, fitted into MNIST's frame (a 20x20 box, centred by centre of mass
in 28x28), then varied with random affine transforms, elastic distortion, blur and noise.

`digits(n, seed)` is deterministic for a seed and returns a `vitbook.data.ImageDataset`, so the
training engine and every chapter treat it like MNIST.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data
from .transforms import affine, gaussian_blur

FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf", "cmb10.ttf",
)  # fmt: skip
STROKES = (0, 1, 2, 3)  # extra stroke width in pixels at the 64-pixel rendering size


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def fonts() -> list[Path]:
    """The digit fonts found in the installed matplotlib."""
    return [font_dir() / f for f in FONT_FILES if (font_dir() / f).exists()]


def fit_mnist_frame(glyph: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale the longer side to 20 pixels, and place it in a 28x28 frame with
    its centre of mass at the centre, as MNIST's digits were prepared. float32 in [0, 1]."""
    from PIL import Image

    ys, xs = np.nonzero(glyph > 0.05)
    crop = glyph[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    s = 20 / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = (
        np.asarray(
            Image.fromarray((crop * 255).astype(np.uint8)).resize((nw, nh), Image.LANCZOS),
            dtype=np.float32,
        )
        / 255
    )
    canvas = np.zeros((28, 28), np.float32)
    total = small.sum()
    cy = (small.sum(1) * np.arange(nh)).sum() / total
    cx = (small.sum(0) * np.arange(nw)).sum() / total
    top = int(round(14 - cy))
    left = int(round(14 - cx))
    top, left = min(max(top, 0), 28 - nh), min(max(left, 0), 28 - nw)
    canvas[top : top + nh, left : left + nw] = small
    return canvas


def glyph_bank() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every digit in every font and stroke width, fitted to MNIST's frame:
    (images (K, 1, 28, 28) float, labels (K,), font names (K,)). Rendered once per process;
    every caller gets its own copy, so an edit in place changes nothing for the next."""
    images, labels, names = _glyph_bank()
    return images.clone(), labels.clone(), list(names)


@functools.lru_cache(maxsize=1)
def _glyph_bank() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from PIL import Image, ImageDraw, ImageFont

    images, labels, names = [], [], []
    for path in fonts():
        font = ImageFont.truetype(str(path), 48)
        for digit in range(10):
            for stroke in STROKES:
                img = Image.new("L", (96, 96), 0)
                ImageDraw.Draw(img).text(
                    (48, 48),
                    str(digit),
                    fill=255,
                    font=font,
                    anchor="mm",
                    stroke_width=stroke,
                    stroke_fill=255,
                )
                a = np.asarray(img, dtype=np.float32) / 255
                if a.max() == 0:  # a font without this glyph
                    continue
                images.append(fit_mnist_frame(a))
                labels.append(digit)
                names.append(f"{path.stem}+{stroke}")
    return torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels), names


def elastic(
    x: torch.Tensor, alpha: torch.Tensor, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Elastic distortion (Simard et al., 2003): a random displacement field, smoothed with a
    Gaussian of width ``sigma`` pixels and scaled by ``alpha`` pixels per image, moves each pixel."""
    B, _, H, W = x.shape
    field = torch.rand(B, 2, H, W, generator=generator) * 2 - 1
    field = gaussian_blur(field, torch.full((B,), sigma))
    field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    field = field * alpha.view(B, 1, 1, 1) * 2 / H  # pixels -> normalised coordinates
    ys, xs = torch.meshgrid(
        torch.linspace(-1 + 1 / H, 1 - 1 / H, H),
        torch.linspace(-1 + 1 / W, 1 - 1 / W, W),
        indexing="ij",
    )
    grid = torch.stack([xs, ys], dim=-1).expand(B, H, W, 2) + field.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# The generator's roughening, applied to every rendered glyph (and, by `roughened`, to any image).
ROUGHENING = dict(
    degrees=12.0, shear=10.0, scale=0.12, shift=2.0, elastic_alpha=2.0, blur=0.8, noise=0.06
)


def roughen(
    x: torch.Tensor,
    g: torch.Generator,
    degrees: float,
    shear: float,
    scale: float,
    shift: float,
    elastic_alpha: float,
    blur: float,
    noise: float,
) -> torch.Tensor:
    """Roughen a batch of images (B, 1, 28, 28) in [0, 1], each with its own random draws from
    ``g``: an affine change (rotation up to ``degrees``, shear up to ``shear`` degrees, scale
    within 1 +- ``scale``, shift up to ``shift`` pixels), an elastic distortion of up to
    ``elastic_alpha`` pixels, a Gaussian blur of up to ``blur`` pixels and Gaussian noise of up to
    ``noise``. Returns uint8 images."""
    b = len(x)
    u = torch.rand(b, 8, generator=g) * 2 - 1
    x = affine(
        x,
        angle_deg=u[:, 0] * degrees,
        translate_px=(u[:, 1] * shift, u[:, 2] * shift),
        scale=1 + u[:, 3] * scale,
        shear_deg=u[:, 4] * shear,
    )
    x = elastic(x, (u[:, 5].abs()) * elastic_alpha, sigma=3.0, generator=g)
    x = gaussian_blur(x, (u[:, 6].abs()) * blur)
    x = x + torch.randn(x.shape, generator=g) * (u[:, 7].abs() * noise).view(b, 1, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def digits(n: int, seed: int = 0, **roughening) -> data.ImageDataset:
    """``n`` synthetic digits, balanced over the 10 classes, deterministic for ``seed``.

    Each image: a random font and stroke width, then the generator's roughening (`roughen`,
    with `ROUGHENING` unless ``roughening`` changes some of it: ``degrees``, ``shear``,
    ``scale``, ``shift``, ``elastic_alpha``, ``blur``, ``noise``). Stored as uint8 like MNIST."""
    options = _roughening(roughening)
    bank, bank_labels, _ = glyph_bank()
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    by_digit = [(bank_labels == d).nonzero().flatten() for d in range(10)]
    pick = torch.empty(n, dtype=torch.long)
    for d in range(10):
        where = (labels == d).nonzero().flatten()
        choices = by_digit[d]
        pick[where] = choices[torch.randint(len(choices), (len(where),), generator=g)]
    out = [roughen(bank[pick[i : i + 4096]].clone(), g, **options) for i in range(0, n, 4096)]
    return data.ImageDataset(
        torch.cat(out), labels, data.MNIST_CLASSES, f"synthetic-{n}-seed{seed}"
    )


def roughened(ds: data.ImageDataset, seed: int = 0, **roughening) -> data.ImageDataset:
    """The images of ``ds`` through the generator's roughening (`roughen`), each once, labels
    unchanged: real digits made as rough as the synthetic ones, the control that tells the
    synthetic *content* apart from the roughening."""
    options = _roughening(roughening)
    g = torch.Generator().manual_seed(seed)
    x = ds.images
    out = [roughen(x[i : i + 4096].float() / 255, g, **options) for i in range(0, len(x), 4096)]
    return data.ImageDataset(torch.cat(out), ds.labels.clone(), ds.classes, f"{ds.name}-roughened")


def _roughening(changes: dict) -> dict:
    unknown = set(changes) - set(ROUGHENING)
    if unknown:
        raise TypeError(
            f"unknown roughening option(s) {sorted(unknown)}; the options are {sorted(ROUGHENING)}"
        )
    return {**ROUGHENING, **changes}


def mix(real: data.ImageDataset, synthetic: data.ImageDataset) -> data.ImageDataset:
    """One dataset holding both (for mixed training)."""
    return data.ImageDataset(
        torch.cat([real.images, synthetic.images]),
        torch.cat([real.labels, synthetic.labels]),
        real.classes,
        f"{real.name}+{synthetic.name}",
    )


def glyph_count() -> int:
    return len(glyph_bank()[1])
