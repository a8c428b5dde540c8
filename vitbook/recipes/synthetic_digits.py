"""Synthetic data (chapter 13): the chapter-4 ViT trained on synthetic, real and mixed digits,
and few real labels with and without synthetic digits (`vitbook.synthetic`)."""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import data, synthetic, zoo
from ..loops import pick_device
from ..model import ViT
from ..train import evaluate, fit, seed_everything
from ..transforms import DigitAugment
from .classifiers import (
    MNIST_RECIPE,
    SEED,
    build_seeded,
    entry_recipe,
    mnist_config,
    train_mnist_classifier,
)

SYNTH_RECIPE = replace(MNIST_RECIPE, epochs=4)
SOURCES = {
    "synthetic": "60,000 synthetic digits",
    "real": "60,000 MNIST digits",
    "mixed": "30,000 MNIST + 30,000 synthetic",
}


def training_source(name: str):
    if name == "synthetic":
        return synthetic.digits(60000, seed=SEED)
    real = data.mnist("train")
    if name == "real":
        return real
    half = real.subset(
        torch.randperm(len(real), generator=torch.Generator().manual_seed(SEED))[:30000]
    )
    return synthetic.mix(half, synthetic.digits(30000, seed=SEED))


def source_trainer(source):
    def train_on_source(model) -> dict:
        return train_mnist_classifier(model, SYNTH_RECIPE, train_set=training_source(source))

    return train_on_source


for _src, _desc in SOURCES.items():
    zoo.register(
        zoo.Entry(
            name=f"vit-{_src}-digits",
            description=f"the chapter-4 ViT trained on {_desc}",
            build=build_seeded(mnist_config),
            train=source_trainer(_src),
            recipe=entry_recipe(mnist_config(), SYNTH_RECIPE, source=_src),
            modules=("model", "train", "data", "transforms", "synthetic"),
            minutes=1,
        )
    )


FEW_REAL = (10, 100)  # real labels per class
FEW_STEPS = 600


def few_real_labels(_=None) -> dict:
    """Few real labels alone, plus 20,000 synthetic digits, and plus the synthetic digits with the
    real ones repeated to make half of every epoch; the same number of steps for each."""
    real, test_set = data.mnist("train"), data.mnist("test")
    synth = synthetic.digits(20000, seed=SEED + 1)
    device = pick_device()
    out = {}
    for n in FEW_REAL:
        few = data.few_per_class(real, n, seed=SEED)
        repeats = len(synth) // len(few)  # the real digits, repeated to match the synthetic ones
        balanced = synthetic.mix(
            data.ImageDataset(few.images.repeat(repeats, 1, 1, 1), few.labels.repeat(repeats)),
            synth,
        )
        variants = (
            ("real only", few),
            ("real + synthetic", synthetic.mix(few, synth)),
            ("real + synthetic, balanced", balanced),
        )
        for name, train_set in variants:
            seed_everything(SEED)
            model = ViT(mnist_config()).to(device)
            batch = 64  # a batch no larger than the smallest training set (10 per class)
            epochs = FEW_STEPS / (len(train_set) // batch)
            recipe = replace(
                MNIST_RECIPE, batch_size=batch, epochs=epochs, warmup_epochs=epochs / 10
            )
            fit(model, train_set, None, recipe, augmentation=DigitAugment(), progress=False)
            out[(n, name)] = evaluate(model, test_set)["accuracy"]
    return {"table": {f"{n}|{name}": acc for (n, name), acc in out.items()}}


zoo.register(
    zoo.Entry(
        name="synthetic-few-labels",
        description="few real labels, with and without synthetic digits",
        build=None,
        train=few_real_labels,
        recipe={
            "real_per_class": list(FEW_REAL),
            "steps": FEW_STEPS,
            "synthetic": 20000,
            **MNIST_RECIPE.to_dict(),
        },
        modules=("model", "train", "data", "transforms", "synthetic"),
        minutes=1.5,
    )
)
