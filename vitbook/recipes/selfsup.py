"""Self-supervision (chapters 10 and 11): MAE and I-JEPA pretraining on MNIST's images without
their labels, a supervised reference, and the protocol that compares the encoders.

The encoders have 4x4 patches, a 7x7 grid, so that masking 75% still leaves a dozen patches and
I-JEPA's blocks have room."""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import data, zoo
from ..loops import pick_device
from ..metrics import extract_features
from ..model import ViT, ViTConfig
from ..ssl import IJEPA, MAE, collapse_stats, ijepa_loss_fn, mae_loss_fn
from ..train import Recipe, evaluate, fit, seed_everything
from ..transfer import finetune_from_probe, label_budget, probe_head
from ..transforms import DigitAugment
from .classifiers import SEED, build_seeded, entry_recipe, mnist_config, train_mnist_classifier


def ssl_config(**overrides) -> ViTConfig:
    """The encoder the self-supervision chapters compare: the chapter-4 architecture with 4x4
    patches (49 tokens) and mean-pooled patch tokens as the representation."""
    return mnist_config(**{"patch_size": 4, "pool": "mean", **overrides})


SUPERVISED_P4_RECIPE = Recipe(
    epochs=2, batch_size=128, lr=3e-3, warmup_epochs=0.3, weight_decay=0.05,
    label_smoothing=0.1, seed=SEED,
)  # fmt: skip
MAE_RECIPE = Recipe(
    epochs=4, batch_size=128, lr=1.5e-3, warmup_epochs=0.5, weight_decay=0.05,
    label_smoothing=0.0, seed=SEED, grad_norm_every=0,
)  # fmt: skip
MAE_ARCH = dict(
    decoder_dim=64, decoder_depth=1, decoder_heads=4, mask_ratio=0.75, norm_pix_loss=True,
    norm_eps=1e-2,
)  # fmt: skip
IJEPA_RECIPE = replace(MAE_RECIPE, epochs=3)
IJEPA_ARCH = dict(predictor_dim=32, predictor_depth=2, num_targets=4, ema=(0.99, 1.0))
N_SNAPSHOT = 8  # test digits whose reconstructions are kept after every MAE epoch


def build_mae():
    seed_everything(SEED)
    return MAE(ViT(ssl_config()), **MAE_ARCH)


def train_mae(mae) -> dict:
    fixed = data.mnist("test").tensors()[0][:N_SNAPSHOT]
    snapshots = []

    def snapshot(record):
        torch.manual_seed(1234)  # the same masks at every epoch, so the pictures compare
        snapshots.append(torch.stack(mae.reconstruct(fixed)))  # (3, n, 1, 28, 28)

    history = fit(
        mae, data.mnist("train"), None, MAE_RECIPE, loss_fn=mae_loss_fn, on_epoch_end=snapshot
    )
    return {
        "step_loss": history.step_loss,
        "steps_per_epoch": history.steps_per_epoch,
        "snapshots": torch.stack(snapshots),
    }


def build_ijepa():
    seed_everything(SEED)
    return IJEPA(ViT(ssl_config()), **IJEPA_ARCH)


def train_ijepa(model) -> dict:
    probe = data.mnist("test").tensors()[0][:512]
    stats = {k: [] for k in ("step", "context_std", "target_std", "encoder_spread", "encoder_rank")}

    def on_step_end(step, total):
        model.update_target(step / total)
        if step % 20 == 0 or step == total:
            stats["step"].append(step)
            stats["context_std"].append(float(model.last_stats["context_std"]))
            stats["target_std"].append(float(model.last_stats["target_std"]))
            spread = collapse_stats(model.encoder, probe)
            stats["encoder_spread"].append(spread["spread"])
            stats["encoder_rank"].append(spread["rank"])

    history = fit(
        model, data.mnist("train"), None, IJEPA_RECIPE, loss_fn=ijepa_loss_fn,
        on_step_end=on_step_end,
    )  # fmt: skip
    return {
        "step_loss": history.step_loss,
        "steps_per_epoch": history.steps_per_epoch,
        "std": stats,
    }


zoo.register(
    zoo.Entry(
        name="mnist-vit-p4",
        description="supervised reference for chapters 10-11: 4x4 patches, all labels",
        build=build_seeded(ssl_config),
        train=lambda m: train_mnist_classifier(m, SUPERVISED_P4_RECIPE),
        recipe=entry_recipe(ssl_config(), SUPERVISED_P4_RECIPE),
        minutes=2,
    )
)
zoo.register(
    zoo.Entry(
        name="mnist-mae",
        description="MAE pretraining on MNIST's 60,000 training images, no labels",
        build=build_mae,
        train=train_mae,
        recipe=entry_recipe(ssl_config(), MAE_RECIPE, **MAE_ARCH),
        modules=("model", "train", "data", "transforms", "ssl"),
        minutes=1.5,
    )
)
zoo.register(
    zoo.Entry(
        name="mnist-ijepa",
        description="I-JEPA pretraining on MNIST's 60,000 training images, no labels",
        build=build_ijepa,
        train=train_ijepa,
        recipe=entry_recipe(
            ssl_config(),
            IJEPA_RECIPE,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in IJEPA_ARCH.items()},
        ),  # fmt: skip
        modules=("model", "train", "data", "transforms", "ssl"),
        minutes=2,
    )
)


# The few-label fine-tuning recipe of the self-supervision chapters: 500 steps of 64 images
# (53 passes over 1% of MNIST, 5 over 10%), from the probe's head, at a gentle learning rate,
# with the digit augmentation.
SSL_FINETUNE = dict(steps=500, lr=5e-4, warmup_epochs=1.0, batch_size=64)


def evaluate_encoder(
    encoder: ViT, fractions=(0.01, 0.1), seed: int = 0, fine_tune: bool = True
) -> dict:
    """The self-supervision chapters' protocol, identical for every encoder. For each fraction
    of the training labels (a class-balanced subset drawn with ``seed``):

    * ``probe_<f>``: a linear probe (logistic regression on frozen pooled features) trained on
      those labelled images;
    * ``finetune_<f>``: LP-FT on the same images: the probe's head, then every weight trained
      for ``SSL_FINETUNE["steps"]`` steps (`vitbook.transfer.finetune_from_probe`).

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
            tuned = finetune_from_probe(
                encoder, subset, seed=seed, head=head, augmentation=DigitAugment(), **SSL_FINETUNE
            )
            out[f"finetune_{frac:g}"] = evaluate(tuned, test_set)["accuracy"]
    return out


def evaluate_ssl_encoders(_=None) -> dict:
    """The chapters' table: the same protocol (`evaluate_encoder`) for a random-init encoder,
    the supervised reference, MAE's and I-JEPA's encoders."""
    device = pick_device()
    seed_everything(SEED)
    encoders = {
        "random init": ViT(ssl_config()).to(device),
        "supervised (all labels)": zoo.get("mnist-vit-p4", device=device),
        "MAE": zoo.get("mnist-mae", device=device).encoder,
        "I-JEPA": zoo.get("mnist-ijepa", device=device).encoder,
    }
    # The supervised encoder is a reference for the probe; fine-tuning it again would only
    # cost time (it has seen every label already).
    return {
        "table": {
            name: evaluate_encoder(enc, seed=SEED, fine_tune=not name.startswith("supervised"))
            for name, enc in encoders.items()
        }
    }


zoo.register(
    zoo.Entry(
        name="ssl-eval",
        description="linear probe and 1%/10%-label fine-tuning of four encoders",
        build=None,
        train=evaluate_ssl_encoders,
        recipe={
            "protocol": "linear probe, then LP-FT (not for the supervised reference), on 1% and 10% of the labels",
            "fractions": [0.01, 0.1],
            "seed": SEED,
        },
        modules=("model", "train", "data", "transforms", "ssl", "transfer", "metrics"),
        depends=("mnist-vit-p4", "mnist-mae", "mnist-ijepa"),
        minutes=3,
    )
)
