"""DeiT-style distillation (Touvron et al., 2021): a student ViT learns from the true labels
and from a teacher's outputs.

* `DistilledViT`: a ViT with a second learnable token, the *distillation token*, beside the class
  token; it has its own head, trained to match the teacher, while the class head learns the
  labels. At inference the two heads' logits are averaged.
* `distillation_loss`: soft distillation (KL divergence to the teacher's temperature-softened
  distribution) or hard distillation (cross-entropy to the teacher's predicted class), mixed
  with the usual cross-entropy on the labels.
* `SmallCNN`: a compact convolutional teacher: its built-in locality is exactly what a ViT lacks
  on small data, which is why DeiT found convnet teachers work best.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .loops import model_device
from .model import ViT, ViTConfig, init_weights


class DistilledViT(ViT):
    """A ViT with a distillation token: tokens are [class, distillation, patches...], and a
    second head, ``head_dist``, on the distillation token."""

    def __init__(self, cfg: ViTConfig):
        if cfg.pool != "cls":
            raise ValueError("DistilledViT reads its class and distillation tokens: use pool='cls'")
        super().__init__(cfg, num_prefix_tokens=2)
        self.head_dist = nn.Linear(cfg.dim, cfg.num_classes)
        init_weights(self.head_dist)

    def replace_head(self, head) -> DistilledViT:
        """Both heads replaced by the same new one (see `ViT.replace_head`)."""
        super().replace_head(head)
        self.head_dist = copy.deepcopy(self.head)
        return self

    def forward_heads(self, x: torch.Tensor):
        """(class-head logits, distillation-head logits)."""
        tokens, _ = self.forward_features(x)
        return self.head(tokens[:, 0]), self.head_dist(tokens[:, 1])

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        tokens, maps = self.forward_features(x, return_attn)
        logits = (self.head(tokens[:, 0]) + self.head_dist(tokens[:, 1])) / 2  # DeiT's inference
        return (logits, maps) if return_attn else logits


def distillation_loss(
    cls_logits,
    dist_logits,
    teacher_logits,
    labels,
    kind: str = "hard",
    alpha: float = 0.5,
    tau: float = 3.0,
    labelled: torch.Tensor | None = None,
) -> torch.Tensor:
    """The DeiT objectives. ``dist_logits`` is the distillation head's output, or the class head's
    again for a student without a distillation token.

    * ``"soft"``: (1 - alpha) * CE(cls, y) + alpha * tau^2 * KL(softmax(teacher/tau) || softmax(dist/tau))
    * ``"hard"``: (1 - alpha) * CE(cls, y) + alpha * CE(dist, argmax teacher)  (DeiT uses alpha = 1/2)
    * ``"none"``: CE(cls, y)

    ``labelled``: a (B,) mask of the images whose label counts. The cross-entropy is summed over
    those and divided by the whole batch, so each labelled image weighs what it would in a fully
    labelled batch (averaged over the labelled ones alone, one labelled image in a batch of 128
    would pull as hard as the teacher on all of them); the teacher's term covers every image."""
    if labelled is None:
        ce = F.cross_entropy(cls_logits, labels)
    else:
        per_image = F.cross_entropy(
            cls_logits, labels.clamp(max=cls_logits.shape[-1] - 1), reduction="none"
        )
        ce = (per_image * labelled).sum() / len(labels)
    if kind == "none":
        return ce
    if kind == "soft":
        kl = F.kl_div(
            F.log_softmax(dist_logits / tau, dim=-1),
            F.log_softmax(teacher_logits / tau, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - alpha) * ce + alpha * tau**2 * kl
    if kind == "hard":
        return (1 - alpha) * ce + alpha * F.cross_entropy(
            dist_logits, teacher_logits.argmax(dim=-1)
        )
    raise ValueError(f"kind must be 'soft', 'hard' or 'none', got {kind!r}")


def student_loss_fn(
    teacher: nn.Module,
    kind: str,
    alpha: float = 0.5,
    tau: float = 3.0,
    unlabelled: int | None = None,
):
    """A loss function for `vitbook.train.fit`: the teacher (frozen, eval mode) sees the same
    augmented batch as the student. With ``unlabelled`` (a label value outside the classes),
    images labelled so count for the teacher's term only: distillation on unlabelled images."""
    teacher.eval().requires_grad_(False)

    def loss_fn(model, x, y):
        if model_device(teacher) != x.device:  # the teacher works where the batch is
            teacher.to(x.device)
        with torch.no_grad():
            t = teacher(x)
        if isinstance(model, DistilledViT) or isinstance(
            getattr(model, "module", None), DistilledViT
        ):
            m = model.module if hasattr(model, "module") else model
            cls_logits, dist_logits = m.forward_heads(x)
            logits = (cls_logits + dist_logits) / 2
        else:
            cls_logits = dist_logits = logits = model(x)
        labelled = None if unlabelled is None else y != unlabelled
        loss = distillation_loss(cls_logits, dist_logits, t, y, kind, alpha, tau, labelled)
        return loss, logits

    return loss_fn


class SmallCNN(nn.Module):
    """A compact convnet teacher for 28x28 digits: two conv blocks and a classifier."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features_ = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width * 7 * 7, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features_(x))
