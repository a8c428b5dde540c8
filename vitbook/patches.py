"""Patches and positions as tensor functions: cutting images into patches and back (`patchify`,
`unpatchify`), the fixed 2D sine-cosine position table (`sincos_pos_embed`), and a learned
position table interpolated to another grid (`resize_pos_grid`). `vitbook.model` builds the ViT
on them; they know no model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def resize_pos_grid(pos: torch.Tensor, new_grid: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """A learned position embedding (1, prefix + g*g, D) interpolated to a ``new_grid`` x
    ``new_grid`` grid with bicubic interpolation, as the paper does for fine-tuning at a higher
    resolution (section 3.2); the prefix tokens' embeddings are kept as they are."""
    prefix, grid_tokens = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    old_grid = math.isqrt(grid_tokens.shape[1])
    if old_grid * old_grid != grid_tokens.shape[1]:
        raise ValueError(
            f"expected a square grid of position embeddings, got {grid_tokens.shape[1]} tokens"
        )
    if old_grid == new_grid:
        return pos
    D = pos.shape[-1]
    grid = grid_tokens.reshape(1, old_grid, old_grid, D).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid.float(), size=(new_grid,) * 2, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid**2, D).to(pos.dtype)  # (1, g'*g', D)
    return torch.cat([prefix, grid], dim=1)
