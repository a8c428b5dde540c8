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
from ..train import Recipe, evaluate, fit
from ..transfer import finetune_from_probe, label_budget, probe_head
from ..transforms import DigitAugment
from .classifiers import SEED, classifier, mnist_config


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
# I-JEPA runs three networks a step (context and target encoders, predictor), about twice MAE's
# time a step here: 2 epochs of I-JEPA take about the time of MAE's 4 (the chapters print both).
IJEPA_RECIPE = replace(MAE_RECIPE, epochs=2)
IJEPA_ARCH = dict(predictor_dim=32, predictor_depth=2, num_targets=4, ema=(0.99, 1.0))
N_SNAPSHOT = 8  # test digits whose reconstructions are kept after every MAE epoch


def mae_network(config: ViTConfig, **arch) -> MAE:
    """MAE around a fresh ViT encoder of ``config``."""
    return MAE(ViT(config), **arch)


def ijepa_network(config: ViTConfig, **arch) -> IJEPA:
    """I-JEPA around a fresh ViT encoder of ``config``."""
    return IJEPA(ViT(config), **arch)


def unlabelled_mnist():
    """MNIST's 60,000 training images (their labels are never read), and no evaluation set."""
    return data.mnist("train"), None


def pretrain_mae(mae, model: zoo.Model) -> dict:
    """MAE pretraining; the reconstructions of a few fixed test digits are kept after every epoch."""
    fixed = data.mnist("test").tensors()[0][:N_SNAPSHOT]
    snapshots = []

    def snapshot(record):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)  # the same masks at every epoch, so the pictures compare
            snapshots.append(torch.stack(mae.reconstruct(fixed)))  # (3, n, 1, 28, 28)

    train_set, _ = model.data()
    history = fit(mae, train_set, None, model.recipe, loss_fn=mae_loss_fn, on_epoch_end=snapshot)
    return {
        "step_loss": history.step_loss,
        "steps_per_epoch": history.steps_per_epoch,
        "snapshots": torch.stack(snapshots),
    }


def pretrain_ijepa(network, model: zoo.Model) -> dict:
    """I-JEPA pretraining, with the collapse measures of the encoder every 20 steps."""
    probe = data.mnist("test").tensors()[0][:512]
    stats = {k: [] for k in ("step", "context_std", "target_std", "encoder_spread", "encoder_rank")}

    def on_step_end(step, total):
        network.update_target(step / total)
        if step % 20 == 0 or step == total:
            stats["step"].append(step)
            stats["context_std"].append(float(network.last_stats["context_std"]))
            stats["target_std"].append(float(network.last_stats["target_std"]))
            spread = collapse_stats(network.encoder, probe)
            stats["encoder_spread"].append(spread["spread"])
            stats["encoder_rank"].append(spread["rank"])

    train_set, _ = model.data()
    history = fit(
        network, train_set, None, model.recipe, loss_fn=ijepa_loss_fn, on_step_end=on_step_end
    )
    return {
        "step_loss": history.step_loss,
        "steps_per_epoch": history.steps_per_epoch,
        "std": stats,
    }


classifier(
    "mnist-vit-p4",
    "supervised reference for chapters 10-11: 4x4 patches, all labels",
    ssl_config(),
    SUPERVISED_P4_RECIPE,
)
zoo.register(
    zoo.Model(
        "mnist-mae",
        "MAE pretraining on MNIST's 60,000 training images, no labels",
        mae_network, ssl_config(), MAE_RECIPE, pretrain_mae,
        data=unlabelled_mnist, arch=MAE_ARCH, minutes=1.5,
    )
)  # fmt: skip
zoo.register(
    zoo.Model(
        "mnist-ijepa",
        "I-JEPA pretraining on MNIST's 60,000 training images, no labels",
        ijepa_network, ssl_config(), IJEPA_RECIPE, pretrain_ijepa,
        data=unlabelled_mnist, arch=IJEPA_ARCH, minutes=2,
    )
)  # fmt: skip

# The few-label fine-tuning recipe of the self-supervision chapters: 300 steps of 64 images
# (32 passes over 1% of MNIST, 3 over 10%), from the probe's head, with the digit augmentation.
SSL_FINETUNE = dict(steps=300, warmup_epochs=1.0, batch_size=64)
# Each encoder's own fine-tuning learning rate, chosen on a validation split of the training
# images (never the test set) from 3e-4, 1e-3 and 3e-3: `python -m vitbook.bench --only
# finetune-lr` (the benchmarks appendix has the run). A from-scratch encoder needs a larger rate
# than a pretrained one in the same number of steps; one rate for all would favour one side.
SSL_FINETUNE_LR = {"random init": 1e-3, "MAE": 1e-3, "I-JEPA": 1e-3}


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
        if lr is not None:
            tuned = finetune_from_probe(
                encoder, subset, seed=seed, head=head, augmentation=DigitAugment(), lr=lr,
                **SSL_FINETUNE,
            )  # fmt: skip
            out[f"finetune_{frac:g}"] = evaluate(tuned, test_set)["accuracy"]
    return out


def evaluate_ssl_encoders(entry: zoo.Result) -> dict:
    """The chapters' table: the same protocol (`evaluate_encoder`) for a random-init encoder,
    the supervised reference, MAE's and I-JEPA's encoders."""
    device = pick_device()
    encoders = {
        "random init": zoo.untrained("mnist-vit-p4").to(device),
        "supervised (all labels)": zoo.get("mnist-vit-p4", device=device),
        "MAE": zoo.get("mnist-mae", device=device).encoder,
        "I-JEPA": zoo.get("mnist-ijepa", device=device).encoder,
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
        "linear probe and 1%/10%-label fine-tuning of four encoders",
        evaluate_ssl_encoders,
        seed=SEED,
        options={"fractions": (0.01, 0.1), "finetune": SSL_FINETUNE, "lr": SSL_FINETUNE_LR},
        depends=("mnist-vit-p4", "mnist-mae", "mnist-ijepa"),
        minutes=3,
    )
)
