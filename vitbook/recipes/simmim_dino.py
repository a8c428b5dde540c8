"""SimMIM and DINO (chapters 10 and 15): the other two families of self-supervision, on the same
encoder and the same 60,000 unlabelled MNIST images as MAE and I-JEPA, and DINO's two
collapses, trained on purpose as its negative controls.

* ``mnist-simmim``: SimMIM, the encoder seeing every position with mask tokens at the hidden
  ones (`vitbook.simmim`);
* ``mnist-dino``: DINO, multi-crop self-distillation (`vitbook.dino`), with the class token as
  the representation (DINO's head reads it; the encoder is the same size as the others);
* ``mnist-dino-no-centering``, ``mnist-dino-no-sharpening``: the same training with one of the
  two operations that keep DINO from collapsing switched off, for fewer steps: each collapses
  its own way, and the collapse measures of chapter 11 say which.

DINO's step runs the student on two global and four local views and the teacher on the two
global ones: about three times a supervised step here. So its CPU schedule is short (the chapter
prints it); ``DINO_LONG`` is the schedule for a GPU or Colab."""

from __future__ import annotations

from dataclasses import replace

from .. import data, zoo
from ..dino import DINO, dino_loss_fn, output_entropy
from ..model import ViT, ViTConfig
from ..simmim import SimMIM, simmim_loss_fn
from ..ssl import collapse_stats
from ..train import Recipe, fit
from .classifiers import SEED
from .selfsup import MAE_RECIPE, ssl_config, unlabelled_mnist

SIMMIM_RECIPE = replace(MAE_RECIPE, epochs=1)  # every step encodes all 49 positions
SIMMIM_ARCH = dict(mask_ratio=0.75)  # MAE's ratio: the two differ in how the encoder sees the mask
DINO_STEPS = 400  # of 64 images: under half an epoch, what the CPU budget allows
DINO_RECIPE = Recipe(
    epochs=DINO_STEPS * 64 / 60000, batch_size=64, lr=3e-4, warmup_epochs=40 * 64 / 60000,
    weight_decay=0.04, label_smoothing=0.0, seed=SEED, grad_norm_every=0,
)  # fmt: skip
DINO_LONG = replace(DINO_RECIPE, epochs=30, batch_size=256, lr=5e-4, warmup_epochs=2)  # a GPU
DINO_ARCH = dict(out_dim=256, local_crops=4, local_size=12)
COLLAPSE_RECIPE = replace(DINO_RECIPE, epochs=150 * 64 / 60000)  # the controls collapse quickly


def dino_config(**overrides) -> ViTConfig:
    """The encoder of the other chapters (4x4 patches, width 64, 3 blocks), read from its class
    token: DINO's head, and its attention pictures, are the class token's."""
    return ssl_config(**{"pool": "cls", **overrides})


def simmim_network(config: ViTConfig, **arch) -> SimMIM:
    return SimMIM(ViT(config), **arch)


def dino_network(config: ViTConfig, **arch) -> DINO:
    return DINO(ViT(config), **arch)


def pretrain_simmim(network, model: zoo.Model) -> dict:
    train_set, _ = model.data()
    history = fit(network, train_set, None, model.recipe, loss_fn=simmim_loss_fn)
    return {"step_loss": history.step_loss, "steps_per_epoch": history.steps_per_epoch}


def pretrain_dino(network, model: zoo.Model) -> dict:
    """DINO pretraining, with the teacher's output entropy and the encoder's collapse measures
    every 25 steps."""
    probe = data.mnist("test").tensors()[0][:512]
    stats = {k: [] for k in ("step", "teacher_entropy", "top_share", "spread", "rank")}

    def on_step_end(step, total):
        network.update_teacher(step / total)
        if step % 25 == 0 or step == total:
            out = output_entropy(network, probe)
            network.train()
            c = collapse_stats(network.teacher_encoder, probe)
            stats["step"].append(step)
            stats["teacher_entropy"].append(out["entropy"])
            stats["top_share"].append(out["top_share"])
            stats["spread"].append(c["spread"])
            stats["rank"].append(c["rank"])

    train_set, _ = model.data()
    history = fit(
        network, train_set, None, model.recipe, loss_fn=dino_loss_fn, on_step_end=on_step_end
    )
    return {
        "step_loss": history.step_loss,
        "steps_per_epoch": history.steps_per_epoch,
        "stats": stats,
    }


zoo.register(
    zoo.Model(
        "mnist-simmim", "SimMIM pretraining on MNIST's 60,000 training images, no labels",
        simmim_network, ssl_config(), SIMMIM_RECIPE, pretrain_simmim,
        data=unlabelled_mnist, arch=SIMMIM_ARCH, minutes=1.5,
    )
)  # fmt: skip
for _name, _recipe, _arch in (
    ("mnist-dino", DINO_RECIPE, DINO_ARCH),
    ("mnist-dino-no-centering", COLLAPSE_RECIPE, {**DINO_ARCH, "centering": False}),
    ("mnist-dino-no-sharpening", COLLAPSE_RECIPE, {**DINO_ARCH, "sharpening": False}),
):
    zoo.register(
        zoo.Model(
            _name, f"DINO on MNIST's 60,000 training images, no labels{_name[10:].replace('-', ' ')}",
            dino_network, dino_config(), _recipe, pretrain_dino,
            data=unlabelled_mnist, arch=_arch, minutes=1,
        )
    )  # fmt: skip
