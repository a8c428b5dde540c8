"""DINO (Caron et al., 2021): self-distillation with no labels.

A student ViT and a teacher ViT of the same architecture each end in a projection head that
outputs a distribution over ``out_dim`` prototypes. The teacher is not trained by gradients: it
is the exponential moving average of the student (`vitbook.ema.blend_`, as I-JEPA's target).
Each image is cut into *multiple crops*: two large global views and several small local ones;
the small ones go through the same ViT at their own size, its position embeddings interpolated
to their grid (`vitbook.model.ViT.embed` with ``any_size=True``). The teacher sees the global
views only; the student sees them all and learns, by cross-entropy, to give every view the
distribution the teacher gives the *other* global view.

Two operations on the teacher's output keep this from collapsing, and each prevents one of the
two ways it collapses (both kept here as switches, for the chapter's negative controls):

* **centering** subtracts a running mean of the teacher's outputs: without it one prototype
  takes over, whatever the image;
* **sharpening** divides the teacher's output by a low temperature (0.04, against the
  student's 0.1): without it (the teacher at the student's temperature) the output goes
  uniform, again whatever the image.

After pretraining, ``.encoder`` (the student's ViT) is an ordinary ViT; the teacher's is the
one DINO's paper uses for its pictures and features, ``.teacher_encoder``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ema import blend_
from .model import ViT


def random_crops(x: torch.Tensor, n: int, size: int, scale: tuple[float, float]) -> torch.Tensor:
    """``n`` random resized crops of every image of ``x`` (B, C, H, W), each covering a random
    ``scale`` share of the image's area (aspect ratio 3:4 to 4:3), resized to ``size`` pixels:
    (n * B, C, size, size), crop-major. Drawn from torch's global generator."""
    B = x.shape[0]
    m = n * B
    area = torch.empty(m, device=x.device).uniform_(*scale)
    aspect = torch.exp(torch.empty(m, device=x.device).uniform_(math.log(3 / 4), math.log(4 / 3)))
    w = (area * aspect).sqrt().clamp(max=1.0)  # crop width and height, as fractions of the side
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(m, device=x.device) * 2 - 1) * (1 - w)  # centres that keep the crop inside
    cy = (torch.rand(m, device=x.device) * 2 - 1) * (1 - h)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, [m, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x.repeat(n, 1, 1, 1), grid, mode="bilinear", align_corners=False)


class DINOHead(nn.Module):
    """The projection head: an MLP to a small bottleneck, L2-normalised, then a weight-normalised
    linear layer to ``out_dim`` prototype scores (logits)."""

    def __init__(self, dim: int, out_dim: int = 256, hidden: int = 128, bottleneck: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )  # fmt: skip
        self.prototypes = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck, out_dim, bias=False)
        )
        # The prototypes' lengths are fixed at 1 (DINO's "norm_last_layer"): the logits are
        # cosines, and only the temperatures set how sharp a distribution is.
        g = self.prototypes.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(False)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


class DINO(nn.Module):
    """Student (``encoder`` + ``head``), teacher (their moving average), multi-crop views, and
    the teacher's centering and sharpening."""

    def __init__(
        self,
        encoder: ViT,
        out_dim: int = 256,
        local_crops: int = 4,
        local_size: int = 12,
        global_scale: tuple[float, float] = (0.5, 1.0),
        local_scale: tuple[float, float] = (0.15, 0.45),
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
        ema: tuple[float, float] = (0.99, 1.0),
        centering: bool = True,
        sharpening: bool = True,
    ):
        super().__init__()
        self.encoder = encoder
        self.head = DINOHead(encoder.cfg.dim, out_dim)
        self.teacher_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.local_crops, self.local_size = local_crops, local_size
        self.global_scale, self.local_scale = global_scale, local_scale
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp if sharpening else student_temp
        self.center_momentum, self.ema, self.centering = center_momentum, ema, centering
        self.last_stats: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher_encoder.eval()
        self.teacher_head.eval()
        return self

    def views(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(two global views at the image's size (2B, ...), the local views (kB, ...))."""
        size = imgs.shape[-1]
        glob = random_crops(imgs, 2, size, self.global_scale)
        local = random_crops(imgs, self.local_crops, self.local_size, self.local_scale)
        return glob, local

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        B = imgs.shape[0]
        glob, local = self.views(imgs)
        with torch.no_grad():
            t_logits = self.teacher_head(self.teacher_encoder.features(glob))  # (2B, K)
            centred = t_logits - self.center if self.centering else t_logits
            t = (centred / self.teacher_temp).softmax(dim=-1).chunk(2)  # 2 x (B, K)
        s_logits = [self.head(self.encoder.features(glob))]  # (2B, K)
        if self.local_crops:
            s_logits.append(self.head(self.encoder.features(local, any_size=True)))  # (kB, K)
        s = torch.cat(s_logits).div(self.student_temp).log_softmax(dim=-1).split(B)
        loss, pairs = 0.0, 0
        for i, target in enumerate(t):  # each global view teaches every *other* view
            for v, log_p in enumerate(s):
                if v != i:
                    loss = loss + (-target * log_p).sum(dim=-1).mean()
                    pairs += 1
        with torch.no_grad():
            if self.centering:
                batch_center = t_logits.mean(dim=0, keepdim=True)
                self.center.mul_(self.center_momentum).add_(
                    batch_center, alpha=1 - self.center_momentum
                )
            probs = torch.cat(t)
            self.last_stats = {  # tensors: reading them waits for a GPU, so only a reader pays
                "teacher_entropy": -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean(),
                "teacher_top_share": F.one_hot(probs.argmax(-1), probs.shape[1])
                .float()
                .mean(0)
                .max(),
            }
        return loss / pairs

    @torch.no_grad()
    def update_teacher(self, progress: float) -> float:
        """EMA step for the teacher: m rises from ema[0] to ema[1] over training (cosine, as in
        the paper); returns m."""
        lo, hi = self.ema
        m = hi - (hi - lo) * (math.cos(math.pi * min(1.0, max(0.0, progress))) + 1) / 2
        blend_(self.teacher_encoder, self.encoder, 1 - m)
        blend_(self.teacher_head, self.head, 1 - m)
        return m


def dino_loss_fn(model: DINO, x, y):
    """For `vitbook.train.fit`: DINO ignores the labels."""
    return model(x), None


@torch.no_grad()
def output_entropy(model: DINO, x: torch.Tensor) -> dict[str, float]:
    """What the teacher's head says about images ``x`` (one view each, the full image): the
    mean entropy of its distribution over the prototypes (log K: uniform, 0: one-hot) and the
    share of images whose top prototype is the most common one (1: one prototype for all)."""
    model.eval()
    logits = model.teacher_head(model.teacher_encoder.features(x))
    centred = logits - model.center if model.centering else logits
    probs = (centred / model.teacher_temp).softmax(-1)
    top = probs.argmax(-1).bincount(minlength=probs.shape[1]).max().item() / len(probs)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean().item()
    return {"entropy": entropy, "max_entropy": math.log(probs.shape[1]), "top_share": top}
