"""Looking inside a trained ViT: attention maps, attention rollout, mean attention distance and
position-embedding similarity. Pure tensor functions; the figures are in `vitbook.viz`.

Maps come from ``model(x, return_attn=True)``: one (B, nh, T, T) tensor per layer, row = query
token, column = key token, token 0 the class token and tokens 1..N the patches in row-major order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .loops import evaluating, model_device


@torch.no_grad()
def attention_maps(model, x: torch.Tensor) -> torch.Tensor:
    """All attention weights of ``model`` on images ``x``, stacked: (L, B, nh, T, T), computed
    where the model is and returned there."""
    with evaluating(model):
        _, maps = model(x.to(model_device(model)), return_attn=True)
    return torch.stack(maps)


def cls_attention(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """What the class token takes from each patch: (L, B, nh, T, T) -> (L, B, nh, g, g)."""
    L, B, H, T, _ = maps.shape
    prefix = T - grid * grid  # the class token, and any other token before the patches
    return maps[..., 0, prefix:].reshape(L, B, H, grid, grid)


def rollout(maps: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each token's final state draws from
    each input token, following attention through all layers.

    Per layer, heads are averaged and the residual connection is mixed in as
    ``A = residual * I + (1 - residual) * mean_heads(attn)`` (rows renormalised); the layers are
    then multiplied, first layer rightmost. Input (L, B, nh, T, T); output (B, T, T), every row a
    probability distribution over input tokens."""
    L, B, H, T, _ = maps.shape
    eye = torch.eye(T, dtype=maps.dtype, device=maps.device)
    joint = eye.expand(B, T, T)
    for layer in maps:  # (B, nh, T, T), first layer first
        a = residual * eye + (1 - residual) * layer.mean(dim=1)
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a @ joint
    return joint


@torch.no_grad()
def logit_lens(model, x: torch.Tensor) -> torch.Tensor:
    """The prediction read after every block (a "logit lens"): the class token's state after the
    embedding and after each block, put through the final LayerNorm and the head.
    Returns (L + 1, B, num_classes) logits; the last row is the model's own output."""
    with evaluating(model):
        x = x.to(model_device(model))
        tokens = model.pos_drop(model.prepend_cls(model.embed(x)))
        out = [model.head(model.pool(model.norm(tokens)))]
        for block in model.blocks:
            tokens, _ = block(tokens)
            out.append(model.head(model.pool(model.norm(tokens))))
    return torch.stack(out)


def patch_distances(grid: int, patch_size: int) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every pair of patches: (N, N)."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).float() * patch_size  # (N, 2)
    return torch.cdist(centres, centres)


def mean_attention_distance(maps: torch.Tensor, grid: int, patch_size: int) -> torch.Tensor:
    """The paper's "attention distance" (Fig. 7, right): for each layer and head, the average
    distance in pixels between a query patch and the patches it attends to, weighted by the
    attention weights, averaged over query patches and images. The class token is left out and
    each row renormalised over the patches. (L, B, nh, T, T) -> (L, nh)."""
    prefix = maps.shape[-1] - grid * grid  # tokens before the patches: left out
    patch_maps = maps[..., prefix:, prefix:]  # (L, B, nh, N, N)
    patch_maps = patch_maps / patch_maps.sum(dim=-1, keepdim=True)
    dist = patch_distances(grid, patch_size).to(maps.device, maps.dtype)  # (N, N)
    per_query = (patch_maps * dist).sum(dim=-1)  # (L, B, nh, N)
    return per_query.mean(dim=(1, 3))  # (L, nh)


def uniform_attention_distance(grid: int, patch_size: int) -> float:
    """The mean attention distance of a head that attends uniformly: the mean distance over all
    ordered pairs of patches (self-pairs included)."""
    return patch_distances(grid, patch_size).mean().item()


def position_similarity(
    pos_embed: torch.Tensor, grid: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Cosine similarity of every patch's position embedding with every other's, laid out as the
    paper's Fig. 7 (centre): (g*g, g, g), entry [i] the map of patch i's similarities."""
    table = pos_embed.reshape(-1, pos_embed.shape[-1])[num_prefix_tokens:]  # (N, D)
    if table.shape[0] != grid * grid:
        raise ValueError(f"expected {grid * grid} patch embeddings, got {table.shape[0]}")
    t = F.normalize(table.float(), dim=-1)
    return (t @ t.T).reshape(grid * grid, grid, grid)


def neighbour_similarity_gap(sim: torch.Tensor) -> float:
    """How much more alike a patch's position embedding is to its 4-neighbours' than to the rest:
    mean cosine similarity to neighbours minus mean to non-neighbours. Positive when the
    embedding has learned the 2D layout."""
    n, g, _ = sim.shape
    near, far = [], []
    for i in range(n):
        r, c = divmod(i, g)
        for j in range(n):
            if i == j:
                continue
            rr, cc = divmod(j, g)
            (near if abs(r - rr) + abs(c - cc) == 1 else far).append(sim[i, rr, cc].item())
    return sum(near) / len(near) - sum(far) / len(far)


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Patch-grid maps (..., g, g) to image size (..., size, size), nearest neighbour so each
    patch stays a visible square."""
    shape = maps.shape
    flat = maps.reshape(-1, 1, shape[-2], shape[-1]).float()
    up = F.interpolate(flat, size=(size, size), mode="nearest")
    return up.reshape(*shape[:-2], size, size)


def entropy(maps: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each attention row: (..., T) -> (...). ``log(T)`` means uniform."""
    return -(maps * maps.clamp_min(1e-12).log()).sum(dim=-1)


def max_entropy(tokens: int) -> float:
    return math.log(tokens)
