"""The self-supervision chapters' table (chapters 10, 11 and 15): one protocol for every encoder
of the same architecture, pretrained or not, on the same label budgets.

For each budget (a class-balanced 1% or 10% of MNIST's training labels): a linear probe and a
10-nearest-neighbour vote on the frozen pooled features, and LP-FT fine-tuning of every weight
from the probe's head, each encoder at its own learning rate (chosen on a validation split,
`SSL_FINETUNE_LR`). All accuracies on the 10,000 MNIST test digits."""

from __future__ import annotations

import torch

from .. import data, zoo
from ..loops import pick_device
from ..metrics import extract_features, knn_accuracy
from ..model import ViT
from ..train import evaluate
from ..transfer import finetune_from_probe, label_budget, probe_head
from ..transforms import DigitAugment
from .classifiers import SEED

# The few-label fine-tuning recipe of the self-supervision chapters: 300 steps of 64 images
# (32 passes over 1% of MNIST, 3 over 10%), from the probe's head, with the digit augmentation.
SSL_FINETUNE = dict(steps=300, warmup_epochs=1.0, batch_size=64)
# Each encoder's own fine-tuning learning rate, chosen on a validation split of the training
# images (never the test set) from 3e-4, 1e-3 and 3e-3, by the best mean validation accuracy over
# the two label budgets: `python -m vitbook.bench --only finetune-lr` (its run is in the benchmarks
# appendix). Random weights train best at 1e-3 in these 300 steps, the pretrained encoders at
# 3e-3, the top of the grid; one rate for all would have favoured one side.
SSL_FINETUNE_LR = {"random init": 1e-3, "MAE": 3e-3, "SimMIM": 3e-3, "I-JEPA": 3e-3, "DINO": 3e-3}


def evaluate_encoder(
    encoder: ViT,
    fractions=(0.01, 0.1),
    seed: int = 0,
    lr: float | None = 1e-3,
    train_set=None,
    test_set=None,
) -> dict:
    """The self-supervision chapters' protocol, identical for every encoder. For each fraction
    of the training labels (a class-balanced subset drawn with ``seed``):

    * ``probe_<f>``: a linear probe (logistic regression on frozen pooled features) trained on
      those labelled images;
    * ``knn_<f>``: a 10-nearest-neighbour vote among those images' features;
    * ``finetune_<f>``: LP-FT on the same images: the probe's head, then every weight trained
      for ``SSL_FINETUNE["steps"]`` steps (`vitbook.transfer.finetune_from_probe`).

    The labelled images come from MNIST's training set (or ``train_set``), the accuracies are on
    the 10,000 MNIST test digits (or ``test_set``): the learning-rate selection passes a split
    of the training set for both. ``lr=None`` gives the probes alone."""
    train_set = data.mnist("train") if train_set is None else train_set
    test_set = data.mnist("test") if test_set is None else test_set
    fte, yte = extract_features(encoder, test_set)
    out = {}
    for frac in fractions:
        subset = label_budget(train_set, frac, seed)
        head = probe_head(encoder, subset)
        with torch.no_grad():
            out[f"probe_{frac:g}"] = (head(fte).argmax(1) == yte).float().mean().item()
        ftr, ytr = extract_features(encoder, subset)
        out[f"knn_{frac:g}"] = knn_accuracy(ftr, ytr, fte, yte, k=10)
        if lr is not None:
            tuned = finetune_from_probe(
                encoder, subset, seed=seed, head=head, augmentation=DigitAugment(), lr=lr,
                **SSL_FINETUNE,
            )  # fmt: skip
            out[f"finetune_{frac:g}"] = evaluate(tuned, test_set)["accuracy"]
    return out


def evaluate_ssl_encoders(entry: zoo.Result) -> dict:
    """The chapters' table: the same protocol (`evaluate_encoder`) for a random-init encoder,
    the supervised reference, and the encoders of MAE, SimMIM, I-JEPA and DINO (DINO's
    teacher, as in its paper)."""
    device = pick_device()
    encoders = {
        "random init": zoo.untrained("mnist-vit-p4").to(device),
        "supervised (all labels)": zoo.get("mnist-vit-p4", device=device),
        "MAE": zoo.get("mnist-mae", device=device).encoder,
        "SimMIM": zoo.get("mnist-simmim", device=device).encoder,
        "I-JEPA": zoo.get("mnist-ijepa", device=device).encoder,
        "DINO": zoo.get("mnist-dino", device=device).teacher_encoder,
    }
    # The supervised encoder is a reference for the probe; fine-tuning it again would only
    # cost time (it has seen every label already).
    return {
        "table": {
            name: evaluate_encoder(
                enc, entry.options["fractions"], entry.seed, entry.options["lr"].get(name)
            )
            for name, enc in encoders.items()
        }
    }


zoo.register(
    zoo.Result(
        "ssl-eval",
        "linear probe, kNN and 1%/10%-label fine-tuning of six encoders",
        evaluate_ssl_encoders,
        seed=SEED,
        options={"fractions": (0.01, 0.1), "finetune": SSL_FINETUNE, "lr": SSL_FINETUNE_LR},
        depends=("mnist-vit-p4", "mnist-mae", "mnist-simmim", "mnist-ijepa", "mnist-dino"),
        minutes=3,
    )
)
