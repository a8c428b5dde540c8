"""What fixes a ViT's shape and what it accepts: `ViTConfig`, the paper's Table 1 (`FAMILIES`,
`preset`), and the checks that turn a bad field (`ViTConfig`) or a bad batch of images
(`check_images`) into a message that says what to pass.

`vitbook.model` builds the network from a `ViTConfig` and re-exports every name here, so
``from vitbook.model import ViTConfig, preset`` works as it always did.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, replace

import torch

POS_EMBEDS = ("learned", "sincos", "none")
PATCH_IMPLS = ("conv", "linear")
POOLS = ("cls", "mean")

# For the messages of ViTConfig's checks: what each size is, and a typical value.
_WHAT = {
    "image_size": "it is the side of the square input image in pixels",
    "patch_size": "it is the side of a square patch in pixels",
    "in_channels": "it is 1 for grayscale images, 3 for RGB",
    "num_classes": "the head needs at least one output",
    "dim": "it is the token width D",
    "depth": "a ViT has at least one encoder block",
    "heads": "attention needs at least one head",
    "mlp_dim": "it is the hidden width of each block's MLP",
}
_EXAMPLES = dict(
    image_size=28,
    patch_size=7,
    in_channels=1,
    num_classes=10,
    dim=64,
    depth=3,
    heads=4,
    mlp_dim=128,
)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass
class ViTConfig:
    """Everything that fixes a ViT's shape. Defaults are ViT-B/16 on ImageNet."""

    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    dim: int = 768  # D, the token width ("Hidden size D" in Table 1)
    depth: int = 12  # L, the number of encoder blocks ("Layers")
    heads: int = 12  # nh ("Heads")
    mlp_dim: int = 3072  # hidden width of the MLP ("MLP size")
    dropout: float = 0.0  # after the embedding, the attention projection and the MLP
    attn_dropout: float = 0.0  # on the attention weights
    qkv_bias: bool = True
    pos_embed: str = "learned"  # "learned" (the paper), "sincos" (fixed 2D), "none"
    patch_impl: str = "conv"  # "conv" (a strided Conv2d) or "linear" (reshape + matmul)
    pool: str = "cls"  # "cls": classify the class token; "mean": average the patch tokens
    fused_attn: bool = True  # F.scaled_dot_product_attention unless maps are asked for
    norm_eps: float = 1e-6

    def __post_init__(self):
        self._check_types_and_ranges()
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}: "
                f"a ViT cuts the image into a whole grid of patches. Choose a patch size that "
                f"divides {self.image_size} (one of {_divisors(self.image_size)}) or resize the images."
            )
        if self.dim % self.heads != 0:
            raise ValueError(
                f"dim {self.dim} is not divisible by heads {self.heads}: each head gets dim/heads "
                f"channels. Use a head count that divides {self.dim} (one of {_divisors(self.dim)})."
            )
        for field, allowed in (
            ("pos_embed", POS_EMBEDS),
            ("patch_impl", PATCH_IMPLS),
            ("pool", POOLS),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}")
        if self.pos_embed == "sincos" and self.dim % 4 != 0:
            raise ValueError(
                f"a 2D sin-cos position embedding needs dim divisible by 4, got {self.dim}"
            )

    # The integer fields and the least value each may take; the float fields and their ranges.
    _SIZES = {
        "image_size": 1, "patch_size": 1, "in_channels": 1, "num_classes": 1,
        "dim": 1, "depth": 1, "heads": 1, "mlp_dim": 1,
    }  # fmt: skip

    def _check_types_and_ranges(self):
        """Every field has the type and range a ViT can be built from, or a ValueError/TypeError
        says which field, what it got and what to pass."""
        for name, least in self._SIZES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(
                    f"ViTConfig.{name} must be a whole number, got {value!r} "
                    f"({type(value).__name__}); pass an int such as {name}={_EXAMPLES[name]}"
                )
            if value < least:
                raise ValueError(
                    f"ViTConfig.{name} must be at least {least}, got {value}; "
                    f"{_WHAT[name]}, for example {name}={_EXAMPLES[name]}"
                )
            setattr(self, name, int(value))  # a numpy or torch integer becomes a plain int
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"ViTConfig.{name} must be a number in [0, 1), got {value!r}")
            if not 0.0 <= value < 1.0:
                raise ValueError(
                    f"ViTConfig.{name} is a drop probability in [0, 1), got {value}; "
                    f"0.0 switches dropout off"
                )
        eps = self.norm_eps
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(f"ViTConfig.norm_eps must be a small positive number, got {eps!r}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(
                f"ViTConfig.norm_eps must be a small positive number (LayerNorm divides by "
                f"sqrt(variance + eps)), got {eps}; the default is 1e-6"
            )
        for name in ("qkv_bias", "fused_attn"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"ViTConfig.{name} must be True or False, got {getattr(self, name)!r}"
                )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict:
        return asdict(self)

    def with_config(self, **changes) -> ViTConfig:
        """A copy with some fields changed, checked like a new one:
        ``cfg.with_config(image_size=42)``."""
        return replace(self, **changes)


# The paper's Table 1 (plus DeiT's Ti and S): width, depth, heads, MLP width.
FAMILIES = {
    "Ti": dict(dim=192, depth=12, heads=3, mlp_dim=768),
    "S": dict(dim=384, depth=12, heads=6, mlp_dim=1536),
    "B": dict(dim=768, depth=12, heads=12, mlp_dim=3072),
    "L": dict(dim=1024, depth=24, heads=16, mlp_dim=4096),
    "H": dict(dim=1280, depth=32, heads=16, mlp_dim=5120),
}
# Parameter counts the paper's Table 1 states (millions).
PAPER_PARAMS_M = {"ViT-B/16": 86, "ViT-L/16": 307, "ViT-H/14": 632}


def preset(name: str, **overrides) -> ViTConfig:
    """The configuration of a named ViT, such as "ViT-B/16" (ImageNet defaults: 224 px, 3 channels,
    1000 classes). Any field can be overridden: ``preset("ViT-Ti/4", image_size=28, in_channels=1)``."""
    m = re.fullmatch(r"ViT-(Ti|S|B|L|H)/(\d+)", name)
    if m is None:
        raise ValueError(
            f"unknown preset {name!r}: expected 'ViT-<size>/<patch>' with size one of "
            f"{list(FAMILIES)}, for example 'ViT-B/16', 'ViT-L/16' or 'ViT-H/14'"
        )
    fields = dict(FAMILIES[m.group(1)], patch_size=int(m.group(2)))
    fields.update(overrides)
    return ViTConfig(**fields)


def check_images(x, cfg: ViTConfig, dtype: torch.dtype, any_size: bool = False) -> torch.Tensor:
    """``x`` as a model of configuration ``cfg`` and weights of ``dtype`` takes it, or a
    ValueError/TypeError that says what was expected and what to pass (`ViT.check_input`).

    Accepted: a torch tensor (B, C, H, W) of the model's channels and size. A floating-point
    batch is cast to ``dtype``, the dtype of the model's weights (float32 unless the model was cast):
    float32 input to a float32 model passes untouched. A uint8 batch is read as 8-bit pixels
    and scaled to [0, 1] by ``x.float() / 255``, as `vitbook.data.ImageDataset` does. Other
    dtypes (bool, int64, ...) and non-tensors (numpy arrays, lists) are refused. With
    ``any_size``, square images of any multiple of the patch size pass (DINO's small crops;
    the model interpolates its position embeddings to their grid)."""
    want = f"(B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size})"
    if not torch.is_tensor(x):
        raise TypeError(
            f"expected a torch tensor of images {want}, got {type(x).__name__}. Convert it "
            f"with torch.as_tensor(x) (uint8 pixels are scaled to [0, 1] by the model; float "
            f"pixels should already be in [0, 1])."
        )
    if x.ndim != 4:
        hint = ""
        if x.ndim == 3 and tuple(x.shape) == (cfg.in_channels, cfg.image_size, cfg.image_size):
            hint = " One image? Add a batch dimension with x.unsqueeze(0)."
        elif x.ndim == 3 and cfg.in_channels == 1 and tuple(x.shape[1:]) == (cfg.image_size,) * 2:
            hint = " A batch of grayscale images? Add the channel dimension with x.unsqueeze(1)."
        elif x.ndim == 2 and tuple(x.shape) == (cfg.image_size,) * 2 and cfg.in_channels == 1:
            hint = " One grayscale image? Use x[None, None]."
        raise ValueError(
            f"expected a batch of images {want}, got a tensor of shape {tuple(x.shape)}.{hint}"
        )
    if (
        x.shape[1] != cfg.in_channels
        and x.shape[3] == cfg.in_channels
        and tuple(x.shape[1:3]) == (cfg.image_size, cfg.image_size)
    ):
        raise ValueError(
            f"expected channels first {want}, got channels last {tuple(x.shape)} (B, H, W, C). "
            f"Reorder the axes with x.permute(0, 3, 1, 2)."
        )
    if x.shape[1] != cfg.in_channels:
        raise ValueError(
            f"expected {cfg.in_channels} channel(s) {want}, got {x.shape[1]} (shape {tuple(x.shape)}). "
            f"Convert the images (e.g. torchvision.transforms.Grayscale) or build the model "
            f"with in_channels={x.shape[1]}."
        )
    if any_size:
        if x.shape[2] != x.shape[3] or x.shape[2] % cfg.patch_size:
            raise ValueError(
                f"expected square images whose side is a multiple of the patch size "
                f"{cfg.patch_size}, got {x.shape[2]}x{x.shape[3]}; crop or resize them to such a size"
            )
    elif tuple(x.shape[2:]) != (cfg.image_size, cfg.image_size):
        raise ValueError(
            f"expected {cfg.image_size}x{cfg.image_size} images {want}, got "
            f"{x.shape[2]}x{x.shape[3]}. Resize them (torchvision.transforms.Resize({cfg.image_size})) "
            f"or move the model to the new size with vitbook.interop.resize_model."
        )
    if x.dtype == torch.uint8:
        return x.to(dtype) / 255.0  # 8-bit pixels -> [0, 1]
    if not x.is_floating_point():
        raise TypeError(
            f"expected floating-point pixels in [0, 1] (or uint8 pixels 0..255), got "
            f"{x.dtype}. Convert with x.float() (and divide by 255 if they are 0..255)."
        )
    return x if x.dtype == dtype else x.to(dtype)
