"""The book's classifiers: the chapter-4 MNIST ViT (and its position-embedding variants), the
same ViT trained on Fashion-MNIST (the offline stand-in for a pretrained model, chs. 7-9), and
the chapter-8 task: two digits plus "unknown", and the plain two-digit classifier beside it.

Each model is one `vitbook.zoo.Model` declaration: architecture and configuration, recipe, data,
augmentation, and the procedure (`supervised`, `fine_tuned`) that trains it from them."""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import data, settings, zoo
from ..loops import model_device
from ..model import ViT, ViTConfig
from ..train import Recipe, evaluate, fit
from ..transfer import FINETUNE_RECIPE, relabel, select
from ..transforms import DigitAugment

# The seed of every model and experiment here: $VITBOOK_SEED (default 0), read once.
SEED = settings.seed()


def mnist_config(**overrides) -> ViTConfig:
    """The book's MNIST ViT: 28x28 digits in 7x7 patches (a 4x4 grid), width 64, 3 blocks of
    4 heads, MLP 128, classified from the class token; about 105k parameters. Explicit attention,
    since for 17 tokens it is as fast on a CPU as the fused kernel (`python -m vitbook.bench`)."""
    fields = dict(
        image_size=28, patch_size=7, in_channels=1, num_classes=10,
        dim=64, depth=3, heads=4, mlp_dim=128, pool="cls", fused_attn=False,
    )  # fmt: skip
    fields.update(overrides)
    return ViTConfig(**fields)


# The chapter-4 recipe: what the MNIST ViT is trained with (AdamW, warm-up + cosine, label
# smoothing), with small affine augmentation of the digits (`DigitAugment`).
MNIST_RECIPE = Recipe(
    epochs=6,
    batch_size=128,
    lr=3e-3,
    warmup_epochs=0.5,
    weight_decay=0.05,
    label_smoothing=0.1,
    seed=SEED,
)


def mnist_sets():
    """MNIST's 60,000 training digits, and its 10,000 test digits to evaluate on."""
    return data.mnist("train"), data.mnist("test")


def fashion_sets():
    """Fashion-MNIST's 60,000 training images, and its 10,000 test images."""
    return data.fashion_mnist("train"), data.fashion_mnist("test")


def supervised(network, model: zoo.Model) -> dict:
    """Train ``network`` on the declaration's data with its recipe and augmentation, where the
    network is; report the last epoch's test accuracy and keep the whole training history (so
    that chapter 4 can show a run the zoo did instead of training a second copy)."""
    train_set, test_set = model.data()
    history = fit(network, train_set, test_set, model.recipe, augmentation=model.augmentation)
    return {
        "test_accuracy": history.final["val_acc"],
        "history": history.to_dict(),
        "trained_with": trained_with(network),
    }


def trained_with(network) -> dict:
    """Where a run happened: the device, torch's CPU kernels and threads (a run repeats bit for
    bit only where all three match)."""
    return {
        "device": str(model_device(network)),
        "kernels": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def classifier(name: str, description: str, config: ViTConfig, recipe: Recipe = MNIST_RECIPE,
               sets=mnist_sets, minutes: float = 2) -> zoo.Model:  # fmt: skip
    """A ViT trained from scratch by `supervised`, with the digit augmentation."""
    return zoo.register(
        zoo.Model(
            name, description, ViT, config, recipe, supervised,
            data=sets, augmentation=DigitAugment(), minutes=minutes,
        )
    )  # fmt: skip


classifier("mnist-vit", "the chapter-4 ViT trained on MNIST", mnist_config())
classifier(
    "mnist-vit-sincos",
    "the chapter-4 ViT with a 2D sin-cos position embedding, same recipe",
    mnist_config(pos_embed="sincos"),
)
classifier(
    "mnist-vit-nopos",
    "the chapter-4 ViT with no position embedding, same recipe",
    mnist_config(pos_embed="none"),
)


# ---------------------------------------------------------------------------------------------
# Transfer (chapters 7-9): a ViT pretrained on another task, and its fine-tuned descendants.

FASHION_RECIPE = replace(MNIST_RECIPE, epochs=4)
classifier(
    "fashion-vit",
    "the chapter-4 ViT trained on Fashion-MNIST: the offline 'pretrained' model",
    mnist_config(),
    FASHION_RECIPE,
    fashion_sets,
    minutes=1.5,
)

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
    fashion_train: int = 0,
) -> dict:
    """The chapter-8 task. Returns datasets labelled 0 = first known digit, 1 = second,
    2 = unknown:

    * ``train``: every training image of the known digits, plus as many images of the
      ``unknown_train`` digits as there are of an average known digit;
    * ``test``: the test images of the known and of the ``unknown_train`` digits;
    * ``novel_digits``: test images of the ``unknown_held_out`` digits (never in training);
    * ``novel_fashion``: ``fashion_test`` Fashion-MNIST test images (never in training).

    ``fashion_train`` Fashion-MNIST *training* images join the unknown training examples (0 by
    default: the model is never shown a garment). ``seed`` (default: the book's,
    `vitbook.settings.seed`) draws the unknown training examples and the Fashion-MNIST images."""
    g = torch.Generator().manual_seed(SEED if seed is None else seed)
    train_all, test_all = data.mnist("train"), data.mnist("test")
    known_train = select(train_all, known)
    unknown_pool = select(train_all, unknown_train)
    n_unknown = len(known_train) // len(known)
    unknown_part = unknown_pool.subset(torch.randperm(len(unknown_pool), generator=g)[:n_unknown])
    images = [known_train.images, unknown_part.images]
    labels = [known_train.labels, unknown_part.labels]
    if fashion_train:
        clothes = data.fashion_mnist("train")
        g_clothes = torch.Generator().manual_seed((SEED if seed is None else seed) + 1)
        clothes = clothes.subset(torch.randperm(len(clothes), generator=g_clothes)[:fashion_train])
        images.append(clothes.images)
        labels.append(torch.full((len(clothes),), UNKNOWN_TRAIN[0]))  # relabelled "unknown" below
    train = data.ImageDataset(torch.cat(images), torch.cat(labels), name="mnist-train")
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


def open_set_sets():
    """The chapter-8 task's training set (3, 8 and unknowns) and its test set of seen kinds."""
    sets = open_set()
    return sets["train"], sets["test"]


def open_set_with_clothes_sets():
    """The chapter-8 training set with 2,000 Fashion-MNIST training images among the unknowns
    (the control that shows an unknown class covers what it was shown), and the test set."""
    sets = open_set(fashion_train=2000)
    return sets["train"], sets["test"]


def fine_tuned(network, model: zoo.Model) -> dict:
    """Start from the zoo model ``model.options["start"]``, with a zero-initialised head of the
    declaration's classes (the paper's fine-tuning), and train every weight on the declaration's
    data with its recipe and augmentation."""
    start = zoo.get(model.options["start"], device=model_device(network))
    start.replace_head(model.config.num_classes)
    network.load_state_dict(start.state_dict())
    train_set, test_set = model.data()
    fit(network, train_set, None, model.recipe, augmentation=model.augmentation, progress=False)
    return {"test_accuracy": evaluate(network, test_set)["accuracy"]}


OPEN_SET_RECIPE = Recipe(**{**FINETUNE_RECIPE, "epochs": 2, "seed": SEED})
zoo.register(
    zoo.Model(
        "digits-3-8-unknown",
        "fashion-vit fine-tuned to 3, 8 and 'unknown' (chapter 8)",
        ViT, mnist_config(num_classes=3), OPEN_SET_RECIPE, fine_tuned,
        data=open_set_sets, augmentation=DigitAugment(), options={"start": "fashion-vit"},
        depends=("fashion-vit",), minutes=0.5,
    )
)  # fmt: skip


zoo.register(
    zoo.Model(
        "digits-3-8-unknown-shown-clothes",
        "fashion-vit fine-tuned to 3, 8 and 'unknown', with 2,000 garments among the unknowns",
        ViT, mnist_config(num_classes=3), OPEN_SET_RECIPE, fine_tuned,
        data=open_set_with_clothes_sets, augmentation=DigitAugment(),
        options={"start": "fashion-vit"}, depends=("fashion-vit",), minutes=0.5,
    )
)  # fmt: skip


def known_digit_sets():
    """Every training 3 and 8 (labelled 0 and 1), and the test set's 3s and 8s: the chapter-8
    task without an unknown class."""
    sets = open_set()
    keep = [
        s.subset((s.labels < len(KNOWN)).nonzero().flatten()) for s in (sets["train"], sets["test"])
    ]
    return tuple(data.ImageDataset(s.images, s.labels, OPEN_SET_CLASSES[:2], s.name) for s in keep)


zoo.register(
    zoo.Model(
        "digits-3-8",
        "fashion-vit fine-tuned to tell 3 from 8 alone, no unknown class (chapter 8's comparison)",
        ViT, mnist_config(num_classes=2), OPEN_SET_RECIPE, fine_tuned,
        data=known_digit_sets, augmentation=DigitAugment(), options={"start": "fashion-vit"},
        depends=("fashion-vit",), minutes=0.3,
    )
)  # fmt: skip
