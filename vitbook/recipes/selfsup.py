"""Self-supervision (chapters 10 and 11): MAE and I-JEPA pretraining on MNIST's images without
their labels, and a supervised reference (the protocol that compares the encoders is
`vitbook.recipes.ssl_table`).

The encoders have 4x4 patches, a 7x7 grid, so that masking 75% still leaves a dozen patches and
I-JEPA's blocks have room."""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import data, zoo
from ..model import ViT, ViTConfig
from ..ssl import IJEPA, MAE, collapse_stats, ijepa_loss_fn, mae_loss_fn
from ..train import Recipe, fit
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
