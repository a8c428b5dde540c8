"""The book's classifiers: the chapter-4 MNIST ViT (and its position-embedding variants), the
same ViT trained on Fashion-MNIST (the offline stand-in for a pretrained model, chs. 7-9), and
the chapter-8 task: two digits plus "unknown"."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from .. import data, zoo
from ..claims import seed as book_seed
from ..loops import model_device
from ..model import ViT, ViTConfig
from ..train import Recipe, evaluate, fit, seed_everything
from ..transfer import finetune, relabel, select
from ..transforms import DigitAugment

# The seed of every model here: ``$VITBOOK_SEED`` (default 0), read once at import; the zoo
# puts it into every key.
SEED = zoo.SEED


def mnist_config(**overrides) -> ViTConfig:
    """The book's MNIST ViT: 28x28 digits in 7x7 patches (a 4x4 grid), width 64, 3 blocks of
    4 heads, MLP 128, classified from the class token; about 105k parameters. Explicit attention,
    since for 17 tokens it is faster on a CPU than the fused kernel (`python -m vitbook.bench`)."""
    fields = dict(
        image_size=28, patch_size=7, in_channels=1, num_classes=10,
        dim=64, depth=3, heads=4, mlp_dim=128, pool="cls", fused_attn=False,
    )  # fmt: skip
    fields.update(overrides)
    return ViTConfig(**fields)


# The chapter-4 recipe: what the MNIST ViT is trained with (AdamW, warm-up + cosine, label
# smoothing), with small affine augmentation of the digits (`DigitAugment`).
MNIST_RECIPE = Recipe(
    epochs=9,
    batch_size=128,
    lr=3e-3,
    warmup_epochs=0.5,
    weight_decay=0.05,
    label_smoothing=0.1,
    seed=SEED,
)


def train_mnist_classifier(model: nn.Module, recipe: Recipe, train_set=None) -> dict:
    """Train on MNIST's 60,000 training digits (or ``train_set``) with ``recipe`` and the digit
    augmentation, where the model is; report test accuracy."""
    seed_everything(recipe.seed)
    train_set = train_set if train_set is not None else data.mnist("train")
    test_set = data.mnist("test")
    history = fit(model, train_set, test_set, recipe, augmentation=DigitAugment())
    return {
        "test_accuracy": evaluate(model, test_set)["accuracy"],
        "epochs": history.final.get("epoch"),
    }


def build_seeded(cfg_fn, seed: int | None = None):
    """A build function for the zoo: a ViT of ``cfg_fn()``, initialised right after seeding."""

    def build():
        seed_everything(SEED if seed is None else seed)
        return ViT(cfg_fn())

    return build


def entry_recipe(cfg: ViTConfig, recipe: Recipe, **more) -> dict:
    """What a zoo key records of a model: its configuration, its recipe, and anything else."""
    return {"config": cfg.to_dict(), **recipe.to_dict(), **more}


zoo.register(
    zoo.Entry(
        name="mnist-vit",
        description="the chapter-4 ViT trained on MNIST",
        build=build_seeded(mnist_config),
        train=lambda m: train_mnist_classifier(m, MNIST_RECIPE),
        recipe=entry_recipe(mnist_config(), MNIST_RECIPE),
        minutes=2,
    )
)
for _pos in ("sincos", "none"):
    zoo.register(
        zoo.Entry(
            name=f"mnist-vit-{'nopos' if _pos == 'none' else _pos}",
            description=f"the chapter-4 ViT with {'no' if _pos == 'none' else 'a 2D sin-cos'} position embedding, same recipe",
            build=build_seeded(lambda _pos=_pos: mnist_config(pos_embed=_pos)),
            train=lambda m: train_mnist_classifier(m, MNIST_RECIPE),
            recipe=entry_recipe(mnist_config(pos_embed=_pos), MNIST_RECIPE),
            minutes=2,
        )
    )


# ---------------------------------------------------------------------------------------------
# Transfer (chapters 7-9): a ViT pretrained on another task, and its fine-tuned descendant.

FASHION_RECIPE = replace(MNIST_RECIPE, epochs=5)
OPEN_SET_RECIPE = dict(epochs=2, seed=SEED)  # over vitbook.transfer.FINETUNE_RECIPE


def train_fashion(model) -> dict:
    seed_everything(SEED)
    test_set = data.fashion_mnist("test")
    fit(model, data.fashion_mnist("train"), test_set, FASHION_RECIPE, augmentation=DigitAugment())
    return {"test_accuracy": evaluate(model, test_set)["accuracy"]}


KNOWN = (3, 8)  # the two digits the classifier must name
UNKNOWN_TRAIN = (0, 1, 2, 4, 5)  # digits it is shown as examples of "unknown"
UNKNOWN_HELD_OUT = (6, 7, 9)  # digits it never sees in training, only at test time
OPEN_SET_CLASSES = ("3", "8", "unknown")


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
    classes = (*(str(k) for k in known), "unknown")
    novel_fashion = data.ImageDataset(
        fashion_part.images, torch.full((len(fashion_part),), len(known)), classes, "fashion-test"
    )
    return {
        "train": relabel(train, known),
        "test": relabel(select(test_all, (*known, *unknown_train)), known),
        "novel_digits": relabel(select(test_all, unknown_held_out), known),
        "novel_fashion": novel_fashion,
    }


def build_open_set():
    seed_everything(SEED)
    return ViT(mnist_config(num_classes=3))


def train_open_set(model) -> dict:
    sets = open_set()
    torch.manual_seed(SEED)
    pretrained = zoo.get("fashion-vit", device=model_device(model))
    tuned, _ = finetune(
        pretrained, sets["train"], num_classes=3, augmentation=DigitAugment(), **OPEN_SET_RECIPE
    )
    model.load_state_dict(tuned.state_dict())
    return {"test_accuracy": evaluate(model, sets["test"])["accuracy"]}


zoo.register(
    zoo.Entry(
        name="fashion-vit",
        description="the chapter-4 ViT trained on Fashion-MNIST: the offline 'pretrained' model",
        build=build_seeded(mnist_config),
        train=train_fashion,
        recipe=entry_recipe(mnist_config(), FASHION_RECIPE),
        minutes=1.5,
    )
)
zoo.register(
    zoo.Entry(
        name="digits-3-8-unknown",
        description="fashion-vit fine-tuned to 3, 8 and 'unknown' (chapter 8)",
        build=build_open_set,
        train=train_open_set,
        recipe={"config": mnist_config(num_classes=3).to_dict(), **OPEN_SET_RECIPE},
        modules=("model", "train", "data", "transforms", "transfer", "interop"),
        depends=("fashion-vit",),
        minutes=0.5,
    )
)
