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
        m.replace_head(num_classes)
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


# The few-label fine-tuning recipe of the self-supervision chapters: 500 steps of 64 images
# (53 passes over 1% of MNIST, 5 over 10%), from the probe's head, at a gentle learning rate.
SSL_FINETUNE = dict(steps=500, lr=5e-4, warmup_epochs=1.0, batch_size=64)


def evaluate_encoder(
    encoder: ViT, fractions=(0.01, 0.1), seed: int = 0, fine_tune: bool = True
) -> dict:
    """The self-supervision chapters' protocol, identical for every encoder. For each fraction
    of the training labels (a class-balanced subset drawn with ``seed``):

    * ``probe_<f>``: a linear probe (logistic regression on frozen pooled features) trained on
      those labelled images;
    * ``finetune_<f>``: LP-FT on the same images: the probe's head, then every weight trained
      for ``SSL_FINETUNE["steps"]`` steps (`finetune_from_probe`).

    All accuracies are on the 10,000 MNIST test digits. ``fine_tune=False`` gives the probes
    alone."""
    train_set, test_set = data.mnist("train"), data.mnist("test")
    fte, yte = extract_features(encoder, test_set)
    out = {}
    for frac in fractions:
        subset = label_budget(train_set, frac, seed)
        head = probe_head(encoder, subset)
        with torch.no_grad():
            out[f"probe_{frac:g}"] = (head(fte).argmax(1) == yte).float().mean().item()
        if fine_tune:
            tuned = finetune_from_probe(encoder, subset, seed=seed, head=head, **SSL_FINETUNE)
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
    seed: int | None = None,
) -> dict:
    """The chapter-8 task. Returns datasets labelled 0 = first known digit, 1 = second,
    2 = unknown:

    * ``train``: every training image of the known digits, plus as many images of the
      ``unknown_train`` digits as there are of an average known digit;
    * ``test``: the test images of the known and of the ``unknown_train`` digits;
    * ``novel_digits``: test images of the ``unknown_held_out`` digits (never in training);
    * ``novel_fashion``: ``fashion_test`` Fashion-MNIST test images (never in training).

    ``seed`` (default: the book's, :func:`vitbook.claims.seed`) draws the unknown training
    examples and the Fashion-MNIST images."""
    from .claims import seed as book_seed

    g = torch.Generator().manual_seed(book_seed() if seed is None else seed)
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
