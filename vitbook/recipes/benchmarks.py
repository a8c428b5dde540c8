"""The book's benchmark recipes, which ``python -m vitbook.bench`` runs: time to 98.5% with the
chapter-4 recipe, and the best-accuracy recipes for the plain ViT and the paper's hybrid."""

from __future__ import annotations

from dataclasses import replace

from .. import data, hybrid
from ..model import ViT, preset
from ..perf import time_to_accuracy
from ..transforms import DigitAugment
from .classifiers import MNIST_RECIPE, SEED, mnist_config


def mnist_from_disk() -> tuple:
    """MNIST's training and test sets read again (not from memory): part of "from nothing"."""
    data.forget()
    return data.mnist("train"), data.mnist("test")


def chapter4_time_to_accuracy(target: float = 0.985) -> dict:
    return time_to_accuracy(
        target, MNIST_RECIPE, lambda: ViT(mnist_config()), mnist_from_disk, DigitAugment()
    )


# The best-accuracy recipe: the chapter-4 recipe with finer patches (4x4, 49 tokens), a wider
# and deeper model (width 96, 6 blocks, 0.46M parameters) and more epochs (24; about 40 minutes
# on two CPU cores).
BEST_CONFIG = mnist_config(patch_size=4, dim=96, depth=6, mlp_dim=192)
BEST_RECIPE = replace(MNIST_RECIPE, epochs=24, lr=2e-3, warmup_epochs=1)


def best_accuracy() -> dict:
    out = time_to_accuracy(
        0.996, BEST_RECIPE, lambda: ViT(BEST_CONFIG), mnist_from_disk, DigitAugment()
    )
    out["config"] = BEST_CONFIG.to_dict()
    return out


# The hybrid best-accuracy recipe (paper section 3.1, `vitbook.hybrid`): the same 7x7 grid of
# tokens, but made by five 3x3 convolutions (two at each of 28x28 and 14x14, one down to 7x7)
# instead of cutting 4x4 patches; 4 blocks of width 128, tokens averaged for the head; 15 epochs
# (the target's limit) of batches of 64, compiled. The model judged is the moving average of the
# weights over roughly the last two epochs (decay 0.9995 at 938 steps an epoch). The recipes
# tried before it are listed in the appendix (book/appendix_benchmarks.md).
BEST_HYBRID_CONFIG = mnist_config(patch_size=4, dim=128, depth=4, mlp_dim=256, pool="mean")
BEST_HYBRID_STEM = ((32, 1), (32, 1), (64, 2), (64, 1), (128, 2))
BEST_HYBRID_RECIPE = replace(
    MNIST_RECIPE, epochs=15, batch_size=64, lr=1.5e-3, warmup_epochs=1, compile=True,
    ema_decay=0.9995,
)  # fmt: skip


def build_best_hybrid() -> hybrid.HybridViT:
    return hybrid.HybridViT(BEST_HYBRID_CONFIG, BEST_HYBRID_STEM)


def best_hybrid_accuracy(seed: int | None = None) -> dict:
    """The hybrid best-accuracy run; ``seed`` replaces the recipe's seed to see the spread."""
    recipe = BEST_HYBRID_RECIPE if seed is None else replace(BEST_HYBRID_RECIPE, seed=seed)
    out = time_to_accuracy(0.996, recipe, build_best_hybrid, mnist_from_disk, DigitAugment())
    out["config"] = {**BEST_HYBRID_CONFIG.to_dict(), "stem (channels, stride)": BEST_HYBRID_STEM}
    return out


# ViT-Ti/16 at ImageNet size (224 px, 3 channels, 1000 classes), the throughput table's second row.
VIT_TI = preset("ViT-Ti/16")


# The fine-tuning learning rate of each encoder in the self-supervision chapters, chosen on a
# validation split of the training images (the test set is never looked at).
FINETUNE_LRS = (3e-4, 1e-3, 3e-3)


def select_finetune_lr(fractions=(0.01, 0.1), val_size: int = 10000) -> dict:
    """For each encoder of the self-supervision table, the protocol's fine-tune at every rate of
    `FINETUNE_LRS`, trained on label budgets drawn from 50,000 training images and scored on the
    other 10,000: returns the validation accuracies and the rate with the best mean."""
    from .. import zoo
    from ..loops import pick_device
    from .ssl_table import evaluate_encoder

    device = pick_device()
    split = data.train_val_split(data.mnist("train"), val_size, seed=SEED)
    encoders = {
        "random init": zoo.untrained("mnist-vit-p4").to(device),
        "MAE": zoo.get("mnist-mae", device=device).encoder,
        "SimMIM": zoo.get("mnist-simmim", device=device).encoder,
        "I-JEPA": zoo.get("mnist-ijepa", device=device).encoder,
        "DINO": zoo.get("mnist-dino", device=device).teacher_encoder,
    }
    table, chosen = {}, {}
    for name, enc in encoders.items():
        for lr in FINETUNE_LRS:
            got = evaluate_encoder(
                enc, fractions, SEED, lr, train_set=split.train, test_set=split.val
            )
            table[(name, lr)] = {f: got[f"finetune_{f:g}"] for f in fractions}
            print(
                f"{name:12s} lr {lr:g}: "
                + ", ".join(f"{f:g}: {v:.4f}" for f, v in table[(name, lr)].items()),
                flush=True,
            )
        chosen[name] = max(FINETUNE_LRS, key=lambda lr: sum(table[(name, lr)].values()))
    return {"table": table, "chosen": chosen, "fractions": fractions}


def training_levers() -> dict:
    """The levers measured in one run: step time in fp32 eager, bf16 autocast and compiled; and
    the chapter-4 recipe before (9 epochs) and after (its present length) from nothing."""
    from ..perf import step_levers

    schedules = {
        "before: 9 epochs": replace(MNIST_RECIPE, epochs=9),
        f"after: {MNIST_RECIPE.epochs:g} epochs (the book's recipe)": MNIST_RECIPE,
    }
    out = {"steps": step_levers(mnist_config()), "schedules": {}}
    for name, recipe in schedules.items():
        out["schedules"][name] = time_to_accuracy(
            0.985, recipe, lambda: ViT(mnist_config()), mnist_from_disk, DigitAugment()
        )
    return out
