"""Weights in and out of vitbook: torchvision and timm checkpoints, resized position embeddings.

vitbook's parameter names follow timm's, so a timm state dict loads almost as is; torchvision's
differ, and `TORCHVISION_NAMES` is the whole translation. The configuration (width, depth, patch
and image size, classes) is read off the weights; the number of heads, which weights do not
tell, comes from the model object or the standard table. Nothing here downloads anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn as nn

from .model import FAMILIES, CheckpointMismatchError, ViT, ViTConfig, load_checked
from .patches import resize_pos_grid

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


# Where trainers put the weights inside a saved checkpoint dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "network")
# Prefixes that wrappers add to every key: DistributedDataParallel / DataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _state_dict(model_or_state_dict) -> dict[str, torch.Tensor]:
    """The state dict of a model, or a state dict unwrapped from the ways trainers save one:
    ``{'state_dict': sd}``, ``{'model': sd}`` (and similar keys, see `WRAPPER_KEYS`), and keys
    prefixed ``module.`` (DDP) or ``_orig_mod.`` (torch.compile). Each unwrapping is printed."""
    if isinstance(model_or_state_dict, nn.Module):
        sd = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        sd = model_or_state_dict
    else:
        hint = (
            " Load the file first: torch.load(path, map_location='cpu')."
            if isinstance(model_or_state_dict, str | bytes)
            or hasattr(model_or_state_dict, "__fspath__")
            else ""
        )
        raise TypeError(
            f"expected an nn.Module or a state dict, got {type(model_or_state_dict).__name__}.{hint}"
        )
    for _ in range(3):  # a wrapper inside a wrapper, at most
        if any(torch.is_tensor(v) for v in sd.values()):
            break
        key = next((k for k in WRAPPER_KEYS if isinstance(sd.get(k), Mapping)), None)
        if key is None:
            break
        print(f"interop: using the state dict found under checkpoint[{key!r}]")
        sd = sd[key]
    if not sd:
        raise CheckpointMismatchError(
            "the state dict is empty: expected the weights of a ViT (keys such as cls_token, "
            "pos_embed, patch_embed.proj.weight); check what was saved"
        )
    not_tensors = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise TypeError(
            f"expected a state dict of tensors, but {len(not_tensors)} entries are not tensors "
            f"(such as {not_tensors[:5]}); if this is a training checkpoint, pass the entry "
            f"that holds the model's weights"
        )
    for prefix in WRAPPER_PREFIXES:
        if all(isinstance(k, str) and k.startswith(prefix) for k in sd):
            print(f"interop: removed the prefix {prefix!r} from every key")
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd)


def _kind(sd: dict) -> str:
    """What a state dict looks like: 'timm' (vitbook's names), 'torchvision', or 'other'."""
    if any(k.startswith(("class_token", "encoder.layers.", "conv_proj.")) for k in sd):
        return "torchvision"
    if any(k.startswith(("cls_token", "patch_embed.", "blocks.")) for k in sd):
        return "timm"
    return "other"


def _not_a_vit(sd: dict, want: str) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"this does not look like a ViT state dict: none of the {want} keys (such as "
        f"{'cls_token, pos_embed, patch_embed.proj.weight' if want == 'timm' else 'class_token, conv_proj.weight, encoder.layers...'}) "
        f"are there; its keys begin {', '.join(list(sd)[:6])}. Pass the weights of a ViT."
    )


def _heads(dim: int, heads: int | None, model, attr_path: str) -> int:
    obj = model  # the head count stored on the model object, at attr_path, if it is there
    for part in attr_path.split("."):
        if obj is not None:
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
    if heads is not None:
        if isinstance(obj, int) and obj != heads:
            raise ValueError(
                f"heads={heads} was passed, but the model has {obj} heads; the logits would "
                f"differ. Leave heads out (it is read off the model) or pass heads={obj}."
            )
        return heads
    if isinstance(obj, int):
        return obj
    if dim in HEADS_BY_DIM:
        return HEADS_BY_DIM[dim]
    raise ValueError(
        f"cannot tell the number of heads of a width-{dim} model from its weights alone: "
        f"pass heads=... (standard widths are {sorted(HEADS_BY_DIM)})"
    )


REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight")


def _check_required(sd: dict, what: str) -> None:
    missing = [k for k in REQUIRED if k not in sd]
    if missing:
        hint = (
            " (vitbook models with pos_embed='sincos' or 'none' store no position embedding: "
            "rebuild those with ViT(cfg) and vitbook.model.load_checked)"
            if missing == ["pos_embed"]
            else ""
        )
        blocks = _count_blocks(sd, r"blocks\.(\d+)\.")
        raise CheckpointMismatchError(
            f"the {what} lacks {', '.join(missing)}: a ViT checkpoint has all of "
            f"{', '.join(REQUIRED)}{hint}. It looks like a ViT ({blocks} encoder blocks) but is "
            f"incomplete; check that the whole state dict was saved."
        )


def _most_common(values: list[int]) -> int:
    return max(set(values), key=lambda v: (values.count(v), -values.index(v)))


def _config_from(sd: dict, heads: int) -> ViTConfig:
    """Read a ViT's configuration off a state dict with vitbook (= timm) names."""
    dim = sd["cls_token"].shape[-1]
    proj = sd["patch_embed.proj.weight"]  # (D, C, P, P)
    patch, channels = proj.shape[-1], proj.shape[1]
    tokens = sd["pos_embed"].shape[1]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(
            f"pos_embed has {tokens} tokens: expected a class token plus a square grid of patches"
        )
    depth = _count_blocks(sd, r"blocks\.(\d+)\.")
    # The MLP width by majority over every block's fc1 and fc2, so that one odd tensor is
    # reported as itself, not through all the others.
    widths = []
    for i in range(depth):
        for key, axis in (("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)):
            t = sd.get(f"blocks.{i}.mlp.{key}")
            if t is not None and t.ndim > axis:
                widths.append(t.shape[axis])
    if not widths:
        raise CheckpointMismatchError(
            "no MLP weights found (keys like blocks.0.mlp.fc1.weight); is this a ViT checkpoint?"
        )
    return ViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        in_channels=channels,
        num_classes=sd["head.weight"].shape[0],
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_dim=_most_common(widths),
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
    )


def _build(sd: dict, heads: int | None, source, heads_attr: str, what: str) -> ViT:
    """A ViT built from the configuration the (vitbook-named) weights imply, loaded with them."""
    _check_required(sd, what)
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
    sd = _state_dict(model_or_state_dict)
    kind = _kind(sd)
    if kind == "timm":
        raise CheckpointMismatchError(
            "this is a timm or vitbook ViT state dict (keys like cls_token, blocks.0...), not a "
            "torchvision one: use interop.from_timm"
        )
    if kind == "other":
        raise _not_a_vit(sd, "torchvision")
    sd = torchvision_to_vitbook(sd)
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
    sd = _state_dict(model_or_state_dict)
    kind = _kind(sd)
    if kind == "torchvision":
        raise CheckpointMismatchError(
            "this is a torchvision ViT state dict (keys like class_token, encoder.layers...), "
            "not a timm one: use interop.from_torchvision"
        )
    if kind == "other":
        raise _not_a_vit(sd, "timm")
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
    The class token's embedding is kept as it is (`vitbook.model.resize_pos_grid`)."""
    return resize_pos_grid(pos_embed, new_grid, num_prefix_tokens).clone()


def resize_model(model: ViT, image_size: int) -> ViT:
    """A copy of ``model`` for images of ``image_size`` pixels: same weights, position
    embeddings interpolated to the new patch grid."""
    cfg = model.cfg.with_config(image_size=image_size)
    new = ViT(cfg)
    sd = dict(model.state_dict())
    if model.cfg.pos_embed == "learned":
        sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], cfg.grid_size)
    load_checked(new, sd)
    return new


def to_torchvision_state_dict(model: ViT) -> dict[str, torch.Tensor]:
    """vitbook -> torchvision: the inverse of `torchvision_to_vitbook`, for a model torchvision
    can express (class-token pooling, learned positions)."""
    if model.cfg.pool != "cls" or model.cfg.pos_embed != "learned":
        raise ValueError(
            "torchvision's VisionTransformer has class-token pooling and learned positions only"
        )
    reverse = {ours: tv_name for tv_name, ours in TORCHVISION_NAMES.items()}
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        tv = reverse["blocks.{i}." + m.group(2)].format(i=m.group(1)) if m else reverse[key]
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
