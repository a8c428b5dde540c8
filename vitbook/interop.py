"""Weights in and out of vitbook: torchvision and timm checkpoints, resized position embeddings.

vitbook's parameter names follow timm's, so a timm state dict loads almost as is; torchvision
names things differently, and `TORCHVISION_NAMES` is the whole translation. The configuration
(width, depth, patch and image size, classes) is read off the weights; the number of heads is
the one thing weights do not tell, so it comes from the model object or the standard table.
Nothing here downloads anything: pass a model or a state dict you already have.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import FAMILIES, CheckpointMismatchError, ViT, ViTConfig, load_checked

# Standard head counts by width (the paper's Table 1 and DeiT's Ti/S).
HEADS_BY_DIM = {f["dim"]: f["heads"] for f in FAMILIES.values()}

# torchvision name (with {i} for the block) -> vitbook name.
TORCHVISION_NAMES = {
    "class_token": "cls_token",
    "conv_proj.weight": "patch_embed.proj.weight",
    "conv_proj.bias": "patch_embed.proj.bias",
    "encoder.pos_embedding": "pos_embed",
    "encoder.layers.encoder_layer_{i}.ln_1.weight": "blocks.{i}.norm1.weight",
    "encoder.layers.encoder_layer_{i}.ln_1.bias": "blocks.{i}.norm1.bias",
    "encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight": "blocks.{i}.attn.qkv.weight",
    "encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias": "blocks.{i}.attn.qkv.bias",
    "encoder.layers.encoder_layer_{i}.self_attention.out_proj.weight": "blocks.{i}.attn.proj.weight",
    "encoder.layers.encoder_layer_{i}.self_attention.out_proj.bias": "blocks.{i}.attn.proj.bias",
    "encoder.layers.encoder_layer_{i}.ln_2.weight": "blocks.{i}.norm2.weight",
    "encoder.layers.encoder_layer_{i}.ln_2.bias": "blocks.{i}.norm2.bias",
    "encoder.layers.encoder_layer_{i}.mlp.0.weight": "blocks.{i}.mlp.fc1.weight",
    "encoder.layers.encoder_layer_{i}.mlp.0.bias": "blocks.{i}.mlp.fc1.bias",
    "encoder.layers.encoder_layer_{i}.mlp.3.weight": "blocks.{i}.mlp.fc2.weight",
    "encoder.layers.encoder_layer_{i}.mlp.3.bias": "blocks.{i}.mlp.fc2.bias",
    "encoder.ln.weight": "norm.weight",
    "encoder.ln.bias": "norm.bias",
    "heads.head.weight": "head.weight",
    "heads.head.bias": "head.bias",
}
# Older torchvision checkpoints call the MLP layers linear_1 / linear_2.
_TV_LEGACY = {".mlp.linear_1.": ".mlp.0.", ".mlp.linear_2.": ".mlp.3."}


def _state_dict(model_or_state_dict) -> dict[str, torch.Tensor]:
    if isinstance(model_or_state_dict, nn.Module):
        return model_or_state_dict.state_dict()
    if isinstance(model_or_state_dict, dict):
        return model_or_state_dict
    raise TypeError(
        f"expected an nn.Module or a state dict, got {type(model_or_state_dict).__name__}"
    )


def _heads(dim: int, heads: int | None, model, attr_path: str) -> int:
    if heads is not None:
        return heads
    obj = model
    for part in attr_path.split("."):
        obj = (
            getattr(obj, part, None)
            if not part.isdigit()
            else (obj[int(part)] if obj is not None else None)
        )
    if isinstance(obj, int):
        return obj
    if dim in HEADS_BY_DIM:
        return HEADS_BY_DIM[dim]
    raise ValueError(
        f"cannot tell the number of heads of a width-{dim} model from its weights alone: "
        f"pass heads=... (standard widths are {sorted(HEADS_BY_DIM)})"
    )


def _config_from(sd: dict, heads: int) -> ViTConfig:
    """Read a ViT's configuration off a state dict with vitbook (= timm) names."""
    dim = sd["cls_token"].shape[-1]
    patch, channels = (
        sd["patch_embed.proj.weight"].shape[-1],
        sd["patch_embed.proj.weight"].shape[1],
    )
    tokens = sd["pos_embed"].shape[1]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(
            f"pos_embed has {tokens} tokens: expected a class token plus a square grid of patches"
        )
    return ViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        in_channels=channels,
        num_classes=sd["head.weight"].shape[0],
        dim=dim,
        depth=_count_blocks(sd, r"blocks\.(\d+)\."),
        heads=heads,
        mlp_dim=sd["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
    )


def _build(sd: dict, heads: int | None, source, heads_attr: str, what: str) -> ViT:
    """A ViT built from the configuration the (vitbook-named) weights imply, loaded with them."""
    model = ViT(_config_from(sd, _heads(sd["cls_token"].shape[-1], heads, source, heads_attr)))
    load_checked(model, sd, what)
    return model


def _count_blocks(sd: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    if not found:
        raise CheckpointMismatchError(
            f"no encoder blocks found (keys like {pattern!r}); is this a ViT checkpoint?"
        )
    return max(found) + 1


def torchvision_to_vitbook(sd: dict) -> dict[str, torch.Tensor]:
    """Rename a torchvision ViT state dict to vitbook names. Unknown keys raise an error."""
    for old, new in _TV_LEGACY.items():
        sd = {k.replace(old, new): v for k, v in sd.items()}
    patterns = [
        (re.compile("^" + re.escape(k).replace(r"\{i\}", r"(\d+)") + "$"), v)
        for k, v in TORCHVISION_NAMES.items()
    ]
    out, unknown = {}, []
    for key, value in sd.items():
        for pattern, target in patterns:
            m = pattern.match(key)
            if m:
                out[target.format(i=m.group(1)) if m.groups() else target] = value
                break
        else:
            unknown.append(key)
    if unknown:
        hint = (
            " (a 'pre_logits' layer: torchvision's representation_size option is not supported)"
            if any("pre_logits" in k for k in unknown)
            else ""
        )
        raise CheckpointMismatchError(
            f"unexpected keys in the torchvision checkpoint{hint}: {', '.join(unknown[:12])}"
        )
    return out


def from_torchvision(model_or_state_dict, heads: int | None = None) -> ViT:
    """A vitbook `ViT` with the weights of a torchvision ``VisionTransformer`` (``vit_b_16`` and
    friends), or of its state dict. Its logits equal torchvision's for the same input."""
    sd = torchvision_to_vitbook(_state_dict(model_or_state_dict))
    return _build(
        sd,
        heads,
        model_or_state_dict,
        "encoder.layers.0.self_attention.num_heads",
        "torchvision checkpoint",
    )


# timm parts vitbook does not have; a checkpoint that uses them is refused with this reason.
_TIMM_UNSUPPORTED = {
    "reg_token": "register tokens",
    "ls1.gamma": "LayerScale",
    "fc_norm": "a norm after average pooling (global_pool='avg')",
    "attn_pool": "attention pooling",
    "q_norm": "normalised queries and keys",
    "head.fc": "a multi-layer head",
    "dist_token": "a distillation token (load it with vitbook.distill instead)",
    "pre_logits": "a pre-logits layer",
}


def from_timm(model_or_state_dict, heads: int | None = None) -> ViT:
    """A vitbook `ViT` with the weights of a timm ``VisionTransformer`` (``vit_base_patch16_224``
    and friends, class-token pooling, no LayerScale or registers), or of its state dict."""
    sd = dict(_state_dict(model_or_state_dict))
    for marker, what in _TIMM_UNSUPPORTED.items():
        if any(marker in k for k in sd):
            raise CheckpointMismatchError(
                f"this timm model uses {what} ({marker!r} in its keys), which vitbook's ViT does not implement"
            )
    if isinstance(model_or_state_dict, nn.Module):
        if getattr(model_or_state_dict, "global_pool", "token") not in ("token", ""):
            raise CheckpointMismatchError(
                f"this timm model pools with {model_or_state_dict.global_pool!r}; vitbook converts class-token models only"
            )
        if getattr(model_or_state_dict, "no_embed_class", False):
            raise CheckpointMismatchError(
                "this timm model adds no position embedding to the class token (no_embed_class=True); vitbook's ViT does"
            )
    return _build(sd, heads, model_or_state_dict, "blocks.0.attn.num_heads", "timm checkpoint")


def to_timm_state_dict(model: ViT) -> dict[str, torch.Tensor]:
    """vitbook -> timm: the names are already timm's."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def resize_pos_embed(
    pos_embed: torch.Tensor, new_grid: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Interpolate a learned position embedding (1, prefix + g*g, D) to a new grid size with
    bicubic interpolation, as the paper does for fine-tuning at a higher resolution (section 3.2).
    The class token's embedding is kept as it is."""
    prefix, grid_tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = math.isqrt(grid_tokens.shape[1])
    if old_grid * old_grid != grid_tokens.shape[1]:
        raise ValueError(
            f"expected a square grid of position embeddings, got {grid_tokens.shape[1]} tokens"
        )
    if old_grid == new_grid:
        return pos_embed.clone()
    D = pos_embed.shape[-1]
    grid = grid_tokens.reshape(1, old_grid, old_grid, D).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(
        grid.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False
    )
    grid = (
        grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, D).to(pos_embed.dtype)
    )  # (1, g'*g', D)
    return torch.cat([prefix, grid], dim=1)


def resize_model(model: ViT, image_size: int) -> ViT:
    """A copy of ``model`` for images of ``image_size`` pixels: same weights, position
    embeddings interpolated to the new patch grid."""
    cfg = ViTConfig(**{**model.cfg.to_dict(), "image_size": image_size})
    new = ViT(cfg)
    sd = dict(model.state_dict())
    if model.cfg.pos_embed == "learned":
        sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], cfg.grid_size)
    load_checked(new, sd)
    return new


def replace_head(model: ViT, num_classes: int) -> ViT:
    """Give ``model`` a fresh, zero-initialised head for ``num_classes`` classes (in place), as the
    paper does when fine-tuning; the configuration is updated to match."""
    model.head = nn.Linear(model.cfg.dim, num_classes)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    model.cfg = ViTConfig(**{**model.cfg.to_dict(), "num_classes": num_classes})
    return model


def to_torchvision_state_dict(model: ViT) -> dict[str, torch.Tensor]:
    """vitbook -> torchvision: the inverse of `torchvision_to_vitbook`, for a model torchvision
    can express (class-token pooling, learned positions)."""
    if model.cfg.pool != "cls" or model.cfg.pos_embed != "learned":
        raise ValueError(
            "torchvision's VisionTransformer has class-token pooling and learned positions only"
        )
    reverse = {}
    for tv_name, ours in TORCHVISION_NAMES.items():
        reverse[ours] = tv_name
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        if m:
            tv = reverse["blocks.{i}." + m.group(2)].format(i=m.group(1))
        else:
            tv = reverse[key]
        out[tv] = value.clone()
    return out


# ---------------------------------------------------------------------------------------------
# Real pretrained weights: only where the network answers.


def hub_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the weights' host opens within ``timeout`` seconds."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pretrained_timm(name: str = "vit_base_patch16_224.augreg2_in21k_ft_in1k"):
    """timm's ImageNet ViT with its real weights (downloads from the Hugging Face hub; raises
    RuntimeError at once when the hub cannot be reached)."""
    if not hub_reachable():
        raise RuntimeError("the Hugging Face hub is not reachable from this machine (no internet)")
    import timm

    return timm.create_model(name, pretrained=True).eval()


def pretrained_torchvision():
    """torchvision's ``vit_b_16`` with its ImageNet weights (downloads from download.pytorch.org;
    raises RuntimeError at once when that cannot be reached)."""
    if not hub_reachable("download.pytorch.org"):
        raise RuntimeError("download.pytorch.org is not reachable from this machine (no internet)")
    import torchvision

    return torchvision.models.vit_b_16(
        weights=torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1
    ).eval()
