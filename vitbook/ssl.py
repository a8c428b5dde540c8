"""Self-supervised pretraining of a ViT encoder: MAE and I-JEPA.

Both wrap a `vitbook.model.ViT` (the encoder whose representations we want) and add what
pretraining needs around it; after pretraining, ``.encoder`` is an ordinary ViT.

* `MAE` (He et al., 2021): hide most patches (75%), encode only the visible ones, and let a
  light decoder reconstruct the pixels of the hidden ones from the encoding plus mask tokens.
  The loss is the mean squared error on the masked patches, of per-patch normalised pixels.
* `IJEPA` (Assran et al., 2023): from a large context block, predict the *embeddings* (not the
  pixels) that a slowly moving copy of the encoder (EMA "target encoder") gives to several
  target blocks. The loss lives in embedding space; the EMA target keeps it from collapsing.

Randomness (which patches are masked) is drawn from torch's global generator, which
`vitbook.train.fit` seeds at every step, so pretraining runs are reproducible.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ema import blend_
from .loops import evaluating, model_device
from .model import Block, ViT, ViTConfig
from .patches import patchify, sincos_pos_embed, unpatchify

# ---------------------------------------------------------------------------------------------
# MAE


def random_masking(x: torch.Tensor, mask_ratio: float):
    """Keep a random subset of tokens per sample.

    x: (B, N, D). Returns the kept tokens (B, n_keep, D) in shuffled order, the mask (B, N)
    with 1 where a token was hidden, and ``ids_restore`` (B, N) that puts a shuffled sequence
    back into patch order."""
    B, N, D = x.shape
    n_keep = max(1, round(N * (1 - mask_ratio)))
    noise = torch.rand(B, N, device=x.device)
    ids_shuffle = noise.argsort(dim=1)  # random permutation per sample
    ids_restore = ids_shuffle.argsort(dim=1)  # its inverse
    ids_keep = ids_shuffle[:, :n_keep]  # (B, n_keep)
    kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))  # (B, n_keep, D)
    mask = torch.ones(B, N, device=x.device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to patch order: 1 = hidden
    return kept, mask, ids_restore


def normalise_patches(patches: torch.Tensor, eps: float) -> torch.Tensor:
    """Each patch (last dim) shifted and scaled to zero mean, unit variance."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


class MAE(nn.Module):
    """A masked autoencoder around a ViT encoder, with a light decoder of its own: a linear map
    to the decoder width, a learned mask token, fixed 2D sin-cos position embeddings, a few
    transformer blocks and a linear layer to the pixels of each patch."""

    def __init__(
        self,
        encoder: ViT,
        decoder_dim: int = 64,
        decoder_depth: int = 1,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        cfg = encoder.cfg
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.norm_eps = norm_eps
        dec = replace(
            cfg, dim=decoder_dim, heads=decoder_heads, mlp_dim=2 * decoder_dim, depth=decoder_depth
        )
        self.decoder_embed = nn.Linear(cfg.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        prefix = torch.zeros(encoder.num_prefix_tokens, decoder_dim)
        pos = torch.cat([prefix, sincos_pos_embed(decoder_dim, cfg.grid_size)])
        self.register_buffer("decoder_pos_embed", pos[None], persistent=False)  # (1, p+N, Dd)
        self.decoder_blocks = nn.ModuleList([Block(dec) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(decoder_dim, cfg.patch_size**2 * cfg.in_channels)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def encode_visible(self, imgs: torch.Tensor, mask_ratio: float):
        tokens = self.encoder.embed(imgs)  # (B, N, D): patches plus their positions
        kept, mask, ids_restore = random_masking(tokens, mask_ratio)
        latent, _ = self.encoder.encode(self.encoder.prepend_cls(kept))  # (B, 1+n_keep, D)
        return latent, mask, ids_restore

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        p = self.encoder.num_prefix_tokens  # the class token (and any other prefix) comes first
        x = self.decoder_embed(latent)  # (B, p+n_keep, Dd)
        B, n1, Dd = x.shape
        N = ids_restore.shape[1]
        masks = self.mask_token.expand(B, N + p - n1, Dd)  # one mask token per hidden patch
        seq = torch.cat([x[:, p:], masks], dim=1)  # (B, N, Dd), shuffled order
        seq = torch.gather(seq, 1, ids_restore[..., None].expand(-1, -1, Dd))  # patch order
        x = torch.cat([x[:, :p], seq], dim=1) + self.decoder_pos_embed  # (B, p+N, Dd)
        for block in self.decoder_blocks:
            x, _ = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, p:]  # (B, N, P*P*C)

    def targets(self, imgs: torch.Tensor) -> torch.Tensor:
        target = patchify(imgs, self.encoder.cfg.patch_size)  # (B, N, C*P*P)
        return normalise_patches(target, self.norm_eps) if self.norm_pix_loss else target

    def loss(self, imgs, pred, mask) -> torch.Tensor:
        """Mean squared error per patch, averaged over the hidden patches only."""
        per_patch = ((pred - self.targets(imgs)) ** 2).mean(dim=-1)  # (B, N)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None):
        """Returns (loss, predictions (B, N, C*P*P), mask (B, N))."""
        latent, mask, ids_restore = self.encode_visible(
            imgs, self.mask_ratio if mask_ratio is None else mask_ratio
        )
        pred = self.decode(latent, ids_restore)
        return self.loss(imgs, pred, mask), pred, mask

    @torch.no_grad()
    def hidden_error(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, batch_size: int = 500
    ) -> dict[str, float]:
        """How well the hidden patches are predicted, measured as the training loss is: mean
        squared error per hidden patch against its target (pixels normalised per patch when
        ``norm_pix_loss``), with no information from the hidden patches used to score it.
        Returns the model's error and that of the trivial prediction 0 (each hidden patch flat
        at its own mean in the normalised space; the error of knowing nothing)."""
        err = base = count = 0.0
        with evaluating(self):
            for i in range(0, len(imgs), batch_size):
                x = imgs[i : i + batch_size].to(model_device(self))
                _, pred, mask = self(x, mask_ratio)
                target = self.targets(x)
                err += (((pred - target) ** 2).mean(dim=-1) * mask).sum().item()
                base += ((target**2).mean(dim=-1) * mask).sum().item()
                count += mask.sum().item()
        return {"model": err / count, "predict 0": base / count}

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask_ratio: float | None = None):
        """Images for a figure: (masked input, reconstruction, reconstruction with the visible
        patches pasted back), each (B, C, H, W). Predictions of normalised pixels are mapped
        back with each true patch's mean and spread, as in the MAE paper's figures: the picture
        borrows the hidden patches' true brightness and contrast, so it flatters the model. Use
        `hidden_error` to measure, not these images."""
        with evaluating(self):
            _, pred, mask = self(imgs.to(model_device(self)), mask_ratio)
        pred, mask = pred.float().cpu(), mask.cpu()  # the pictures are drawn on the CPU
        imgs = imgs.cpu()
        cfg = self.encoder.cfg
        p, C = cfg.patch_size, cfg.in_channels
        true = patchify(imgs, p)
        if self.norm_pix_loss:
            mean = true.mean(dim=-1, keepdim=True)
            std = (true.var(dim=-1, keepdim=True, unbiased=False) + self.norm_eps).sqrt()
            pred = pred * std + mean
        m = mask[..., None]
        masked = unpatchify(true * (1 - m) + 0.5 * m, p, C)  # hidden patches shown grey
        recon = unpatchify(pred, p, C).clamp(0, 1)
        pasted = unpatchify(true * (1 - m) + pred * m, p, C).clamp(0, 1)
        return masked, recon, pasted


def mae_loss_fn(model: MAE, x, y):
    """For `vitbook.train.fit`: MAE ignores the labels."""
    loss, _, _ = model(x)
    return loss, None


# ---------------------------------------------------------------------------------------------
# I-JEPA


def sample_block(
    grid: int, scale: tuple[float, float], aspect: tuple[float, float], rng: random.Random
) -> tuple[int, int]:
    """A block (height, width) in patches covering about ``scale`` of the grid."""
    s = rng.uniform(*scale) * grid * grid
    a = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    h = max(1, min(grid, round(math.sqrt(s * a))))
    w = max(1, min(grid, round(math.sqrt(s / a))))
    return h, w


def block_indices(grid: int, h: int, w: int, rng: random.Random) -> list[int]:
    top, left = rng.randint(0, grid - h), rng.randint(0, grid - w)
    return [r * grid + c for r in range(top, top + h) for c in range(left, left + w)]


def multiblock_masks(
    batch: int,
    grid: int,
    num_targets: int = 4,
    target_scale: tuple[float, float] = (0.1, 0.15),
    target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0),
    min_context: int = 6,
    rng: random.Random | None = None,
):
    """I-JEPA's multi-block masking, sized for a small grid (7x7 for 28-pixel digits and 4-pixel
    patches): ``num_targets`` target blocks of one shape per batch (so they stack), and per
    sample a large context block with every target patch removed from it.

    Returns (context (B, n_ctx), [targets (B, n_tgt)] * num_targets), patch indices; every sample
    keeps the same number of context patches (the batch minimum, at least ``min_context``)."""
    rng = rng or random.Random(int(torch.randint(0, 2**31 - 1, (1,)).item()))
    th, tw = sample_block(grid, target_scale, target_aspect, rng)
    ch, cw = sample_block(grid, context_scale, (1.0, 1.0), rng)
    contexts, targets = [], [[] for _ in range(num_targets)]
    for _ in range(batch):
        for _attempt in range(20):
            tgt = [block_indices(grid, th, tw, rng) for _ in range(num_targets)]
            hidden = set().union(*tgt)
            ctx = [i for i in block_indices(grid, ch, cw, rng) if i not in hidden]
            if len(ctx) >= min_context:
                break
        else:  # the targets covered too much: keep the patches outside them
            ctx = [i for i in range(grid * grid) if i not in hidden]
        contexts.append(ctx)
        for k in range(num_targets):
            targets[k].append(tgt[k])
    n_ctx = max(1, min(len(c) for c in contexts))
    ctx = torch.stack([torch.tensor(sorted(rng.sample(c, n_ctx))) for c in contexts])
    return ctx, [torch.tensor(t) for t in targets]


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), idx (B, n) -> (B, n, D)."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


class Predictor(nn.Module):
    """I-JEPA's narrow predictor: context embeddings plus mask tokens at the target positions
    (both with fixed sin-cos positions) through a few blocks, mapped back to the encoder width."""

    def __init__(self, cfg: ViTConfig, dim: int = 32, depth: int = 2, heads: int = 4):
        super().__init__()
        pcfg = replace(cfg, dim=dim, heads=heads, mlp_dim=2 * dim, depth=depth)
        self.embed = nn.Linear(cfg.dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer(
            "pos", sincos_pos_embed(dim, cfg.grid_size)[None], persistent=False
        )  # (1, N, d)
        self.blocks = nn.ModuleList([Block(pcfg) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, cfg.dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(
        self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor
    ) -> torch.Tensor:
        B = ctx.shape[0]
        pos = self.pos.expand(B, -1, -1)
        x = self.embed(ctx) + gather_tokens(pos, ctx_idx)  # (B, n_ctx, d)
        queries = self.mask_token + gather_tokens(pos, tgt_idx)  # (B, n_tgt, d)
        x = torch.cat([x, queries], dim=1)
        for block in self.blocks:
            x, _ = block(x)
        return self.proj(self.norm(x[:, ctx.shape[1] :]))  # (B, n_tgt, D): the predictions


class IJEPA(nn.Module):
    """Context encoder (the ViT being trained), EMA target encoder, and predictor."""

    def __init__(
        self,
        encoder: ViT,
        predictor_dim: int = 32,
        predictor_depth: int = 2,
        num_targets: int = 4,
        ema: tuple[float, float] = (0.99, 1.0),
    ):
        super().__init__()
        self.encoder = encoder
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.predictor = Predictor(encoder.cfg, predictor_dim, predictor_depth)
        self.num_targets = num_targets
        self.ema = ema
        self.last_stats: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True):
        super().train(mode)
        self.target_encoder.eval()  # no dropout in the target, ever
        return self

    def forward(self, imgs: torch.Tensor):
        cfg = self.encoder.cfg
        B = imgs.shape[0]
        ctx_idx, tgt_idxs = multiblock_masks(B, cfg.grid_size, self.num_targets)
        ctx_idx, tgt_idxs = ctx_idx.to(imgs.device), [t.to(imgs.device) for t in tgt_idxs]
        with torch.no_grad():
            h, _ = self.target_encoder.forward_features(imgs)  # (B, 1+N, D)
            h = self.target_encoder.patch_tokens(h)  # the patch tokens, (B, N, D)
            h = F.layer_norm(h, (h.shape[-1],))  # normalised
        tokens = gather_tokens(self.encoder.embed(imgs), ctx_idx)  # (B, n_ctx, D)
        z, _ = self.encoder.encode(self.encoder.prepend_cls(tokens))
        z = self.encoder.patch_tokens(z)  # context embeddings, (B, n_ctx, D)
        # All target blocks in one predictor call: the context repeated once per block, (K*B, ...)
        K = len(tgt_idxs)
        tgt = torch.cat(tgt_idxs)  # (K*B, n_tgt)
        pred = self.predictor(z.repeat(K, 1, 1), ctx_idx.repeat(K, 1), tgt)  # (K*B, n_tgt, D)
        loss = F.mse_loss(pred, gather_tokens(h.repeat(K, 1, 1), tgt))
        # Spread across images of the mean-pooled embeddings (not across tokens, where the
        # position embeddings alone would count as spread): 0 means every image looks the same.
        # Kept as tensors: reading them (float(...)) waits for a GPU, so only a caller that
        # records them pays for it, not every step.
        self.last_stats = {
            "context_std": z.detach().mean(dim=1).std(dim=0).mean(),
            "target_std": h.mean(dim=1).std(dim=0).mean(),
        }
        return loss

    @torch.no_grad()
    def update_target(self, progress: float) -> float:
        """EMA step: target <- m * target + (1 - m) * context encoder, with m rising linearly
        from ema[0] to ema[1] over training (``progress`` in [0, 1]). Returns m."""
        m = self.ema[0] + (self.ema[1] - self.ema[0]) * min(1.0, max(0.0, progress))
        blend_(self.target_encoder, self.encoder, 1 - m)  # the same update as `WeightAverage`
        return m


def ijepa_loss_fn(model: IJEPA, x, y):
    return model(x), None


@torch.no_grad()
def collapse_stats(encoder: ViT, x: torch.Tensor) -> dict[str, float]:
    """How much ``encoder``'s representation changes from image to image, measured on the
    pooled features ``encoder.features(x)`` (B, D), the vector a probe sees:

    * ``spread``: the standard deviation across images of each dimension, averaged over the
      dimensions (0 for an encoder that maps every image to the same vector);
    * ``rank``: the effective rank of the features' covariance, exp(entropy of its normalised
      eigenvalues), between 1 and D (0 when nothing varies): how many directions carry it.

    Collapse is features that do not vary across images. A spread taken over images *and*
    tokens together would count the position embeddings as variety: an encoder blind to the
    image would score high on it (see `image_blind`)."""
    with evaluating(encoder), torch.no_grad():
        f = encoder.features(x.to(model_device(encoder))).double()  # (B, D)
    spread = f.std(dim=0).mean().item()
    eig = torch.linalg.eigvalsh(torch.cov(f.T)).clamp(min=0)  # (D,)
    total = eig.sum()
    if total <= 1e-12:
        return {"spread": spread, "rank": 0.0}
    p = eig / total
    p = p[p > 0]
    return {"spread": spread, "rank": torch.exp(-(p * p.log()).sum()).item()}


def token_spread(encoder: ViT, x: torch.Tensor) -> float:
    """The flawed collapse score, kept to show why it is flawed: the standard deviation over
    images and patch tokens together, averaged over dimensions. Position embeddings differ
    between tokens, so an encoder that ignores the image still scores well on it."""
    with torch.no_grad():
        h, _ = encoder.forward_features(x.to(model_device(encoder)))
    return encoder.patch_tokens(h).flatten(0, 1).std(dim=0).mean().item()


def image_blind(encoder: ViT) -> ViT:
    """A copy of ``encoder`` that cannot see the image: its patch projection is zeroed, so every
    image becomes the same tokens (bias plus positions). A deliberately collapsed encoder, the
    negative control of `collapse_stats`."""
    blind = copy.deepcopy(encoder)
    with torch.no_grad():
        for p in blind.patch_embed.parameters():
            p.zero_()
    return blind
