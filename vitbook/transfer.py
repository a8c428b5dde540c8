"""Transfer: fine-tuning a trained encoder to a new task, and the evaluation protocol the
self-supervision chapters share (linear probe and few-label fine-tuning, the same for every
encoder).
"""

from __future__ import annotations

import copy

import torch

from . import data
from .interop import replace_head
from .metrics import extract_features, linear_probe
from .model import ViT
from .train import History, evaluate, fit

# Fine-tuning recipe: gentler than training from scratch (lower peak learning rate, short
# warm-up), no label smoothing so that probabilities stay calibrated for open-set scores.
FINETUNE_RECIPE = dict(
    lr=1e-3, warmup_epochs=0.5, weight_decay=0.05, label_smoothing=0.0, batch_size=64, augment=True
)


def finetune(
    model: ViT,
    train_set,
    val_set=None,
    num_classes: int | None = None,
    steps: int | None = None,
    copy_model: bool = True,
    **recipe,
) -> tuple[ViT, History]:
    """Fine-tune ``model`` (all weights) on ``train_set``, with a fresh zero-initialised head
    when ``num_classes`` is given. ``steps`` sets the length in optimizer steps (so label budgets
    of different sizes train equally long); otherwise ``epochs`` from the recipe.
    Returns (the fine-tuned model, its history); the original is untouched unless
    ``copy_model=False``."""
    m = copy.deepcopy(model) if copy_model else model
    if num_classes is not None:
        replace_head(m, num_classes)
    r = {**FINETUNE_RECIPE, **recipe}
    if steps is not None:
        per_epoch = max(1, len(train_set) // r["batch_size"])
        r["epochs"] = steps / per_epoch
        r["warmup_epochs"] = min(r["warmup_epochs"], r["epochs"] / 4)
    r.setdefault("progress", False)
    progress = r.pop("progress")
    history = fit(m, train_set, val_set, progress=progress, **r)
    return m.eval(), history


def label_budget(train_set, fraction: float, seed: int = 0):
    """A class-balanced subset holding ``fraction`` of the training labels."""
    per_class = max(1, round(fraction * len(train_set) / len(train_set.classes)))
    return data.few_per_class(train_set, per_class, seed=seed)


def evaluate_encoder(
    encoder: ViT, fractions=(0.01, 0.1), probe_train: int = 10000, steps: int = 300, seed: int = 0
) -> dict:
    """The self-supervision chapters' protocol, identical for every encoder:

    * linear probe: logistic regression on frozen pooled features of ``probe_train`` training
      images, tested on all 10,000 test images;
    * few-label fine-tuning: for each fraction of the labels (class-balanced), fine-tune the
      whole encoder with a new head for the same number of steps, test on all test images.
    """
    train_set, test_set = data.mnist("train"), data.mnist("test")
    probe_set = train_set.subset(
        torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:probe_train]
    )
    ftr, ytr = extract_features(encoder, probe_set)
    fte, yte = extract_features(encoder, test_set)
    out = {"linear_probe": linear_probe(ftr, ytr, fte, yte)}
    for frac in fractions:
        subset = label_budget(train_set, frac, seed)
        torch.manual_seed(seed)
        tuned, _ = finetune(encoder, subset, num_classes=10, steps=steps, seed=seed)
        out[f"finetune_{frac:g}"] = evaluate(tuned, test_set)["accuracy"]
    return out


# ---------------------------------------------------------------------------------------------
# Two classes plus "unknown" (chapter 8)

KNOWN = (3, 8)  # the two digits the classifier must name
UNKNOWN_TRAIN = (0, 1, 2, 4, 5)  # digits it is shown as examples of "unknown"
UNKNOWN_HELD_OUT = (6, 7, 9)  # digits it never sees in training, only at test time
OPEN_SET_CLASSES = ("3", "8", "unknown")


def relabel(ds: data.ImageDataset, known=KNOWN) -> data.ImageDataset:
    """Digits -> open-set labels: the i-th known digit -> i, everything else -> len(known)."""
    labels = torch.full_like(ds.labels, len(known))
    for i, digit in enumerate(known):
        labels[ds.labels == digit] = i
    return data.ImageDataset(ds.images, labels, OPEN_SET_CLASSES, ds.name + "-open-set")


def select(ds: data.ImageDataset, digits) -> data.ImageDataset:
    keep = torch.isin(ds.labels, torch.tensor(list(digits)))
    return ds.subset(keep.nonzero().flatten())


def open_set(
    known=KNOWN,
    unknown_train=UNKNOWN_TRAIN,
    unknown_held_out=UNKNOWN_HELD_OUT,
    fashion_test: int = 2000,
    seed: int = 0,
) -> dict:
    """The chapter-8 task. Returns datasets labelled 0 = first known digit, 1 = second,
    2 = unknown:

    * ``train``: every training image of the known digits, plus as many images of the
      ``unknown_train`` digits as there are of an average known digit;
    * ``test``: the test images of the known and of the ``unknown_train`` digits;
    * ``novel_digits``: test images of the ``unknown_held_out`` digits (never in training);
    * ``novel_fashion``: ``fashion_test`` Fashion-MNIST test images (never in training)."""
    g = torch.Generator().manual_seed(seed)
    train_all, test_all = data.mnist("train"), data.mnist("test")
    known_train = select(train_all, known)
    unknown_pool = select(train_all, unknown_train)
    n_unknown = len(known_train) // len(known)
    unknown_part = unknown_pool.subset(torch.randperm(len(unknown_pool), generator=g)[:n_unknown])
    train = data.ImageDataset(
        torch.cat([known_train.images, unknown_part.images]),
        torch.cat([known_train.labels, unknown_part.labels]),
        name="mnist-train",
    )
    fashion = data.fashion_mnist("test")
    fashion_part = fashion.subset(torch.randperm(len(fashion), generator=g)[:fashion_test])
    novel_fashion = data.ImageDataset(
        fashion_part.images,
        torch.full((len(fashion_part),), len(known)),
        OPEN_SET_CLASSES,
        "fashion-test",
    )
    return {
        "train": relabel(train, known),
        "test": relabel(select(test_all, (*known, *unknown_train)), known),
        "novel_digits": relabel(select(test_all, unknown_held_out), known),
        "novel_fashion": novel_fashion,
    }


def unknown_scores(logits: torch.Tensor, unknown_index: int = 2) -> dict[str, torch.Tensor]:
    """Two ways to say "this is unknown", higher = more likely unknown: the probability of the
    explicit unknown class, and one minus the largest probability of a known class (the
    max-softmax baseline of Hendrycks & Gimpel, 2017)."""
    p = logits.softmax(dim=-1)
    known = torch.cat([p[:, :unknown_index], p[:, unknown_index + 1 :]], dim=1)
    return {"p(unknown)": p[:, unknown_index], "1 - max p(known)": 1 - known.max(dim=1).values}
