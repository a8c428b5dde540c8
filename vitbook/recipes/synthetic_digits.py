"""Synthetic data (chapter 13): the chapter-4 ViT trained on synthetic, real, mixed and roughened
real digits, and few real labels with and without synthetic digits (`vitbook.synthetic`).

The training sets, 60,000 images each, differ in one thing at a time:

* ``real``: MNIST's 60,000 training digits;
* ``synthetic``: 60,000 synthetic digits;
* ``mixed``: 30,000 MNIST digits + 30,000 synthetic ones;
* ``real-roughened``: the same 30,000 MNIST digits + the other 30,000 MNIST digits put through
  the synthetic generator's roughening (`vitbook.synthetic.roughened`): the control that tells
  "synthetic digits" apart from "the generator's noise, blur and distortions"."""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import data, synthetic, zoo
from ..loops import pick_device
from ..model import ViT
from ..train import evaluate, fit
from ..transforms import DigitAugment
from .classifiers import MNIST_RECIPE, SEED, classifier, mnist_config, mnist_sets

SOURCES = {
    "synthetic": "60,000 synthetic digits",
    "real": "60,000 MNIST digits",
    "mixed": "30,000 MNIST + 30,000 synthetic",
    "real-roughened": "30,000 MNIST + 30,000 other MNIST, roughened",
}
# The zoo model of each source, all trained with the chapter-4 recipe shortened to 3 epochs.
SOURCE_MODELS = {src: f"vit-{src}-digits" for src in SOURCES}
SYNTH_RECIPE = replace(MNIST_RECIPE, epochs=3)


def _halves():
    """MNIST's training digits split in two halves of 30,000, drawn with the book's seed."""
    real = data.mnist("train")
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(SEED))
    return real.subset(order[:30000]), real.subset(order[30000:])


def synthetic_sets():
    return synthetic.digits(60000, seed=SEED), data.mnist("test")


def mixed_sets():
    half, _ = _halves()
    return synthetic.mix(half, synthetic.digits(30000, seed=SEED)), data.mnist("test")


def roughened_sets():
    half, other = _halves()
    return synthetic.mix(half, synthetic.roughened(other, seed=SEED)), data.mnist("test")


for _src, _sets in (
    ("synthetic", synthetic_sets),
    ("real", mnist_sets),
    ("mixed", mixed_sets),
    ("real-roughened", roughened_sets),
):
    classifier(SOURCE_MODELS[_src], f"the chapter-4 ViT trained on {SOURCES[_src]}",
               mnist_config(), SYNTH_RECIPE, _sets, minutes=0.7)  # fmt: skip


FEW_REAL = (10, 100)  # real labels per class
FEW_STEPS = 600


def few_real_labels(entry: zoo.Result) -> dict:
    """Few real labels alone, plus 20,000 synthetic digits, and plus the synthetic digits with the
    real ones repeated to make half of every epoch; the same number of steps for each."""
    real, test_set = data.mnist("train"), data.mnist("test")
    synth = synthetic.digits(20000, seed=entry.seed + 1)
    device = pick_device()
    out = {}
    for n in FEW_REAL:
        few = data.few_per_class(real, n, seed=entry.seed)
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
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(entry.seed)
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
    zoo.Result(
        "synthetic-few-labels",
        "few real labels, with and without synthetic digits",
        few_real_labels,
        seed=SEED,
        options={"real_per_class": FEW_REAL, "steps": FEW_STEPS, "synthetic": 20000},
        minutes=1.5,
    )
)
