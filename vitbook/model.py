"""The Vision Transformer, from scratch.

Read this file next to "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020,
arXiv:2010.11929), section 3.1. The four equations there are, in order:

    (1) z0  = [x_class; x_p^1 E; ...; x_p^N E] + E_pos      -> ViT.embed
    (2) z'l = MSA(LN(z_{l-1})) + z_{l-1}                    -> Block.forward, first line
    (3) zl  = MLP(LN(z'l)) + z'l                            -> Block.forward, second line
    (4) y   = LN(z_L^0)                                     -> ViT.forward (norm, then head)

Shapes in comments: B batch, C channels, H/W image height/width, P patch size,
N number of patches, T = N + 1 tokens (with the class token), D width,
nh heads, hd = D / nh the width of one head.

This module imports only torch: it knows no dataset, no training and no plotting.
Parameter names follow timm's `VisionTransformer` where it costs nothing, so that
loading timm weights is a plain `load_state_dict` (see `vitbook.interop`).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened patches: (B, C, H, W) -> (B, N, C*P*P), row-major over the grid.

    Each patch vector is ordered (channel, row, column), the order in which a Conv2d with
    kernel = stride = P lays out its weight, so ``patchify(x) @ conv.weight.flatten(1).T``
    equals the convolution."""
    B, C, H, W = x.shape
    p = patch_size
    gh, gw = H // p, W // p
    x = x.reshape(B, C, gh, p, gw, p)  # (B, C, gh, P, gw, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, P, P)
    return x.reshape(B, gh * gw, C * p * p)  # (B, N, C*P*P)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """The inverse of `patchify`: (B, N, C*P*P) -> (B, C, H, W) for a square grid."""
    B, N, _ = patches.shape
    p, g = patch_size, math.isqrt(N)
    x = patches.reshape(B, g, g, channels, p, p)  # (B, gh, gw, C, P, P)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, P, gw, P)
    return x.reshape(B, channels, g * p, g * p)


def sincos_pos_embed(dim: int, grid_size: int) -> torch.Tensor:
    """A fixed 2D sine-cosine position embedding, (N, D): half the channels encode the row,
    half the column, each as sin/cos at geometrically spaced frequencies."""
    if dim % 4 != 0:
        raise ValueError(f"a 2D sin-cos embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    rows, cols = torch.meshgrid(
        torch.arange(grid_size, dtype=torch.float64),
        torch.arange(grid_size, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for pos in (rows.flatten(), cols.flatten()):
        angle = pos[:, None] * omega[None, :]  # (N, D/4)
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()  # (N, D)


class PatchEmbed(nn.Module):
    """Split the image into P x P patches and map each linearly to D channels (the "E" of eq. 1).

    Two implementations share one weight: ``"conv"`` is a Conv2d with kernel = stride = P (fast,
    and what timm and torchvision do); ``"linear"`` cuts the patches by hand with `patchify` and
    multiplies by the same weight viewed as a (D, C*P*P) matrix. They are the same function."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.impl = cfg.patch_impl
        self.proj = nn.Conv2d(
            cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "conv":
            x = self.proj(x)  # (B, D, H/P, W/P)
            return x.flatten(2).transpose(1, 2)  # (B, N, D)
        patches = patchify(x, self.patch_size)  # (B, N, C*P*P)
        weight = self.proj.weight.flatten(1)  # (D, C*P*P)
        return F.linear(patches, weight, self.proj.bias)  # (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention (the paper's MSA, appendix A).

    The default path calls the fused `F.scaled_dot_product_attention`. Asking for the attention
    weights (``return_attn=True``) takes the explicit path, softmax(q k^T / sqrt(hd)) v written
    out, which computes the same output and also returns the (B, nh, T, T) weights."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        self.fused = cfg.fused_attn
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias)
        self.attn_drop = nn.Dropout(cfg.attn_dropout)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.proj_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, self.head_dim)  # (B, T, 3, nh, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hd)
        attn = None
        if self.fused and not return_attn:
            drop = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, nh, T, hd)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, nh, T, T)
            attn = attn.softmax(dim=-1)
            out = self.attn_drop(attn) @ v  # (B, nh, T, hd)
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, T, D): heads side by side
        return self.proj_drop(self.proj(out)), attn


class MLP(nn.Module):
    """Two linear layers with a GELU between them, applied to each token alone."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """One pre-LN encoder block: LayerNorm before each sub-layer, a residual around each."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        a, attn = self.attn(self.norm1(x), return_attn)
        x = x + a  # eq. (2)
        x = x + self.mlp(self.norm2(x))  # eq. (3)
        return x, attn


class ViT(nn.Module):
    """The Vision Transformer: patch embedding, class token, position embedding, L blocks,
    a final LayerNorm and a linear head.

    ``model(x)`` returns logits (B, num_classes); ``model(x, return_attn=True)`` returns
    ``(logits, maps)`` with one (B, nh, T, T) attention map per layer. ``x`` is a float tensor
    (B, C, H, W) in [0, 1]; a uint8 batch is scaled by 1/255 and other float dtypes are cast to
    the weights' dtype (see `check_input`)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        T = cfg.num_patches + 1
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, T, cfg.dim))
        elif cfg.pos_embed == "sincos":
            table = torch.cat([torch.zeros(1, cfg.dim), sincos_pos_embed(cfg.dim, cfg.grid_size)])
            self.register_buffer("pos_embed", table[None], persistent=False)  # (1, T, D), fixed
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Truncated-normal(0.02) for linear layers and the learned embeddings, as in the
        reference implementation; Xavier for the patch projection seen as a matrix."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the patch embedding takes it, or a ValueError/TypeError that says what was
        expected and what to pass.

        Accepted: a torch tensor (B, C, H, W) of the model's channels and size. A floating-point
        batch is cast to the dtype of the model's weights (float32 unless the model was cast):
        float32 input to a float32 model passes untouched. A uint8 batch is read as 8-bit pixels
        and scaled to [0, 1] by ``x.float() / 255``, as `vitbook.data.ImageDataset` does. Other
        dtypes (bool, int64, ...) and non-tensors (numpy arrays, lists) are refused."""
        cfg = self.cfg
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
            elif (
                x.ndim == 3 and cfg.in_channels == 1 and tuple(x.shape[1:]) == (cfg.image_size,) * 2
            ):
                hint = (
                    " A batch of grayscale images? Add the channel dimension with x.unsqueeze(1)."
                )
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
        if tuple(x.shape[2:]) != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"expected {cfg.image_size}x{cfg.image_size} images {want}, got "
                f"{x.shape[2]}x{x.shape[3]}. Resize them (torchvision.transforms.Resize({cfg.image_size})) "
                f"or move the model to the new size with vitbook.interop.resize_model."
            )
        weight = getattr(getattr(self.patch_embed, "proj", None), "weight", None)
        weight_dtype = weight.dtype if weight is not None else torch.get_default_dtype()
        if x.dtype == torch.uint8:
            return x.to(weight_dtype) / 255.0  # 8-bit pixels -> [0, 1]
        if not x.is_floating_point():
            raise TypeError(
                f"expected floating-point pixels in [0, 1] (or uint8 pixels 0..255), got "
                f"{x.dtype}. Convert with x.float() (and divide by 255 if they are 0..255)."
            )
        return x if x.dtype == weight_dtype else x.to(weight_dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (1) without the class token: image -> patch tokens plus their positions, (B, N, D)."""
        x = self.check_input(x)
        x = self.patch_embed(x)  # (B, N, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed[:, 1:]
        return x

    def prepend_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Put the learnable class token (with its position) in front: (B, n, D) -> (B, n+1, D)."""
        cls = self.cls_token
        if self.pos_embed is not None:
            cls = cls + self.pos_embed[:, :1]
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)

    def encode(self, x: torch.Tensor, return_attn: bool = False):
        """Run tokens through the blocks and the final LayerNorm: (B, T, D) -> (B, T, D)."""
        x = self.pos_drop(x)
        maps = []
        for block in self.blocks:
            x, attn = block(x, return_attn)
            maps.append(attn)
        return self.norm(x), maps

    def forward_features(self, x: torch.Tensor, return_attn: bool = False):
        """All tokens after the final LayerNorm, (B, T, D), and the attention maps if asked."""
        return self.encode(self.prepend_cls(self.embed(x)), return_attn)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image representation the head sees: the class token, or the mean patch token."""
        return tokens[:, 0] if self.cfg.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled representation (B, D): what a linear probe or a UMAP plot looks at."""
        return self.pool(self.forward_features(x)[0])

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        tokens, maps = self.forward_features(x, return_attn)
        logits = self.head(self.pool(tokens))  # eq. (4) then the classifier
        return (logits, maps) if return_attn else logits


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameters (every element of every parameter tensor)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def with_config(model: ViT, **changes) -> ViTConfig:
    """The model's configuration with some fields changed (a convenience around dataclasses.replace)."""
    return replace(model.cfg, **changes)


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a model: the message lists missing keys, unexpected keys and
    shape mismatches."""


def _hint(key: str) -> str:
    if key.endswith("pos_embed"):
        return " (a different image or patch size: see vitbook.interop.resize_pos_embed)"
    if key.startswith("head."):
        return " (a different number of classes: build the model with the checkpoint's num_classes, then replace model.head)"
    return ""


def load_checked(model: nn.Module, state_dict: dict, what: str = "checkpoint") -> None:
    """``model.load_state_dict(state_dict)``, but when they do not fit, raise a
    `CheckpointMismatchError` that names every missing key, unexpected key and shape mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        (k, tuple(state_dict[k].shape), tuple(own[k].shape))
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"the {what} does not fit this {type(model).__name__}:"]

        def listed(title, items):
            if items:
                shown = items[:30] + (
                    [f"... and {len(items) - 30} more"] if len(items) > 30 else []
                )
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))

        listed("missing keys", missing)
        listed("unexpected keys", unexpected)
        listed(
            "shape mismatches",
            [
                f"{k}: {have} in the {what}, {want} in the model{_hint(k)}"
                for k, have, want in shapes
            ],
        )
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict(state_dict)
