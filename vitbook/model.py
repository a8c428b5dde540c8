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

The variants are constructor arguments, not changes to a finished model: `vitbook.hybrid` passes
a CNN stem as the patch embedding, `vitbook.distill` asks for a second prefix token (T = N + 2).

This module imports only torch and its configuration (`vitbook.config`, whose names it
re-exports): it knows no dataset, no training and no plotting.
Parameter names follow timm's `VisionTransformer` where it costs nothing, so that
loading timm weights is a plain `load_state_dict` (see `vitbook.interop`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import (  # noqa: F401  (re-exported: the configuration's home is vitbook.config)
    FAMILIES,
    PAPER_PARAMS_M,
    PATCH_IMPLS,
    POOLS,
    POS_EMBEDS,
    ViTConfig,
    check_images,
    preset,
)
from .patches import patchify, resize_pos_grid, sincos_pos_embed


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

    @torch.no_grad()
    def reset_parameters(self):
        """Xavier for E seen as a (D, C*P*P) matrix, as in the reference implementation."""
        w = self.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.proj.bias)

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


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) weights and zero biases for every linear layer in ``module``, ones
    and zeros for every LayerNorm, as in the reference implementation."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ViT(nn.Module):
    """The Vision Transformer: patch embedding, class token, position embedding, L blocks,
    a final LayerNorm and a linear head.

    ``model(x)`` returns logits (B, num_classes); ``model(x, return_attn=True)`` returns
    ``(logits, maps)`` with one (B, nh, T, T) attention map per layer. ``x`` is a float tensor
    (B, C, H, W) in [0, 1]; a uint8 batch is scaled by 1/255 and other float dtypes are cast to
    the weights' dtype (see `check_input`).

    ``patch_embed``: the module that turns images (B, C, H, W) into tokens (B, N, D); a
    `PatchEmbed` unless given (`vitbook.hybrid.HybridViT` gives a CNN stem). ``num_prefix_tokens``:
    the learned tokens in front of the patches, 1 (the class token) or 2 (the class token, then
    DeiT's distillation token ``dist_token``: `vitbook.distill.DistilledViT`)."""

    def __init__(
        self, cfg: ViTConfig, patch_embed: nn.Module | None = None, num_prefix_tokens: int = 1
    ):
        super().__init__()
        if num_prefix_tokens not in (1, 2):
            raise ValueError(
                f"num_prefix_tokens must be 1 (a class token) or 2 (a class token and a "
                f"distillation token), got {num_prefix_tokens!r}"
            )
        if patch_embed is not None and not isinstance(patch_embed, nn.Module):
            raise TypeError(
                f"patch_embed must be an nn.Module mapping images (B, C, H, W) to tokens "
                f"(B, N, D), got {type(patch_embed).__name__}"
            )
        self.cfg = cfg
        self.num_prefix_tokens = num_prefix_tokens
        self.patch_embed = PatchEmbed(cfg) if patch_embed is None else patch_embed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        if num_prefix_tokens == 2:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        T = num_prefix_tokens + cfg.num_patches
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, T, cfg.dim))
        elif cfg.pos_embed == "sincos":
            prefix = torch.zeros(num_prefix_tokens, cfg.dim)  # the prefix tokens get no position
            table = torch.cat([prefix, sincos_pos_embed(cfg.dim, cfg.grid_size)])
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
        reference implementation (`init_weights`); the patch embedding initialises itself
        (`PatchEmbed`: Xavier for E seen as a matrix)."""
        init_weights(self)
        if hasattr(self.patch_embed, "reset_parameters"):
            self.patch_embed.reset_parameters()
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.num_prefix_tokens == 2:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def check_input(self, x: torch.Tensor, any_size: bool = False) -> torch.Tensor:
        """``x`` as the patch embedding takes it, or a ValueError/TypeError that says what was
        expected and what to pass (`vitbook.config.check_images`): a tensor (B, C, H, W) of the
        model's channels and size (any multiple of the patch size with ``any_size``); uint8
        pixels are scaled to [0, 1], float pixels cast to the dtype of the model's weights;
        other dtypes and non-tensors are refused."""
        weight = next(self.patch_embed.parameters(), None)
        dtype = weight.dtype if weight is not None else torch.get_default_dtype()
        return check_images(x, self.cfg, dtype, any_size)

    def positions(self, grid: int) -> torch.Tensor | None:
        """The position embeddings (1, prefix + grid*grid, D) for a ``grid`` x ``grid`` patch
        grid: the model's own at its training size, interpolated (learned) or recomputed
        (sin-cos) for another; None without position embeddings."""
        if self.pos_embed is None or grid == self.cfg.grid_size:
            return self.pos_embed
        if self.cfg.pos_embed == "learned":
            return resize_pos_grid(self.pos_embed, grid, self.num_prefix_tokens)
        prefix = self.pos_embed[:, : self.num_prefix_tokens]  # sin-cos: zeros for the prefix
        table = sincos_pos_embed(self.cfg.dim, grid).to(prefix)[None]
        return torch.cat([prefix, table], dim=1)

    def embed(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
        any_size: bool = False,
    ) -> torch.Tensor:
        """Eq. (1) without the class token: image -> patch tokens plus their positions, (B, N, D).

        ``mask`` (B, N), 1 where a patch is hidden, replaces those patches' embeddings by
        ``mask_token`` (1, 1, D) before the positions are added, so the encoder still sees every
        position (SimMIM; MAE drops the hidden tokens instead). ``any_size`` takes square images
        of another multiple of the patch size, with the positions interpolated to their grid
        (DINO's small crops; `positions`)."""
        x = self.check_input(x, any_size)
        grid = x.shape[-1] // self.cfg.patch_size
        x = self.patch_embed(x)  # (B, N, D)
        if mask is not None:
            if mask_token is None:
                raise ValueError("embed(mask=...) needs the mask_token (1, 1, D) to put there")
            w = mask.to(x.dtype)[..., None]  # (B, N, 1): 1 = hidden
            x = x * (1 - w) + mask_token.to(x.dtype) * w
        pos = self.positions(grid)
        if pos is not None:
            x = x + pos[:, self.num_prefix_tokens :]
        return x

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch tokens of a sequence (B, T, D) -> (B, N, D): whatever follows the prefix
        tokens (the class token, and DeiT's distillation token where there is one)."""
        return tokens[:, self.num_prefix_tokens :]

    def prepend_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Put the learnable class token (with its position) in front: (B, n, D) -> (B, n+1, D);
        with a distillation token, [class, distillation, ...]: (B, n+2, D)."""
        prefix = self.cls_token  # (1, 1, D)
        if self.num_prefix_tokens == 2:
            prefix = torch.cat([prefix, self.dist_token], dim=1)  # (1, 2, D)
        if self.pos_embed is not None:
            prefix = prefix + self.pos_embed[:, : self.num_prefix_tokens]
        return torch.cat([prefix.expand(x.shape[0], -1, -1), x], dim=1)

    def encode(self, x: torch.Tensor, return_attn: bool = False):
        """Run tokens through the blocks and the final LayerNorm: (B, T, D) -> (B, T, D)."""
        x = self.pos_drop(x)
        maps = []
        for block in self.blocks:
            x, attn = block(x, return_attn)
            maps.append(attn)
        return self.norm(x), maps

    def forward_features(self, x: torch.Tensor, return_attn: bool = False, any_size: bool = False):
        """All tokens after the final LayerNorm, (B, T, D), and the attention maps if asked."""
        return self.encode(self.prepend_cls(self.embed(x, any_size=any_size)), return_attn)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image representation the head sees: the class token, or the mean patch token."""
        if self.cfg.pool == "cls":
            return tokens[:, 0]
        return self.patch_tokens(tokens).mean(dim=1)

    def features(self, x: torch.Tensor, any_size: bool = False) -> torch.Tensor:
        """The pooled representation (B, D): what a linear probe or a UMAP plot looks at."""
        return self.pool(self.forward_features(x, any_size=any_size)[0])

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        tokens, maps = self.forward_features(x, return_attn)
        logits = self.head(self.pool(tokens))  # eq. (4) then the classifier
        return (logits, maps) if return_attn else logits

    def replace_head(self, head: int | nn.Linear) -> ViT:
        """Put a new head on the model (in place) and return the model: for ``head`` classes, a
        zero-initialised linear layer, as the paper does when fine-tuning (section 3.1); or the
        ``nn.Linear`` (D -> K) given, such as a fitted linear probe. ``cfg.num_classes`` follows."""
        w = self.head.weight
        if isinstance(head, nn.Linear):
            if head.in_features != self.cfg.dim:
                raise ValueError(
                    f"the new head takes {head.in_features} features, but the model's tokens "
                    f"have dim {self.cfg.dim}: pass an nn.Linear({self.cfg.dim}, num_classes)"
                )
            new = head.to(device=w.device, dtype=w.dtype)
        elif isinstance(head, nn.Module):
            raise TypeError(
                f"head must be a number of classes or an nn.Linear, got {type(head).__name__}"
            )
        else:
            classes = self.cfg.with_config(num_classes=head).num_classes  # checked: an int >= 1
            new = nn.Linear(self.cfg.dim, classes, device=w.device, dtype=w.dtype)
            nn.init.zeros_(new.weight)
            nn.init.zeros_(new.bias)
        self.head = new
        self.cfg = self.cfg.with_config(num_classes=new.out_features)
        return self


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameters (every element of every parameter tensor)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def with_config(model_or_cfg: ViT | ViTConfig, **changes) -> ViTConfig:
    """A model's configuration (or a configuration) with some fields changed, checked like a new
    one: ``with_config(model, image_size=42)``, the same as ``model.cfg.with_config(...)``."""
    cfg = model_or_cfg.cfg if isinstance(model_or_cfg, nn.Module) else model_or_cfg
    return cfg.with_config(**changes)


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a model: the message lists missing keys, unexpected keys and
    shape mismatches."""


def _hint(key: str) -> str:
    if key.endswith("pos_embed"):
        return " (a different image or patch size: see vitbook.interop.resize_pos_embed)"
    if key.startswith("head."):
        return " (a different number of classes: build the model with the checkpoint's num_classes, then call model.replace_head)"
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
