"""Transfer: fine-tuning a trained encoder to a new task, and the evaluation protocol the
self-supervision chapters share (linear probe and few-label fine-tuning, the same for every
encoder).
"""

from __future__ import annotations

import copy

import torch

from . import data
from .metrics import extract_features, fit_linear_probe
from .model import ViT
from .train import History, fit

# Fine-tuning recipe: gentler than training from scratch (lower peak learning rate, short
# warm-up), no label smoothing so that probabilities stay calibrated for open-set scores.
FINETUNE_RECIPE = dict(
    lr=1e-3, warmup_epochs=0.5, weight_decay=0.05, label_smoothing=0.0, batch_size=64
)


def finetune(
    model: ViT,
    train_set,
    val_set=None,
    num_classes: int | None = None,
    steps: int | None = None,
    copy_model: bool = True,
    augmentation=None,
    progress: bool = False,
    **recipe,
) -> tuple[ViT, History]:
    """Fine-tune ``model`` (all weights) on ``train_set`` where the model is, with a fresh
    zero-initialised head when ``num_classes`` is given. ``steps`` sets the length in optimizer
    steps (so label budgets of different sizes train equally long); otherwise ``epochs`` from
    the recipe. ``recipe``: `vitbook.train.Recipe` fields over `FINETUNE_RECIPE`;
    ``augmentation``: as in `fit` (none unless given). Returns (the fine-tuned model, its
    history); the original is untouched unless ``copy_model=False``."""
    m = copy.deepcopy(model) if copy_model else model
    if num_classes is not None:
        m.replace_head(num_classes)
    r = {**FINETUNE_RECIPE, **recipe}
    if steps is not None:
        per_epoch = max(1, len(train_set) // r["batch_size"])
        r["epochs"] = steps / per_epoch
        r["warmup_epochs"] = min(r["warmup_epochs"], r["epochs"] / 4)
    history = fit(m, train_set, val_set, r, augmentation=augmentation, progress=progress)
    return m.eval(), history


def label_budget(train_set, fraction: float, seed: int = 0):
    """A class-balanced subset holding ``fraction`` of the training labels."""
    per_class = max(1, round(fraction * len(train_set) / len(train_set.classes)))
    return data.few_per_class(train_set, per_class, seed=seed)


def probe_head(encoder: ViT, train_set, num_classes: int = 10) -> torch.nn.Linear:
    """A linear probe on ``encoder``'s frozen pooled features of ``train_set``
    (`vitbook.metrics.fit_linear_probe`'s logistic regression), returned as a head: an
    ``nn.Linear`` on the raw features, with the probe's standardisation folded into it."""
    feats, labels = extract_features(encoder, train_set)
    w, b, mean, std = fit_linear_probe(feats, labels, num_classes)
    head = torch.nn.Linear(feats.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_((w / std[:, None]).T)  # (K, D): x -> ((x - mean) / std) @ w + b
        head.bias.copy_(b - (mean / std) @ w)
    return head


def finetune_from_probe(
    encoder: ViT,
    train_set,
    steps: int,
    seed: int = 0,
    head: torch.nn.Linear | None = None,
    **recipe,
) -> ViT:
    """LP-FT (Kumar et al., 2022): fit a linear probe on the frozen features first, start the
    fine-tune from that head, then train every weight. Starting from the probe, the fine-tune
    begins where the probe ends instead of undoing the features with a random head's
    gradients; a fine-tune that ends below its own probe points at a bad recipe. ``head``: the
    probe already fitted on ``train_set`` (`probe_head`), if the caller has it; it is copied,
    not trained. Returns the fine-tuned copy; ``encoder`` is untouched."""
    probe = copy.deepcopy(head) if head is not None else probe_head(encoder, train_set)
    model = copy.deepcopy(encoder).replace_head(probe)
    torch.manual_seed(seed)
    tuned, _ = finetune(model, train_set, steps=steps, seed=seed, copy_model=False, **recipe)
    return tuned


# ---------------------------------------------------------------------------------------------
# Known classes plus "unknown" (the chapter-8 task itself is in vitbook.recipes.classifiers)


def relabel(ds: data.ImageDataset, known) -> data.ImageDataset:
    """Classes -> open-set labels: the i-th ``known`` class -> i, everything else ->
    len(known), named "unknown"."""
    labels = torch.full_like(ds.labels, len(known))
    for i, digit in enumerate(known):
        labels[ds.labels == digit] = i
    classes = (*(str(k) for k in known), "unknown")
    return data.ImageDataset(ds.images, labels, classes, ds.name + "-open-set")


def select(ds: data.ImageDataset, digits) -> data.ImageDataset:
    keep = torch.isin(ds.labels, torch.tensor(list(digits)))
    return ds.subset(keep.nonzero().flatten())


def unknown_scores(logits: torch.Tensor, unknown_index: int = 2) -> dict[str, torch.Tensor]:
    """Two ways to say "this is unknown", higher = more likely unknown:

    * ``"p(unknown)"``: the probability of the explicit unknown class under the full softmax;
    * ``"max-softmax"``: the baseline of Hendrycks & Gimpel (2017), one minus the largest
      probability of a softmax over the *known* classes' logits alone. It never looks at the
      unknown logit, so it is what a classifier of the known classes alone would say.

    ``logits``: (B, C), the unknown class at column ``unknown_index``; each score is (B,)."""
    known_logits = torch.cat([logits[:, :unknown_index], logits[:, unknown_index + 1 :]], dim=1)
    return {
        "p(unknown)": logits.softmax(dim=-1)[:, unknown_index],
        "max-softmax": 1 - known_logits.softmax(dim=-1).max(dim=1).values,
    }
