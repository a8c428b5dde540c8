"""SimMIM (Xie et al., 2022): masked image modelling with the mask *inside* the encoder.

Like MAE (`vitbook.ssl.MAE`), SimMIM hides a random part of the patches and learns by predicting
their pixels. The one difference in how the encoder is used: MAE drops the hidden patches and
encodes the visible ones only, then a decoder puts mask tokens where the hidden ones were;
SimMIM gives the encoder every position, the hidden ones replaced by a learned mask token
(`vitbook.model.ViT.embed` with ``mask=``), and a single linear layer reads the raw pixels of
each hidden patch off the encoder's output. The loss is the L1 distance on the hidden patches.

After pretraining, ``.encoder`` is an ordinary ViT.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .loops import evaluating, model_device
from .model import ViT
from .patches import patchify, unpatchify


def random_patch_mask(batch: int, patches: int, ratio: float, device=None) -> torch.Tensor:
    """A (batch, patches) mask with 1 on a random ``ratio`` of each row's patches (rounded),
    drawn from torch's global generator (which `vitbook.train.fit` seeds at every step)."""
    hidden = min(patches, max(1, round(patches * ratio)))
    order = torch.rand(batch, patches, device=device).argsort(dim=1)
    mask = torch.zeros(batch, patches, device=device)
    mask.scatter_(1, order[:, :hidden], 1.0)
    return mask


class SimMIM(nn.Module):
    """A ViT encoder that sees every position, a learned mask token for the hidden ones, and one
    linear layer to the pixels of each patch."""

    def __init__(self, encoder: ViT, mask_ratio: float = 0.75):
        super().__init__()
        cfg = encoder.cfg
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.head = nn.Linear(cfg.dim, cfg.patch_size**2 * cfg.in_channels)  # the whole decoder
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def predict(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The pixels of every patch, read off the encoder: (B, N, C*P*P)."""
        tokens = self.encoder.embed(imgs, mask=mask, mask_token=self.mask_token)  # (B, N, D)
        z, _ = self.encoder.encode(self.encoder.prepend_cls(tokens))  # every position, (B, T, D)
        return self.head(self.encoder.patch_tokens(z))  # (B, N, C*P*P)

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None):
        """Returns (loss, predictions (B, N, C*P*P), mask (B, N)): the L1 distance to the raw
        pixels, averaged over the hidden patches only."""
        cfg = self.encoder.cfg
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        mask = random_patch_mask(imgs.shape[0], cfg.num_patches, ratio, imgs.device)
        pred = self.predict(imgs, mask)
        per_patch = (pred - patchify(imgs, cfg.patch_size)).abs().mean(dim=-1)  # (B, N)
        return (per_patch * mask).sum() / mask.sum(), pred, mask

    @torch.no_grad()
    def hidden_error(self, imgs: torch.Tensor, mask_ratio: float | None = None) -> dict:
        """The loss on ``imgs`` (mean L1 per hidden pixel), and that of the flat guess that
        paints every hidden pixel with the mean of the visible ones of its image."""
        with evaluating(self):
            x = imgs.to(model_device(self))
            loss, _, mask = self(x, mask_ratio)
            true = patchify(x, self.encoder.cfg.patch_size)  # (B, N, C*P*P)
            m = mask[..., None]
            visible_mean = (true * (1 - m)).sum(dim=(1, 2)) / (
                (1 - m).sum(dim=(1, 2)) * true.shape[-1]
            )
            flat = ((true - visible_mean[:, None, None]).abs().mean(-1) * mask).sum() / mask.sum()
        return {"model": loss.item(), "flat guess": flat.item()}

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask_ratio: float | None = None):
        """Images for a figure: (masked input, prediction, prediction with the visible patches
        pasted back), each (B, C, H, W). SimMIM predicts raw pixels, so nothing is borrowed from
        the hidden patches (unlike MAE's normalised targets)."""
        with evaluating(self):
            _, pred, mask = self(imgs.to(model_device(self)), mask_ratio)
        cfg = self.encoder.cfg
        p, C = cfg.patch_size, cfg.in_channels
        pred, mask, imgs = pred.float().cpu(), mask.cpu(), imgs.cpu()
        true, m = patchify(imgs, p), mask[..., None]
        masked = unpatchify(true * (1 - m) + 0.5 * m, p, C)
        recon = unpatchify(pred, p, C).clamp(0, 1)
        pasted = unpatchify(true * (1 - m) + pred * m, p, C).clamp(0, 1)
        return masked, recon, pasted


def simmim_loss_fn(model: SimMIM, x, y):
    """For `vitbook.train.fit`: SimMIM ignores the labels."""
    loss, _, _ = model(x)
    return loss, None
